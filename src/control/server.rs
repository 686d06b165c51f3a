//! The instance side of the control channel, driven by the event loop's
//! poll(2): no threads, and nothing here ever blocks.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::paths;
use super::protocol::{parse_request, Answer, Reply, Request};
use crate::sockfile::{self, Existing, SocketFile};

mod carry;
mod io;
mod stream;
use anyhow::{anyhow, bail, Context, Result};
pub use carry::ServerOut;
use io::{drain, fill, refuse, write_now, write_some};
use nix::fcntl::AT_FDCWD;
use nix::poll::PollFlags;
use nix::sys::socket::{getsockopt, sockopt};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{fchownat, geteuid, Gid, Uid};

/// A client has this long to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longer request lines are refused, so a client cannot grow our memory.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Open connections at most; waiting `stop` and `reload` clients count.
pub const MAX_CONNS: usize = 64;
/// After accept(2) fails for lack of fds, the listener rests this long
/// instead of waking poll again at once.
const ACCEPT_PAUSE: Duration = Duration::from_secs(1);

pub type ConnId = u64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Key {
    Listener,
    Conn(ConnId),
}

struct Conn {
    stream: UnixStream,
    /// Bytes of the request so far; `None` once it has been handed out and
    /// the connection only waits for replies.
    buf: Option<Vec<u8>>,
    deadline: Instant,
    /// Lines queued for a follower, not written yet.
    out: Vec<u8>,
    /// A follower that fell behind: events missed since.
    lagged: Option<u64>,
    /// Close once `out` is written.
    closing: bool,
    /// Close then, written or not.
    drop_at: Option<Instant>,
}

pub struct Server {
    listener: UnixListener,
    /// Removed when the server is dropped.
    file: SocketFile,
    conns: BTreeMap<ConnId, Conn>,
    next_id: ConnId,
    accept_paused_until: Option<Instant>,
    /// The instance's name, in every reply: a client that reached it by
    /// `--control PATH` learns it from there.
    name: String,
}

