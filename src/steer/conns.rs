//! How many TCP connections a process group still holds on given local
//! ports: a draining generation is stopped only once it holds none.
//!
//! The kernel attributes sockets to processes only through their fd
//! tables, so: the connections on the ports come from the kernel's tables
//! (those of graceexec's network namespace, which is the one of the pool's
//! sockets and so of every connection they accept), and the group's
//! processes' /proc/PID/fd links name their socket inodes.
//!
//! The tables are asked through sock_diag netlink (diag.rs), filtered in
//! the kernel by state and port. /proc/net/tcp and tcp6, which format
//! every socket of the namespace as text, TIME_WAIT ones included, are
//! read only where that interface is missing (an old or cut-down kernel, a
//! sandbox): the first query that finds it so switches to them for good.
//!
//! It runs every few milliseconds during a drain, and asking the tables is
//! the expensive part: either way the kernel walks its whole established
//! hash (262,144 buckets here). So a `Scanner` remembers, per socket inode
//! the group holds, whether it is such a connection, and asks the tables
//! only when the group holds a socket it has not classified yet. That is
//! sound because a socket's local port and "listening or not" never
//! change: an accepted connection is in the table, with its inode, before
//! accept() returns its fd, and a socket found in no table (not TCP, or
//! reset and unhashed already) never becomes one of them.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

use super::diag::{self, is_queued, LISTEN, SYN_RECV};
use crate::log;

/// Set once sock_diag is found missing: /proc from then on.
static PROC_ONLY: AtomicBool = AtomicBool::new(false);

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
            let conns = &mut self.conns;
            match via_diag(|| diag::held(ports, conns)) {
                Some(r) => r?,
                None => {
                    conns.clear(); // what a failed query had found
                    proc_held(ports, conns)?
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
            fd_sockets(&self.path, &mut self.seen)?;
        }
        self.seen.sort_unstable();
        self.seen.dedup();
        Ok(())
    }
}

