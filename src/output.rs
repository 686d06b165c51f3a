//! A generation's stdout and stderr, read through pipes.
//!
//! graceexec reads its children's stderr so that it can report the last
//! lines a failed candidate wrote, and with `--log-prefix` their stdout too,
//! so that every line can start with `[gen K pid P] `. Everything read is
//! passed on, unchanged apart from the prefix, to graceexec's own stream of
//! the same name.
//!
//! A partial line is held until its newline arrives: each write to our
//! stdout/stderr is then a run of whole lines, so the lines of two
//! generations running side by side during a reload never mix mid-line.
//! Only a line longer than `MAX_HELD` (memory is bounded) and the last
//! partial line at EOF are written out without their end.
//!
//! The lines go into outbox.rs's queues, which never block. While a queue
//! is past its soft bound the pipes that feed it are not polled, and reads
//! stop short of its hard bound: a child whose output nobody is taking
//! then blocks in its own write, and graceexec goes on supervising.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd;

use crate::outbox::{self, Stream};

/// Stderr lines kept for the failure report.
pub const TAIL_LINES: usize = 20;
/// Longest partial line held back waiting for its newline.
const MAX_HELD: usize = 64 * 1024;
/// Most bytes read from one stream per `read_available`, so that a chatty
/// child cannot keep graceexec's event loop from its other work.
const READ_BUDGET: usize = 256 * 1024;
/// Bytes kept of each tail line: a report, not a copy of the output.
const TAIL_LINE_BYTES: usize = 500;

/// The write ends, handed to `spawn::Child` and dropped by the caller right
/// after the spawn: the read ends see EOF only once no copy is left outside
/// the generation.
pub struct ChildEnds {
    pub stdout: Option<OwnedFd>,
    pub stderr: OwnedFd,
}

/// Where the lines go: graceexec's own streams, or a recorder in the tests.
type Sink = fn(Stream, &[u8]);

/// The read side of one generation's output.
pub struct Captured {
    stdout: Option<Reader>,
    stderr: Reader,
    prefix: bool,
    buf: Vec<u8>,
    out: Vec<u8>,
    sink: Sink,
}

struct Reader {
    /// None once EOF (or a read error) was seen.
    fd: Option<OwnedFd>,
    stream: Stream,
    lines: Lines,
}

/// Make the pipes for one generation. stderr is always captured; stdout
/// only when `capture_stdout` (with `--log-prefix`; otherwise the child
/// writes straight to graceexec's stdout and keeps, say, its isatty).
/// `prefix` turns on the `[gen K pid P] ` prefix, set by `set_label`.
pub fn pipes(capture_stdout: bool, prefix: bool) -> anyhow::Result<(ChildEnds, Captured)> {
    let (err_read, err_write) = pipe()?;
    let (stdout, out_reader) = if capture_stdout {
        let (r, w) = pipe()?;
        (Some(w), Some(Reader { fd: Some(r), stream: Stream::Stdout, lines: Lines::new(false) }))
    } else {
        (None, None)
    };
    let captured = Captured {
        stdout: out_reader,
        stderr: Reader { fd: Some(err_read), stream: Stream::Stderr, lines: Lines::new(true) },
        prefix,
        buf: vec![0; 64 * 1024],
        out: Vec::new(),
        sink: outbox::child_output,
    };
    Ok((ChildEnds { stdout, stderr: err_write }, captured))
}

/// A close-on-exec pipe whose read end (only) does not block. The child's
/// end stays blocking, as a terminal or a file would be.
fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = unistd::pipe2(OFlag::O_CLOEXEC).context("pipe for a generation's output")?;
    fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).context("O_NONBLOCK on an output pipe")?;
    Ok((r, w))
}

impl Captured {
    /// Call once the pid is known, before the first `read_available`: the
    /// prefix becomes `[gen {gen} pid {pid}] ` (when prefixing is on).
    pub fn set_label(&mut self, gen: u32, pid: i32) {
        if self.prefix {
            let label = format!("[gen {gen} pid {pid}] ").into_bytes();
            if let Some(r) = &mut self.stdout {
                r.lines.prefix.clone_from(&label);
            }
            self.stderr.lines.prefix = label;
        }
    }

    /// Keep the tail, pass nothing on (the upgrade's dry run, whose answer
    /// is read from it; unit tests elsewhere).
    pub fn silence(&mut self) {
        self.sink = |_, _| {};
    }