impl Server {
    /// Bind the control socket at `path`. The note, if any, is for the log.
    pub fn bind(path: &Path, name: &str) -> Result<(Server, Option<String>)> {
        paths::check_len(path)?;
        let note = clear_stale(path, name)?;
        // Mode 0600 from the first instant: the umask applies to bind(2)'s
        // file, and graceexec is still single-threaded here.
        let old = umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        umask(old);
        // std binds with SOCK_CLOEXEC, and accept4 gives the connections
        // SOCK_CLOEXEC too: no generation inherits them, so a client sees
        // EOF exactly when graceexec itself is gone.
        let listener = match bound {
            Ok(l) => l,
            // Another instance of the same name bound it since clear_stale.
            Err(e) if e.kind() == ErrorKind::AddrInUse => bail!(
                "an instance named {name} is already running (control socket {}); \
                 stop it or pick another --name",
                path.display()
            ),
            Err(e) => bail!("cannot bind {}: {e}", path.display()),
        };
        let server = Server {
            listener,
            file: SocketFile::bound(path)?,
            conns: BTreeMap::new(),
            next_id: 1,
            accept_paused_until: None,
            name: name.to_string(),
        };
        server
            .listener
            .set_nonblocking(true)
            .context("cannot make the control socket nonblocking")?;
        Ok((server, note))
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Give the socket file to the user graceexec drops to (--user), who
    /// must still be able to connect. Its directory must let them in too.
    pub fn chown(&self, uid: Uid, gid: Gid) -> Result<()> {
        fchownat(
            AT_FDCWD,
            self.path(),
            Some(uid),
            Some(gid),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| anyhow!("cannot chown {} to {uid}:{gid}: {e}", self.path().display()))
    }

    /// What to poll: the listener for new clients, clients still sending
    /// for POLLIN, and clients that wait for replies with no events at
    /// all. POLLHUP is always reported, so a waiting client that goes away
    /// is noticed; asking for POLLIN there would spin on one that only
    /// shut down its writing half after the request.
    pub fn poll_fds(&self) -> Vec<(Key, BorrowedFd<'_>, PollFlags)> {
        let mut out = Vec::with_capacity(self.conns.len() + 1);
        if self.accept_paused_until.is_none() {
            out.push((Key::Listener, self.listener.as_fd(), PollFlags::POLLIN));
        }
        for (id, c) in &self.conns {
            let mut ev = if c.buf.is_some() { PollFlags::POLLIN } else { PollFlags::empty() };
            if !c.out.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            out.push((Key::Conn(*id), c.stream.as_fd(), ev));
        }
        out
    }

    /// When `service` must run even if poll reports nothing.
    pub fn wake_at(&self) -> Option<Instant> {
        let reading = self.conns.values().filter(|c| c.buf.is_some()).map(|c| c.deadline);
        let reading = reading.chain(self.conns.values().filter_map(|c| c.drop_at));
        reading.chain(self.accept_paused_until).min()
    }

    #[cfg(test)]
    pub fn is_open(&self, id: ConnId) -> bool {
        self.conns.contains_key(&id)
    }

    /// Handle what poll reported (and any deadline passed by `now`).
    /// Returns the requests received and lines for the log.
    pub fn service(
        &mut self,
        ready: &[Key],
        now: Instant,
    ) -> (Vec<(ConnId, Request)>, Vec<String>) {
        let mut requests = Vec::new();
        let mut warnings = Vec::new();
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
        }
        if ready.contains(&Key::Listener) && self.accept_paused_until.is_none() {
            for id in self.accept(now, &mut warnings) {
                // The request is often there already; save a trip through poll.
                self.read(id, &mut requests);
            }
        }
        for key in ready {
            if let Key::Conn(id) = *key {
                if self.conns.get(&id).is_some_and(|c| !c.out.is_empty()) {
                    self.flush(id);
                }
                self.read(id, &mut requests);
            }
        }
        self.drop_stalled(now);
        let late: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.buf.is_some() && c.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let msg = format!("no request within {}s; closing", READ_TIMEOUT.as_secs());
            self.reply(id, Reply::error(msg), true);
        }
        (requests, warnings)
    }

    /// Send one reply line. A reply is a few KiB and the socket buffer is
    /// larger, so a write that would block means a client that does not
    /// read: it is dropped rather than allowed to stall graceexec.
    pub fn reply(&mut self, id: ConnId, mut reply: Reply, close: bool) {
        let Some(c) = self.conns.get(&id) else { return };
        reply.name = Some(self.name.clone());
        if !write_now(&c.stream, reply.line().as_bytes()) || close {
            self.close(id);
        }
    }

    /// Accept until EAGAIN; returns the connections admitted.
    fn accept(&mut self, now: Instant, warnings: &mut Vec<String>) -> Vec<ConnId> {
        let mut admitted = Vec::new();
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(nix::libc::ECONNABORTED) => continue,
                Err(e) => {
                    // EMFILE and the like leave the listener readable:
                    // rest instead of spinning in poll.
                    warnings.push(format!("cannot accept a control connection: {e}"));
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                    break;
                }
            };
            if let Err(e) = stream.set_nonblocking(true) {
                warnings.push(format!("cannot use a control connection: {e}"));
                continue;
            }
            // Checked now rather than at bind: graceexec may have dropped
            // to another user (--user) since.
            let me = geteuid().as_raw();
            match getsockopt(&stream, sockopt::PeerCredentials) {
                Ok(cred) if cred.uid() == me || cred.uid() == 0 => {}
                Ok(cred) => {
                    let msg = format!(
                        "permission denied: this instance serves only uid {me} and root, \
                         not uid {}",
                        cred.uid()
                    );
                    refuse(&stream, &msg);
                    warnings.push(format!(
                        "refused a control connection from uid {} (pid {})",
                        cred.uid(),
                        cred.pid()
                    ));
                    continue;
                }
                Err(e) => {
                    warnings.push(format!("cannot check a control client's credentials: {e}"));
                    continue;
                }
            }
            if self.conns.len() >= MAX_CONNS {
                refuse(&stream, &format!("too many connections ({MAX_CONNS} open); try again"));
                warnings.push(format!("refused a control connection: {MAX_CONNS} already open"));
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let deadline = now + READ_TIMEOUT;
            self.conns.insert(
                id,
                Conn {
                    stream,
                    buf: Some(Vec::new()),
                    deadline,
                    out: Vec::new(),
                    lagged: None,
                    closing: false,
                    drop_at: None,
                },
            );
            admitted.push(id);
        }
        admitted
    }

    /// Read what a connection has sent. A complete request is handed out;
    /// a bad one is answered here and closed. On a connection that only
    /// waits for replies, EOF or an error means the client left.
    fn read(&mut self, id: ConnId, requests: &mut Vec<(ConnId, Request)>) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        let (eof, failed) = fill(c);
        let line = match c.buf.as_mut() {
            _ if failed => None,
            None => {
                if !eof {
                    return;
                }
                None
            }
            Some(buf) => match buf.iter().position(|b| *b == b'\n') {
                Some(end) if end <= MAX_REQUEST => Some(buf[..end].to_vec()),
                Some(_) => return self.too_long(id),
                None if buf.len() > MAX_REQUEST => return self.too_long(id),
                // A client may end its request with EOF instead of a
                // newline (printf ... | nc -U); take what came as the line.
                None if eof && !buf.is_empty() => Some(std::mem::take(buf)),
                None if eof => None,
                None => return,
            },
        };
        let Some(line) = line else {
            self.close(id);
            return;
        };
        match parse_request(&line) {
            Ok(request) => {
                c.buf = None;
                requests.push((id, request));
            }
            Err(msg) => self.reply(id, Reply::error(msg), true),
        }
    }

    fn too_long(&mut self, id: ConnId) {
        let msg = format!("the request is longer than {} KiB", MAX_REQUEST / 1024);
        self.reply(id, Reply::error(msg), true);
    }

    fn close(&mut self, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            drain(&c.stream);
        }
    }
}

/// A control socket left by a killed instance is replaced; a live one
/// means an instance of this name runs. Returns a note for the log.
fn clear_stale(path: &Path, name: &str) -> Result<Option<String>> {
    let shown = path.display();
    match sockfile::clear_stale(path, "remove it or pass another --control")? {
        Existing::Nothing => Ok(None),
        Existing::Replaced => Ok(Some(format!("replaced a stale control socket at {shown}"))),
        Existing::Live(stream) => {
            let deadline = Instant::now() + Duration::from_secs(1);
            let pid = super::ask(stream, Request::Status, deadline)
                .ok()
                .and_then(|r| match r.answer {
                    Answer::Status(s) => Some(s.pid),
                    _ => None,
                })
                .map(|p| format!("pid {p}, "))
                .unwrap_or_default();
            bail!(
                "an instance named {name} is already running ({pid}control socket {shown}); \
                 stop it or pick another --name"
            )
        }
    }
}
