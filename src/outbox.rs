//! graceexec's own stdout and stderr, as bounded queues that are written
//! only when the stream can take the bytes: a stalled reader (a paused
//! terminal, a stuck logger, a container log driver in blocking mode) must
//! never stop the event loop, which alone answers the control socket,
//! reads signals and enforces `--stop-timeout`.
//!
//! `init(true)` picks, per stream and once, a way to write that never
//! waits, from what fstat(2) says the fd is. The fd's open file
//! description is shared with the parent shell and with whoever else
//! inherited it, so its flags are never touched (O_NONBLOCK set on a
//! shared terminal or pipe makes the *other* writers fail with EAGAIN):
//! - a pipe, FIFO or character device (terminal, /dev/null) is opened
//!   again through /proc/self/fd/N with O_NONBLOCK: a new open file
//!   description of the same pipe or device, ours alone;
//! - a socket (systemd's journal stream) cannot be opened that way (ENXIO);
//!   send(2) with MSG_DONTWAIT makes that one call non-blocking instead;
//! - a regular file is written as it is: a write to a file waits for no
//!   reader, and a second description would have its own offset and
//!   maybe no O_APPEND, writing over what the others append;
//! - a pipe, FIFO or terminal whose description already has O_NONBLOCK
//!   (the watchdog is handed graceexec's own) is written as it is;
//! - if reopening fails (no /proc, or a uid change that lost access to the
//!   pipe's inode), see `Kind::Guarded`.
//!
//! Bytes that do not fit are queued in order, graceexec's lines and its
//! children's alike, and written when poll(2) says the stream is writable.
//! Above `SOFT_BOUND` queued bytes the children's pipes are no longer read
//! (output.rs asks `accepting_child_output`), so the back-pressure reaches
//! the children, not graceexec. graceexec's own lines beyond `HARD_BOUND`
//! are dropped whole and counted; once the stream has drained, one line
//! says how many.
//!
//! Without `init(true)` (client subcommands, unit tests) every write is a
//! plain blocking `write_all`, as a command-line tool's output should be.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{send, MsgFlags};
use nix::sys::stat::{fstat, Mode};
use nix::unistd;

use queue::{Queue, Wrote};

/// Queued bytes above which the children's output is no longer read.
pub const SOFT_BOUND: usize = 256 * 1024;
/// Queued bytes above which graceexec's own lines are dropped.
pub const HARD_BOUND: usize = 1024 * 1024;
/// How long the exit waits for a slow reader to take the last lines
/// ("exiting with status 0"): long enough for a reader that is merely
/// busy, short enough that a stalled one barely delays the exit that
/// `--stop-timeout` promised.
pub const EXIT_FLUSH: Duration = Duration::from_millis(500);
/// pipe(7): writes of at most this many bytes to a pipe are atomic.
const PIPE_BUF: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A static rather than a thread-local so that `poll_fds` can hand out
/// fds that outlive any borrow of the state: they are fixed in the
/// OnceLock at `init` and never closed. Only the queues change, behind a
/// Mutex that a static needs to be Sync; graceexec has one thread, so the
/// lock is never contended.
static OUTBOX: OnceLock<[Slot; 2]> = OnceLock::new();

/// Choose how stdout and stderr are written: `nonblocking` for the
/// long-running instance (and the watchdog), never for a client. Call it
/// once, after systemd's sockets are adopted: it opens fds, which must not
/// take a number LISTEN_FDS names. A second call changes nothing.
pub fn init(nonblocking: bool) {
    if nonblocking {
        let out = Slot::std(Target::Stdout(std::io::stdout()), Stream::Stdout);
        let err = Slot::std(Target::Stderr(std::io::stderr()), Stream::Stderr);
        let _ = OUTBOX.set([out, err]);
    }
}

fn slot(stream: Stream) -> Option<&'static Slot> {
    OUTBOX.get().map(|s| &s[stream.index()])
}

/// One or more whole lines of graceexec's own: dropped (and counted) if the
/// queue is past `HARD_BOUND`.
pub fn own_line(stream: Stream, bytes: &[u8]) {
    match slot(stream) {
        Some(s) => s.push(bytes, true),
        None => write_blocking(stream, bytes),
    }
}

/// A run of the children's lines: never dropped here; the reader keeps
/// within `room_for_child_output`.
pub fn child_output(stream: Stream, bytes: &[u8]) {
    match slot(stream) {
        Some(s) => s.push(bytes, false),
        None => write_blocking(stream, bytes),
    }
}

/// Whether the event loop should read the children's pipes that feed
/// `stream` (below `SOFT_BOUND`).
pub fn accepting_child_output(stream: Stream) -> bool {
    slot(stream).map_or(true, Slot::accepting)
}

