//! A generation's output pipes across `graceexec upgrade`: the read ends by
//! fd number, with the partial line held and the tail kept, so that no
//! byte and no line of a failure report is lost to the exec.

use std::collections::VecDeque;
use std::os::fd::AsFd;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{Captured, Lines, Reader, Tail};
use crate::carry::{self, Handed};
use crate::outbox::{self, Stream};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CapturedOut {
    stdout: Option<ReaderOut>,
    stderr: ReaderOut,
    prefix: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ReaderOut {
    /// None: EOF seen already.
    fd: Option<i32>,
    prefix: Vec<u8>,
    held: Vec<u8>,
    continuing: bool,
    tail: Option<Vec<Vec<u8>>>,
}

fn reader_out(r: &Reader, handed: &mut Handed) -> ReaderOut {
    ReaderOut {
        fd: r.fd.as_ref().map(|f| handed.fd(f.as_fd())),
        prefix: r.lines.prefix.clone(),
        held: r.lines.held.clone(),
        continuing: r.lines.continuing,
        tail: r.lines.tail.as_ref().map(|t| t.lines.iter().cloned().collect()),
    }
}

fn reader_back(r: ReaderOut, stream: Stream) -> Result<Reader> {
    let fd = r.fd.map(|n| carry::take_pipe(n, "an output pipe")).transpose()?;
    let tail = r.tail.map(|l| Tail { lines: l.into_iter().collect::<VecDeque<_>>() });
    let lines = Lines { prefix: r.prefix, held: r.held, continuing: r.continuing, tail };
    Ok(Reader { fd, stream, lines })
}

impl Captured {
    pub fn carry(&self, handed: &mut Handed) -> CapturedOut {
        CapturedOut {
            stdout: self.stdout.as_ref().map(|r| reader_out(r, handed)),
            stderr: reader_out(&self.stderr, handed),
            prefix: self.prefix,
        }
    }

    /// The pipes still open in `c`.
    pub fn carried_fds(c: &CapturedOut) -> Vec<i32> {
        c.stdout.iter().chain([&c.stderr]).filter_map(|r| r.fd).collect()
    }

    pub fn adopt(c: CapturedOut) -> Result<Captured> {
        Ok(Captured {
            stdout: c.stdout.map(|r| reader_back(r, Stream::Stdout)).transpose()?,
            stderr: reader_back(c.stderr, Stream::Stderr)?,
            prefix: c.prefix,
            buf: vec![0; 64 * 1024],
            out: Vec::new(),
            sink: outbox::child_output,
        })
    }
}