/// Into `out`: the socket inodes in `dir`, a /proc/PID/fd; nothing if the
/// process is gone.
fn fd_sockets(dir: &str, out: &mut Vec<u64>) -> io::Result<()> {
    let fds = match fs::read_dir(dir) {
        Ok(fds) => fds,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for fd in fds {
        // An fd closed or a process gone between the listing and here.
        let Ok(link) = fd.and_then(|fd| fs::read_link(fd.path())) else { continue };
        out.extend(socket_inode(link.as_os_str().as_bytes()));
    }
    Ok(())
}

/// The socket inodes graceexec itself holds, sorted.
pub fn own_sockets() -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    fd_sockets("/proc/self/fd", &mut out)?;
    out.sort_unstable();
    Ok(out)
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

/// `query`'s answer, or None if sock_diag is missing (now, or as `off`
/// says, before): then the caller reads /proc.
fn via_diag<T>(query: impl FnOnce() -> io::Result<T>) -> Option<io::Result<T>> {
    via(&PROC_ONLY, query)
}

fn via<T>(off: &AtomicBool, query: impl FnOnce() -> io::Result<T>) -> Option<io::Result<T>> {
    if off.load(Ordering::Relaxed) {
        return None;
    }
    match query() {
        Err(e) if diag::unavailable(&e) => {
            off.store(true, Ordering::Relaxed);
            log::debug(&format!("no netlink sock_diag ({e}): reading /proc/net/tcp instead"));
            None
        }
        r => Some(r),
    }
}

/// Every row of /proc/net/tcp then tcp6, until `f` says stop. Streamed a
/// line at a time: with tens of thousands of TIME_WAIT sockets the tables
/// run to megabytes, which a whole-file read would keep in graceexec's
/// heap for good (the allocator does not give such a high-water back).
fn each_row(mut f: impl FnMut(&Row) -> bool) -> io::Result<()> {
    let mut line = Vec::with_capacity(256);
    for path in TABLES {
        let file = match File::open(path) {
            Ok(file) => file,
            // No tcp6 when IPv6 is disabled.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut reader = io::BufReader::with_capacity(16 * 1024, file);
        loop {
            line.clear();
            if io::BufRead::read_until(&mut reader, b'\n', &mut line)? == 0 {
                break;
            }
            if let Some(r) = row(&line) {
                if !f(&r) {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
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
    /// The local address.
    ip: IpAddr,
    port: u16,
    remote: u16,
    state: u8,
    inode: u64,
}

/// `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout
/// inode ...`, where local_address is `HEXADDR:HEXPORT`; None for the
/// header and anything else that does not parse.
fn row(line: &[u8]) -> Option<Row> {
    let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let local = fields.nth(1)?;
    let remote = fields.next()?;
    let state = fields.next()?;
    let inode = fields.nth(5)?;
    let port = |a: &[u8]| {
        let hex = &a[a.iter().rposition(|&b| b == b':')? + 1..];
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    Some(Row {
        ip: ip_of(local)?,
        port: port(local)?,
        remote: port(remote)?,
        state: u8::from_str_radix(std::str::from_utf8(state).ok()?, 16).ok()?,
        inode: std::str::from_utf8(inode).ok()?.parse().ok()?,
    })
}

/// The address of a `HEXADDR:HEXPORT` field: 8 hex digits for IPv4, 32
/// for IPv6, each group of 8 a 32-bit word of the address as it lies in
/// memory (network order) printed as a number of this machine's order.
fn ip_of(field: &[u8]) -> Option<IpAddr> {
    let hex = std::str::from_utf8(&field[..field.iter().position(|&b| b == b':')?]).ok()?;
    if hex.len() != 8 && hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, word) in hex.as_bytes().chunks(8).enumerate() {
        let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Some(match hex.len() {
        8 => IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]]),
        _ => IpAddr::from(bytes),
    })
}

/// Into `out`: every listening TCP socket, as its local address and inode,
/// from sock_diag or else /proc.
pub fn listening(out: &mut Vec<(SocketAddr, u64)>) -> io::Result<()> {
    via_diag(|| diag::listening(out)).unwrap_or_else(|| {
        out.clear(); // what a failed query had found
        proc_listening(out)
    })
}

pub(super) fn proc_listening(out: &mut Vec<(SocketAddr, u64)>) -> io::Result<()> {
    each_row(|r| {
        if r.state == LISTEN {
            out.push((SocketAddr::new(r.ip, r.port), r.inode));
        }
        true
    })
}

/// The socket inodes that processes of group `pgrp` hold, sorted.
pub fn group_sockets(pgrp: i32) -> io::Result<Vec<u64>> {
    let mut scanner = Scanner::new();
    scanner.group_sockets(pgrp)?;
    Ok(scanner.seen)
}

/// Into `out`, from /proc: the inodes of the connections on `ports` that
/// a process holds.
pub(super) fn proc_held(ports: &[u16], out: &mut Vec<u64>) -> io::Result<()> {
    each_row(|r| {
        if is_connection(r, ports) {
            out.push(r.inode);
        }
        true
    })
}

/// A socket that is not listening, has a local port in `ports`, and
/// belongs to a process (inode 0: a connection not accepted yet, or one in
/// TIME_WAIT or SYN_RECV that nobody holds).
fn is_connection(r: &Row, ports: &[u16]) -> bool {
    r.state != LISTEN && r.inode != 0 && ports.contains(&r.port)
}

/// Whether the connection from `client` to `server` (as the client sees
/// them) has been accepted: its server side has an inode once a process
/// holds it, and none while it waits in an accept queue (proc(5),
/// /proc/net/tcp). One the server has closed already (FIN_WAIT, TIME_WAIT:
/// nobody holds it any more) was accepted too; a queued one is always
/// ESTABLISHED, or CLOSE_WAIT if the client closed first, and one in
/// SYN_RECV (the handshake's last ACK not taken yet: it may have been
/// dropped for a full queue) is not accepted either. None if there is none.
pub fn accepted(server: SocketAddr, client: SocketAddr) -> io::Result<Option<bool>> {
    via_diag(|| diag::accepted(server, client))
        .unwrap_or_else(|| proc_accepted(server.port(), client.port()))
}

/// `accepted` from /proc, which the ports alone pick: where several rows
/// match (other addresses, v4 and v6), one queued is enough for false.
pub(super) fn proc_accepted(local: u16, remote: u16) -> io::Result<Option<bool>> {
    let mut found = None;
    each_row(|r| {
        if r.port == local && r.remote == remote && r.state != LISTEN {
            let inode = u32::try_from(r.inode).unwrap_or(u32::MAX);
            found = Some(found.unwrap_or(true) && !is_queued(r.state, inode));
        }
        found != Some(false)
    })?;
    Ok(found)
}

/// How many connections to a local port in `ports` are half open (a SYN
/// answered, the handshake's last ACK not in yet). Whichever socket of
/// the group they were steered to, they join its queue when it comes.
pub fn half_open(ports: &[u16]) -> io::Result<usize> {
    via_diag(|| diag::half_open(ports)).unwrap_or_else(|| proc_half_open(ports))
}

pub(super) fn proc_half_open(ports: &[u16]) -> io::Result<usize> {
    let mut n = 0;
    each_row(|r| {
        n += usize::from(r.state == SYN_RECV && ports.contains(&r.port));
        true
    })?;
    Ok(n)
}

#[cfg(test)]
mod tests;