    /// The read ends still open, to poll for POLLIN (stdout first). A
    /// closed pipe polls as POLLHUP: read on any revents. Empty once both
    /// reached EOF, and without the pipes whose stream is backed up
    /// (`outbox::accepting_child_output`): the back-pressure.
    pub fn poll_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.readers()
            .filter(|r| outbox::accepting_child_output(r.stream))
            .filter_map(|r| r.fd.as_ref().map(AsFd::as_fd))
            .collect()
    }

    /// Read what is available now and pass the complete lines on. Returns
    /// true once every captured stream reached EOF; any partial last line
    /// has been written out then.
    pub fn read_available(&mut self) -> bool {
        let Captured { stdout, stderr, buf, out, sink, .. } = self;
        for reader in stdout.iter_mut().chain([stderr]) {
            reader.read_some(buf, out, *sink);
        }
        self.is_closed()
    }

    pub fn is_closed(&self) -> bool {
        self.readers().all(|r| r.fd.is_none())
    }

    fn readers(&self) -> impl Iterator<Item = &Reader> {
        self.stdout.iter().chain([&self.stderr])
    }

    /// The last stderr lines, oldest first, without their line ends, lossy
    /// UTF-8, each cut to about `TAIL_LINE_BYTES`.
    pub fn tail(&self) -> Vec<String> {
        self.stderr.lines.tail.as_ref().map(Tail::lines).unwrap_or_default()
    }
}

impl Reader {
    fn read_some(&mut self, buf: &mut [u8], out: &mut Vec<u8>, sink: Sink) {
        let Some(fd) = &self.fd else { return };
        out.clear();
        // The loop reads only below the soft bound; a read outside poll (a
        // released generation's last lines) stops at the hard bound, and
        // the pipe stays open until the queue has drained.
        let budget = READ_BUDGET.min(outbox::room_for_child_output(self.stream));
        if budget == 0 {
            return;
        }
        let mut total = 0;
        let eof = loop {
            match unistd::read(fd, buf) {
                Ok(0) => break true,
                Ok(k) => {
                    self.lines.feed(&buf[..k], out);
                    total += k;
                    if total >= budget {
                        // The pipe is still readable: the next poll wakes us.
                        break false;
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break false,
                // Any other error would come back at every wake-up; treat
                // it as the end of the stream rather than spin on it.
                Err(_) => break true,
            }
        };
        if eof {
            self.lines.finish(out);
            self.fd = None;
        }
        // One write for the whole round: whole lines, fewer syscalls.
        if !out.is_empty() {
            sink(self.stream, out);
        }
    }
}

/// The pure line logic: bytes in, what to write out, and the tail.
#[derive(Default)]
struct Lines {
    /// Empty when not prefixing (or before the label is known).
    prefix: Vec<u8>,
    /// The partial line waiting for its newline.
    held: Vec<u8>,
    /// The last segment written was the start of a line without its end.
    continuing: bool,
    tail: Option<Tail>,
}

impl Lines {
    fn new(keep_tail: bool) -> Lines {
        Lines { tail: keep_tail.then(Tail::default), ..Lines::default() }
    }

    /// Append to `out` every line that `data` completes.
    fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            let (line, rest) = data.split_at(i + 1);
            if self.held.is_empty() {
                self.emit(line, out);
            } else {
                let mut held = std::mem::take(&mut self.held);
                held.extend_from_slice(line);
                self.emit(&held, out);
                held.clear();
                // Keep the allocation for the next partial line.
                self.held = held;
            }
            self.continuing = false;
            data = rest;
        }
        self.held.extend_from_slice(data);
        if self.held.len() > MAX_HELD {
            self.write_held(out);
        }
    }

    /// At EOF: append the partial last line, if any.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.held.is_empty() {
            self.write_held(out);
        }
    }

    fn write_held(&mut self, out: &mut Vec<u8>) {
        let mut held = std::mem::take(&mut self.held);
        self.emit(&held, out);
        // Unprefixed, the bytes pass through exactly. Prefixed, the next
        // prefix must start a line of its own.
        if !self.prefix.is_empty() {
            out.push(b'\n');
        }
        held.clear();
        self.held = held;
        self.continuing = true;
    }

    fn emit(&mut self, segment: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(segment);
        // The rest of a long line written in pieces adds nothing to the
        // tail: its start there is already cut to TAIL_LINE_BYTES.
        if !self.continuing {
            if let Some(tail) = &mut self.tail {
                tail.push(segment);
            }
        }
    }
}

/// The last `TAIL_LINES` lines, each kept as at most `TAIL_LINE_BYTES`.
#[derive(Default)]
struct Tail {
    lines: VecDeque<Vec<u8>>,
}

impl Tail {
    fn push(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut cut = line.len().min(TAIL_LINE_BYTES);
        // Do not split a UTF-8 sequence: back off over continuation bytes.
        while cut < line.len() && cut > TAIL_LINE_BYTES - 3 && line[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        let mut entry = line[..cut].to_vec();
        if cut < line.len() {
            entry.extend_from_slice("…".as_bytes());
        }
        self.lines.push_back(entry);
    }

    fn lines(&self) -> Vec<String> {
        self.lines.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect()
    }
}

mod carry;
pub use carry::CapturedOut;

#[cfg(test)]
mod tests;
