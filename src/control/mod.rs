//! The control channel: `graceexec reload|status|stop|list` talk to a
//! running instance over its unix stream control socket. The protocol is
//! in protocol.rs, the instance's side in server.rs, the commands in
//! client.rs, their text in render.rs.
//!
//! Only graceexec's own effective uid and root may connect (checked with
//! SO_PEERCRED); anyone else gets `permission denied`. A connection must
//! send its request within 5 seconds; a request line is at most 64 KiB.

pub mod client;
pub mod follow;
pub mod paths;
pub mod protocol;
mod render;
pub mod server;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub use protocol::{Reply, Request};

fn connect(path: &Path, deadline: Instant) -> std::io::Result<UnixStream> {
    paths::check_len(path)
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e.to_string()))?;
    let left = remaining(deadline).ok_or(ErrorKind::TimedOut)?;
    crate::sockfile::connect_unix(path, left)
}

/// Time left before `deadline`, or None when it has passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    Some(deadline.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
}

/// Why no (further) reply line came.
#[derive(Debug)]
enum Fail {
    Timeout,
    Eof,
    Io(std::io::Error),
    /// Not protocol 1: the line, shortened.
    Bad(String),
}

/// One request on a connected socket, and its reply lines.
struct Session {
    reader: BufReader<UnixStream>,
    deadline: Instant,
}

impl Session {
    fn send(stream: UnixStream, request: Request, deadline: Instant) -> Result<Session, Fail> {
        let mut line = protocol::request_line(request);
        line.push('\n');
        let left = remaining(deadline).ok_or(Fail::Timeout)?;
        stream.set_write_timeout(Some(left)).map_err(Fail::Io)?;
        match (&stream).write_all(line.as_bytes()) {
            // An instance that refuses us (another uid, too many
            // connections) answers and closes at once, maybe before our
            // request is out: its reply is still waiting to be read.
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
            other => other.map_err(io_fail)?,
        }
        Ok(Session { reader: BufReader::new(stream), deadline })
    }

    /// The next reply line; `Ok(None)` at EOF.
    fn next(&mut self) -> Result<Option<Reply>, Fail> {
        let mut line = String::new();
        let left = remaining(self.deadline).ok_or(Fail::Timeout)?;
        self.reader.get_ref().set_read_timeout(Some(left)).map_err(Fail::Io)?;
        match self.reader.read_line(&mut line) {
            // Ok(n > 0): a whole line, or the last bytes before EOF.
            Ok(0) => return Ok(None),
            Ok(_) => {}
            // Closing with unread data makes the reader's EOF a reset.
            Err(e) if e.kind() == ErrorKind::ConnectionReset && line.is_empty() => return Ok(None),
            Err(e) => return Err(io_fail(e)),
        }
        match protocol::parse_reply(&line) {
            Some(r) => Ok(Some(r)),
            None => Err(Fail::Bad(line.trim_end().chars().take(200).collect())),
        }
    }
}

fn io_fail(e: std::io::Error) -> Fail {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Fail::Timeout,
        _ => Fail::Io(e),
    }
}

/// Send one request and read one reply line (used by the server's check
/// for a live instance, too).
fn ask(stream: UnixStream, request: Request, deadline: Instant) -> Result<Reply, Fail> {
    Session::send(stream, request, deadline)?.next()?.ok_or(Fail::Eof)
}

#[cfg(test)]
mod tests;
