//! How many TCP connections a process group still holds on given local
//! ports: a draining generation is stopped only once it holds none.
//!
//! The kernel attributes sockets to processes only through their fd
//! tables, so: the connections on the ports come from /proc/net/tcp and
//! tcp6 (those of graceexec's network namespace, which is the one of the
//! pool's sockets and so of every connection they accept), and the group's
//! processes' /proc/PID/fd links name their socket inodes.
//!
//! It runs every few milliseconds during a drain, and reading the tables
//! is the expensive part: each read walks the kernel's whole established
//! hash (262,144 buckets here: about 4 ms per table, most of it for
//! nothing). So a `Scanner` remembers, per socket inode the group holds,
//! whether it is such a connection, and reads the tables only when the
//! group holds a socket it has not classified yet. That is sound because
//! a socket's local port and "listening or not" never change: an accepted
//! connection is in the table, with its inode, before accept() returns
//! its fd, and a socket found in no table (not TCP, or reset and unhashed
//! already) never becomes one of them.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;

/// TCP_LISTEN in /proc/net/tcp's `st` column.
const LISTEN: u8 = 0x0a;

/// The tables, read in this order.
const TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];

/// `count`'s memory between calls. Keep one per process group watched.
#[derive(Debug, Default)]
pub struct Scanner {
    /// What `known` was learnt for.
    pgrp: i32,
    ports: Vec<u16>,
    /// The socket inodes the group held at the last count, sorted, and
    /// whether each is a connection on `ports`.
    known: Vec<(u64, bool)>,
    /// This count's socket inodes, then its `known`.
    seen: Vec<u64>,
    next: Vec<(u64, bool)>,
    /// The tables' connections on `ports`, sorted.
    conns: Vec<u64>,
    table: Vec<u8>,
    path: String,
}

impl Scanner {
    pub fn new() -> Scanner {
        Scanner::default()
    }

    /// How many TCP sockets, not listening, with a local port in `ports`,
    /// the processes of group `pgrp` hold (each socket once, however many
    /// fds or processes share it).
    ///
    /// A connection still in an accept queue has no inode yet, so it is
    /// not counted here: read the socket's queue length first, and count
    /// only once it is 0; whatever was accepted before that is in an fd
    /// table by the time this lists them.
    ///
    /// Processes that exit during the scan are skipped. An fd table that
    /// cannot be read (another uid, without root) is an error: the count
    /// would be a guess.
    pub fn count(&mut self, pgrp: i32, ports: &[u16]) -> io::Result<usize> {
        if pgrp != self.pgrp || ports != self.ports {
            self.pgrp = pgrp;
            self.ports = ports.to_vec();
            self.known.clear();
        }
        self.group_sockets(pgrp)?;
        let known = &self.known;
        let new = |i: &u64| known.binary_search_by_key(i, |k| k.0).is_err();
        if self.seen.iter().any(new) {
            self.conns.clear();
            for table in TABLES {
                match read_into(table, &mut self.table) {
                    Ok(()) => connections(&self.table, ports, &mut self.conns),
                    // No tcp6 when IPv6 is disabled.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            self.conns.sort_unstable();
        }
        classify(&self.seen, &self.known, &self.conns, &mut self.next);
        std::mem::swap(&mut self.known, &mut self.next);
        Ok(self.known.iter().filter(|k| k.1).count())
    }

    /// Into `seen`: the socket inodes that processes of `pgrp` hold.
    fn group_sockets(&mut self, pgrp: i32) -> io::Result<()> {
        self.seen.clear();
        let mut stat = [0u8; 512];
        for entry in fs::read_dir("/proc")? {
            let Some(pid) = pid(entry?.file_name().as_bytes()) else { continue };
            self.path.clear();
            write!(self.path, "/proc/{pid}/stat").unwrap();
            let Ok(n) = File::open(&self.path).and_then(|mut f| f.read(&mut stat)) else {
                continue; // exited
            };
            if stat_pgrp(&stat[..n]) != Some(pgrp) {
                continue;
            }
            self.path.truncate(self.path.len() - "stat".len());
            self.path.push_str("fd");
            let fds = match fs::read_dir(&self.path) {
                Ok(fds) => fds,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for fd in fds {
                // An fd closed or a process gone between the listing and here.
                let Ok(link) = fd.and_then(|fd| fs::read_link(fd.path())) else { continue };
                self.seen.extend(socket_inode(link.as_os_str().as_bytes()));
            }
        }
        self.seen.sort_unstable();
        self.seen.dedup();
        Ok(())
    }
}

/// `seen`'s inodes, each with whether it is a connection: as `known` says,
/// or else whether it is in `conns` (all three sorted).
fn classify(seen: &[u64], known: &[(u64, bool)], conns: &[u64], out: &mut Vec<(u64, bool)>) {
    out.clear();
    out.extend(seen.iter().map(|&i| match known.binary_search_by_key(&i, |k| k.0) {
        Ok(at) => known[at],
        Err(_) => (i, conns.binary_search(&i).is_ok()),
    }));
}

/// The whole file into `buf`, keeping its capacity.
fn read_into(path: &str, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    File::open(path)?.read_to_end(buf).map(drop)
}

/// A /proc entry's name as a pid.
fn pid(name: &[u8]) -> Option<u32> {
    if name.is_empty() || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(name).ok()?.parse().ok()
}

/// The process group (field 5) of a /proc/PID/stat line. The command
/// name (field 2) is in parentheses and may hold spaces and ')', so the
/// fields are counted from the last ')'.
fn stat_pgrp(stat: &[u8]) -> Option<i32> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let mut fields = stat[close + 1..].split(|&b| b == b' ').filter(|f| !f.is_empty());
    let pgrp = fields.nth(2)?; // state, ppid, pgrp
    std::str::from_utf8(pgrp).ok()?.parse().ok()
}

/// The inode of a `socket:[N]` fd link.
fn socket_inode(link: &[u8]) -> Option<u64> {
    let n = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(n).ok()?.parse().ok()
}

/// One row of /proc/net/tcp or tcp6.
#[derive(Debug, PartialEq, Eq)]
struct Row {
    port: u16,
    state: u8,
    inode: u64,
}

/// `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout
/// inode ...`, where local_address is `HEXADDR:HEXPORT`; None for the
/// header and anything else that does not parse.
fn row(line: &[u8]) -> Option<Row> {
    let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let local = fields.nth(1)?;
    let state = fields.nth(1)?;
    let inode = fields.nth(5)?;
    let port = &local[local.iter().rposition(|&b| b == b':')? + 1..];
    Some(Row {
        port: u16::from_str_radix(std::str::from_utf8(port).ok()?, 16).ok()?,
        state: u8::from_str_radix(std::str::from_utf8(state).ok()?, 16).ok()?,
        inode: std::str::from_utf8(inode).ok()?.parse().ok()?,
    })
}

/// Appends the inodes of the table's sockets that are not listening, have
/// a local port in `ports`, and belong to a process (inode 0: a
/// connection not accepted yet, or one in TIME_WAIT that nobody holds).
fn connections(table: &[u8], ports: &[u16], out: &mut Vec<u64>) {
    for line in table.split(|&b| b == b'\n') {
        if let Some(r) = row(line) {
            if r.state != LISTEN && r.inode != 0 && ports.contains(&r.port) {
                out.push(r.inode);
            }
        }
    }
}

#[cfg(test)]
mod tests;
