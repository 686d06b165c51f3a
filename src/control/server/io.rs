//! The control server's socket I/O, none of which ever blocks: reads
//! and writes are MSG_DONTWAIT and bounded, so a client that sends
//! without end or never reads cannot hold the event loop.

use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use nix::sys::socket::{send, MsgFlags};

use super::super::protocol::Reply;
use super::{Conn, MAX_REQUEST};

/// Read what is there without blocking; returns (EOF seen, error).
/// Bounded, so a client that keeps sending cannot hold the loop.
pub(super) fn fill(c: &mut Conn) -> (bool, bool) {
    let mut chunk = [0u8; 4096];
    for _ in 0..MAX_REQUEST / chunk.len() + 2 {
        match (&c.stream).read(&mut chunk) {
            Ok(0) => return (true, false),
            Ok(n) => {
                // Bytes after the request are not ours to act on.
                if let Some(buf) = c.buf.as_mut() {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.contains(&b'\n') || buf.len() > MAX_REQUEST {
                        break;
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return (false, true),
        }
    }
    (false, false)
}

/// Write what `out` holds without blocking, removing what was written;
/// false on an error (the client has gone).
pub(super) fn write_some(stream: &UnixStream, out: &mut Vec<u8>) -> bool {
    while !out.is_empty() {
        match send(stream.as_raw_fd(), out, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT) {
            Ok(n) => {
                out.drain(..n);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return true,
            Err(_) => return false,
        }
    }
    true
}

/// Write all of `bytes` without blocking; false if that was not possible.
/// MSG_NOSIGNAL: a client that has gone must not raise SIGPIPE.
pub(super) fn write_now(stream: &UnixStream, bytes: &[u8]) -> bool {
    let mut done = 0;
    while done < bytes.len() {
        match send(
            stream.as_raw_fd(),
            &bytes[done..],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => done += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
    true
}

pub(super) fn refuse(stream: &UnixStream, msg: &str) {
    write_now(stream, Reply::error(msg).line().as_bytes());
    drain(stream);
}

/// Read and discard what the client sent before closing: closing a unix
/// socket with unread data makes the client's next read fail with
/// ECONNRESET instead of a clean EOF after our reply.
pub(super) fn drain(stream: &UnixStream) {
    let mut chunk = [0u8; 4096];
    let mut budget = MAX_REQUEST;
    while budget > 0 {
        match (&*stream).read(&mut chunk) {
            Ok(n) if n > 0 => budget = budget.saturating_sub(n),
            _ => break,
        }
    }
}