/// How many bytes of children's output a read may still add: up to
/// `HARD_BOUND`, for the reads the loop makes outside poll (a generation's
/// last lines when it is released, a failed candidate's tail).
pub fn room_for_child_output(stream: Stream) -> usize {
    slot(stream).map_or(usize::MAX, |s| HARD_BOUND.saturating_sub(s.queued()))
}

/// The streams with bytes waiting, to poll for POLLOUT.
pub fn poll_fds() -> Vec<(BorrowedFd<'static>, PollFlags)> {
    OUTBOX.get().into_iter().flatten().filter_map(Slot::poll_fd).collect()
}

/// Write what the streams take now; call when a `poll_fds` fd fired.
pub fn on_writable() {
    for s in OUTBOX.get().into_iter().flatten() {
        s.flush();
    }
}

/// At exit: write until the queues are empty or `deadline` passes.
pub fn flush_before_exit(deadline: Instant) {
    loop {
        on_writable();
        let left = deadline.saturating_duration_since(Instant::now());
        let fds = poll_fds();
        if fds.is_empty() || left.is_zero() {
            return;
        }
        let mut fds: Vec<PollFd> = fds.into_iter().map(|(fd, ev)| PollFd::new(fd, ev)).collect();
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let _ = poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX));
    }
}

/// What waits in `stream`'s queue, taken out of it: the upgrade hands it
/// to the new image, which queues it first (`requeue`).
pub fn take_queued(stream: Stream) -> Vec<u8> {
    let Some(s) = slot(stream) else { return Vec::new() };
    let mut q = s.lock();
    let head = std::mem::take(&mut q.head);
    let bytes: Vec<u8> = q.chunks.drain(..).flatten().skip(head).collect();
    q.len = 0;
    bytes
}

/// Queue bytes taken by `take_queued`, never dropped.
pub fn requeue(stream: Stream, bytes: &[u8]) {
    child_output(stream, bytes);
}

/// The description `stream` is written through, when it is one graceexec
/// opened anew: for the watchdog's stdout and stderr, so that it can
/// write without blocking too even where it could not reopen them itself
/// (after `--user`, /proc/self/fd of the root-owned pipe is out of reach).
pub fn helper_fd(stream: Stream) -> Option<BorrowedFd<'static>> {
    match slot(stream)? {
        s if s.kind == Kind::Reopened => s.fd.as_ref().map(Target::as_fd),
        _ => None,
    }
}

/// Errors are ignored, as ever: a client's `| head -1` must not panic it.
fn write_blocking(stream: Stream, bytes: &[u8]) {
    match stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(bytes);
            // Line-buffered: a partial line must not wait for the next.
            let _ = out.flush();
        }
        Stream::Stderr => {
            let _ = std::io::stderr().lock().write_all(bytes);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Our own O_NONBLOCK description of a pipe, FIFO or device.
    Reopened,
    /// send(MSG_DONTWAIT | MSG_NOSIGNAL) on the fd.
    Socket,
    /// write(2) on the fd: its offset and O_APPEND, shared.
    File,
    /// A pipe, FIFO or device whose shared description already has
    /// O_NONBLOCK (whoever set it did so for everyone; the watchdog is
    /// handed graceexec's own): written as it is, with no fd of our own.
    AlreadyNonBlocking,
    /// Could not reopen, and the description blocks: poll(2) for POLLOUT
    /// with a zero timeout, then write at most PIPE_BUF bytes. A pipe
    /// polls writable only while one whole buffer slot (a page, at least
    /// PIPE_BUF) is free (fs/pipe.c, pipe_poll), and a write of at most
    /// PIPE_BUF bytes then fits without sleeping. This is exact for a
    /// pipe or FIFO with no other writer; another writer (a child writing
    /// to the same pipe directly) can fill the slot between the poll and
    /// the write, and a terminal only promises room for "some" bytes: a
    /// best effort, used only where reopening failed.
    Guarded,
    /// Not open at start-up: output is discarded.
    Closed,
}

/// What a stream is written through: a description of our own, or the
/// original fd (the std handle stands for fds 1 and 2, which nothing
/// closes, and lends them for as long as the OnceLock lives).
enum Target {
    Own(OwnedFd),
    Stdout(std::io::Stdout),
    Stderr(std::io::Stderr),
}

impl Target {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Target::Own(fd) => fd.as_fd(),
            Target::Stdout(s) => s.as_fd(),
            Target::Stderr(s) => s.as_fd(),
        }
    }
}

/// One stream: how it is written, and what waits.
struct Slot {
    /// None: not open at start-up.
    fd: Option<Target>,
    kind: Kind,
    stream: Stream,
    queue: Mutex<Queue>,
}

