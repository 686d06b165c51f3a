//! The pure part of a stream's queue: order, bounds, drop counting and
//! the line that tells of drops. The writing is the caller's.

use std::collections::VecDeque;

use super::{Stream, HARD_BOUND};

/// What one write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wrote {
    Bytes(usize),
    /// EAGAIN: try again when poll says writable.
    Blocked,
    /// Any other error (EPIPE: the reader is gone; ENOSPC; EIO from a hung
    /// up terminal): what is queued is dropped, or it would pile up.
    Failed,
}

/// The pure queue: bounds, order, drop counting.
pub(super) struct Queue {
    /// Runs of whole lines, oldest first.
    pub(super) chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already written.
    pub(super) head: usize,
    /// Bytes queued and not yet written.
    pub(super) len: usize,
    pub(super) dropped_lines: u64,
    pub(super) dropped_bytes: u64,
    /// The last byte written ended a line.
    pub(super) at_line_start: bool,
}

impl Queue {
    pub(super) fn new() -> Queue {
        Queue {
            chunks: VecDeque::new(),
            head: 0,
            len: 0,
            dropped_lines: 0,
            dropped_bytes: 0,
            at_line_start: true,
        }
    }

    pub(super) fn push_own(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > HARD_BOUND {
            self.count_dropped(bytes);
        } else {
            self.push_child(bytes);
        }
    }

    pub(super) fn push_child(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.chunks.push_back(bytes.to_vec());
        }
    }

    fn count_dropped(&mut self, bytes: &[u8]) {
        let ends = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        self.dropped_lines += ends + u64::from(!bytes.ends_with(b"\n"));
        self.dropped_bytes += bytes.len() as u64;
    }

    /// Write what `write` takes, front first. When a write empties the
    /// queue after drops, the line that says so is queued and written too.
    pub(super) fn flush(&mut self, write: &mut dyn FnMut(&[u8]) -> Wrote, stream: Stream) {
        while let Some(front) = self.chunks.front() {
            match write(&front[self.head..]) {
                Wrote::Bytes(n) => {
                    self.head += n;
                    self.len -= n;
                    self.at_line_start = front[self.head - 1] == b'\n';
                    if self.head == front.len() {
                        self.chunks.pop_front();
                        self.head = 0;
                        if self.chunks.is_empty() && self.dropped_lines > 0 {
                            let note = self.note(stream);
                            self.push_child(&note);
                        }
                    }
                }
                Wrote::Blocked => return,
                Wrote::Failed => {
                    let rest: Vec<u8> = self.chunks.drain(..).flatten().skip(self.head).collect();
                    self.count_dropped(&rest);
                    (self.head, self.len) = (0, 0);
                    return;
                }
            }
        }
    }

    fn note(&mut self, stream: Stream) -> Vec<u8> {
        let (lines, bytes) = (self.dropped_lines, self.dropped_bytes);
        (self.dropped_lines, self.dropped_bytes) = (0, 0);
        // After a long line forced out without its end, on a line of its own.
        let sep = if self.at_line_start { "" } else { "\n" };
        let s = if lines == 1 { "" } else { "s" };
        format!(
            "{sep}graceexec[{}]: dropped {lines} line{s} ({bytes} bytes) of output: {} was not taking it\n",
            std::process::id(),
            stream.name(),
        )
        .into_bytes()
    }
}