impl Slot {
    /// graceexec's own stdout or stderr.
    fn std(original: Target, stream: Stream) -> Slot {
        let (kind, reopened) = classify(original.as_fd());
        let fd = match (kind, reopened) {
            (Kind::Closed, _) => None,
            (_, Some(own)) => Some(Target::Own(own)),
            (_, None) => Some(original),
        };
        Slot { fd, kind, stream, queue: Mutex::new(Queue::new()) }
    }

    /// Any fd (the tests'): written through a copy when not reopened.
    #[cfg(test)]
    fn open(fd: BorrowedFd<'_>, stream: Stream) -> Slot {
        let (kind, reopened) = classify(fd);
        let own = reopened.unwrap_or_else(|| fd.try_clone_to_owned().unwrap());
        Slot { fd: Some(Target::Own(own)), kind, stream, queue: Mutex::new(Queue::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic mid-write leaves a queue that is still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queued(&self) -> usize {
        self.lock().len
    }

    fn accepting(&self) -> bool {
        self.queued() < SOFT_BOUND
    }

    fn push(&self, bytes: &[u8], own: bool) {
        if self.fd.is_none() {
            return;
        }
        let mut q = self.lock();
        let was_empty = q.len == 0;
        if own {
            q.push_own(bytes);
        } else {
            q.push_child(bytes);
        }
        // A queue that was not empty is waiting for POLLOUT: the loop
        // polls for it, and a write now would only meet EAGAIN again.
        if was_empty {
            q.flush(&mut |b| self.write(b), self.stream);
        }
    }

    fn flush(&self) {
        self.lock().flush(&mut |b| self.write(b), self.stream);
    }

    fn poll_fd(&self) -> Option<(BorrowedFd<'_>, PollFlags)> {
        let fd = self.fd.as_ref()?.as_fd();
        (self.queued() > 0).then_some((fd, PollFlags::POLLOUT))
    }

    fn write(&self, bytes: &[u8]) -> Wrote {
        let Some(fd) = self.fd.as_ref().map(Target::as_fd) else {
            return Wrote::Failed;
        };
        loop {
            let result = match self.kind {
                Kind::Socket => {
                    // MSG_NOSIGNAL: a closed peer is an EPIPE here, not a
                    // SIGPIPE.
                    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
                    send(fd.as_raw_fd(), bytes, flags)
                }
                Kind::Guarded => {
                    let mut p = [PollFd::new(fd, PollFlags::POLLOUT)];
                    let _ = poll(&mut p, PollTimeout::ZERO);
                    // POLLERR (no reader left) goes on to the write, which
                    // says why.
                    if p[0].revents().map_or(true, |r| r.is_empty()) {
                        return Wrote::Blocked;
                    }
                    unistd::write(fd, guarded_piece(bytes))
                }
                Kind::Reopened | Kind::File | Kind::AlreadyNonBlocking => unistd::write(fd, bytes),
                Kind::Closed => return Wrote::Failed,
            };
            return match result {
                Ok(0) => Wrote::Blocked,
                Ok(n) => Wrote::Bytes(n),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => Wrote::Blocked,
                Err(_) => Wrote::Failed,
            };
        }
    }
}

/// At most PIPE_BUF bytes, cut after the last whole line in them if there
/// is one: a write that size to a pipe is atomic, so no other writer's
/// bytes land inside these lines.
fn guarded_piece(bytes: &[u8]) -> &[u8] {
    if bytes.len() <= PIPE_BUF {
        return bytes;
    }
    let piece = &bytes[..PIPE_BUF];
    match piece.iter().rposition(|&b| b == b'\n') {
        Some(i) => &piece[..=i],
        None => piece,
    }
}

/// How to write `fd` without blocking; the description opened anew for
/// `Kind::Reopened`.
fn classify(fd: BorrowedFd<'_>) -> (Kind, Option<OwnedFd>) {
    let Ok(stat) = fstat(fd) else {
        return (Kind::Closed, None);
    };
    let nonblocking = fcntl(fd, FcntlArg::F_GETFL)
        .is_ok_and(|f| OFlag::from_bits_truncate(f).contains(OFlag::O_NONBLOCK));
    match stat.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => (Kind::Socket, None),
        libc::S_IFREG => (Kind::File, None),
        _ if nonblocking => (Kind::AlreadyNonBlocking, None),
        libc::S_IFIFO | libc::S_IFCHR => {
            // O_NOCTTY: a terminal opened anew must not become graceexec's
            // controlling terminal. A pipe with no reader left opens fine
            // and fails later with EPIPE, like the original.
            let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
            let flags = OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
            match open(path.as_str(), flags, Mode::empty()) {
                Ok(own) => (Kind::Reopened, Some(own)),
                Err(_) => (Kind::Guarded, None),
            }
        }
        _ => (Kind::Guarded, None),
    }
}

mod queue;

#[cfg(test)]
mod tests;
