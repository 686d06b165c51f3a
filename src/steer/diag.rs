//! The TCP sockets graceexec asks about, from the kernel's sock_diag
//! netlink interface instead of /proc/net/tcp{,6}.
//!
//! Reading /proc/net/tcp makes the kernel format a line for every socket in
//! the network namespace; with tens of thousands of TIME_WAIT sockets (any
//! busy server) that is megabytes of text per read, most of a drain's CPU.
//! An inet_diag dump is filtered in the kernel instead: by TCP state (the
//! `idiag_states` bitmask: TIME_WAIT sockets cost a state test each, no
//! text), and by local port with a bytecode program. Each dump still walks
//! the established hash, but skipping its empty buckets is cheap.
//!
//! The messages, all in host byte order except where `be` says network
//! order (netlink(7) and sock_diag(7); include/uapi/linux/netlink.h,
//! sock_diag.h, inet_diag.h; include/net/tcp_states.h for the states):
//!
//! ```text
//! nlmsghdr (16)        u32 len (this header included), u16 type,
//!                      u16 flags, u32 seq, u32 pid
//! request, type SOCK_DIAG_BY_FAMILY (20), flags NLM_F_REQUEST|NLM_F_DUMP:
//! inet_diag_req_v2 (56) u8 family (AF_INET 2, AF_INET6 10), u8 protocol
//!                      (IPPROTO_TCP 6), u8 ext (0: no extensions), u8 pad,
//!                      u32 states (bit 1 << state), inet_diag_sockid id
//! inet_diag_sockid (48) be16 sport, be16 dport, be32 src[4], be32 dst[4],
//!                      u32 if, u32 cookie[2]. In a dump, a non-zero sport
//!                      or dport keeps only sockets with that local or
//!                      remote port; the rest is ignored.
//! rtattr (4)           u16 len (itself included), u16 type: here
//!                      INET_DIAG_REQ_BYTECODE (1), followed by the program
//! inet_diag_bc_op (4)  u8 code, u8 yes, u16 no: go `yes` bytes on if the
//!                      test holds, else `no`; S_GE (2) and S_LE (3)
//!                      compare the local port with the `no` of the op
//!                      after them (8 bytes in all), JMP (1) always goes
//!                      `no`. The socket is kept if a jump lands exactly on
//!                      the end of the program, dropped if 4 past it.
//! answers: messages of type SOCK_DIAG_BY_FAMILY, then NLMSG_DONE (3,
//! payload an int: 0 or minus an errno); or NLMSG_ERROR (2, payload int
//! minus errno, then the request's header). Each message 4-byte aligned.
//! inet_diag_msg (72)   u8 family, u8 state, u8 timer, u8 retrans,
//!                      inet_diag_sockid id (4..52), u32 expires, rqueue,
//!                      wqueue, uid, inode (68..72); attributes follow
//! ```
//!
//! What the kernel reports, checked on this kernel by the tests: request
//! sockets (a SYN answered, the handshake not done) are dumped only when
//! the states ask for SYN_RECV, and show as SYN_RECV with inode 0; a
//! TIME_WAIT socket shows its substate (TIME_WAIT, or FIN_WAIT2 for an
//! orphan the kernel turned into one), inode 0; a connection in an accept
//! queue has inode 0 until accept() gives it an fd. The same as
//! /proc/net/tcp says (proc(5)), which conns.rs falls back to.
//!
//! The kernel answers a dump synchronously: the first part is queued by
//! the time the request's send returns, and each later part while the
//! previous one is read. So the socket is non-blocking, and a read that
//! finds nothing is an error, never a wait. A fresh socket per query keeps
//! a dump cut short from leaving anything behind for the next one.

use std::io;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const REQ_LEN: usize = 56;
const MSG_LEN: usize = 72;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const BC_JMP: u8 = 1;
const BC_S_GE: u8 = 2;
const BC_S_LE: u8 = 3;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;

/// TCP states (include/net/tcp_states.h).
pub const ESTABLISHED: u8 = 1;
const SYN_SENT: u8 = 2;
pub const SYN_RECV: u8 = 3;
const FIN_WAIT1: u8 = 4;
const FIN_WAIT2: u8 = 5;
pub const TIME_WAIT: u8 = 6;
const CLOSE: u8 = 7;
pub const CLOSE_WAIT: u8 = 8;
const LAST_ACK: u8 = 9;
pub const LISTEN: u8 = 10;
const CLOSING: u8 = 11;

const fn bits(states: &[u8]) -> u32 {
    let mut mask = 0;
    let mut i = 0;
    while i < states.len() {
        mask |= 1 << states[i];
        i += 1;
    }
    mask
}

/// Sockets a process can hold: all but LISTEN, TIME_WAIT and SYN_RECV
/// (which never have an inode). CLOSE is never hashed, so never dumped.
const HELD: u32 =
    bits(&[ESTABLISHED, SYN_SENT, FIN_WAIT1, FIN_WAIT2, CLOSE, CLOSE_WAIT, LAST_ACK, CLOSING]);
/// Every state a connection goes through.
const CONNECTED: u32 = HELD | bits(&[SYN_RECV, TIME_WAIT]);

/// A program per port costs 20 bytes, and its jumps must fit a u16: past
/// this many ports, the kernel filters by state only and the ports are
/// tested here.
const MAX_PROGRAM_PORTS: usize = 1000;
/// The kernel fills a dump's parts up to 32 KiB when the reader's buffer
/// is that large (netlink_recvmsg's max_recvmsg_len), never more.
const BUF: usize = 32 * 1024;
/// Reads of one dump: about 250 sockets each, so far more than any
/// filtered answer; only a kernel that never ends a dump reaches it.
const MAX_READS: usize = 10_000;
/// Each query has a socket of its own, so any number will do.
const SEQ: u32 = 1;

/// One socket of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sock {
    pub state: u8,
    pub sport: u16,
    pub dport: u16,
    pub inode: u32,
}

/// What a dump asks the kernel for.
#[derive(Debug, Clone, Copy)]
struct Filter<'a> {
    states: u32,
    /// Exact local and remote ports, 0 for any.
    sport: u16,
    dport: u16,
    /// Local port in these; None for any.
    ports: Option<&'a [u16]>,
}

impl Filter<'_> {
    /// The kernel's filter, applied again (it costs nothing, and the
    /// program is skipped for long port lists).
    fn keeps(&self, s: &Sock) -> bool {
        self.states & (1 << s.state) != 0
            && (self.sport == 0 || s.sport == self.sport)
            && (self.dport == 0 || s.dport == self.dport)
            && self.ports.map_or(true, |p| p.contains(&s.sport))
    }
}

/// How many connections to a local port in `ports` are half open: SYN_RECV.
pub fn half_open(ports: &[u16]) -> io::Result<usize> {
    let mut n = 0;
    let filter = Filter { states: bits(&[SYN_RECV]), sport: 0, dport: 0, ports: Some(ports) };
    each(&filter, |_| n += 1)?;
    Ok(n)
}

/// Into `out`: the inodes of the connections with a local port in `ports`
/// that a process holds (any state but LISTEN, TIME_WAIT and SYN_RECV,
/// and an inode: not in an accept queue).
pub fn held(ports: &[u16], out: &mut Vec<u64>) -> io::Result<()> {
    let filter = Filter { states: HELD, sport: 0, dport: 0, ports: Some(ports) };
    each(&filter, |s| {
        if s.inode != 0 {
            out.push(s.inode.into());
        }
    })
}

/// The server side of the connection from port `remote` to local port
/// `local`: Some(false) while it waits to be accepted (SYN_RECV, or
/// ESTABLISHED or CLOSE_WAIT without an inode), Some(true) once accepted
/// (it has an inode, or the server has closed it already), None if there
/// is none. Several matches (other addresses, v4 and v6) are accepted
/// only if none of them is waiting.
pub fn accepted(local: u16, remote: u16) -> io::Result<Option<bool>> {
    let mut found = None;
    let filter = Filter { states: CONNECTED, sport: local, dport: remote, ports: None };
    each(&filter, |s| found = Some(found.unwrap_or(true) && !is_queued(s.state, s.inode)))?;
    Ok(found)
}

/// A server-side connection no process has accepted: the handshake not
/// done, or done and in the queue (where the client may have closed it).
pub fn is_queued(state: u8, inode: u32) -> bool {
    state == SYN_RECV || matches!(state, ESTABLISHED | CLOSE_WAIT) && inode == 0
}

/// Whether a query's error means this kernel or sandbox has no sock_diag
/// for TCP (no NETLINK_SOCK_DIAG, no inet_diag module, seccomp, a request
/// it does not take), so that asking again is no use.
pub fn unavailable(e: &io::Error) -> bool {
    let unavailable = [
        Errno::EPROTONOSUPPORT,
        Errno::EAFNOSUPPORT,
        Errno::ESOCKTNOSUPPORT,
        Errno::EPROTOTYPE,
        Errno::ENOENT,
        Errno::EOPNOTSUPP,
        Errno::EINVAL,
        Errno::EPERM,
        Errno::EACCES,
        Errno::ENOSYS,
    ];
    e.raw_os_error().is_some_and(|n| unavailable.contains(&Errno::from_raw(n)))
}

/// Every socket of both families that `filter` keeps.
fn each(filter: &Filter, mut f: impl FnMut(&Sock)) -> io::Result<()> {
    if filter.ports.is_some_and(|p| p.is_empty()) {
        return Ok(());
    }
    let mut keep = |s: &Sock| {
        if filter.keeps(s) {
            f(s)
        }
    };
    dump(AF_INET, filter, &mut keep)?;
    match dump(AF_INET6, filter, &mut keep) {
        // A kernel built without IPv6 has no handler for it, and no
        // IPv6 sockets either.
        Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => Ok(()),
        r => r,
    }
}

/// One dump, each socket of it to `f`.
fn dump(family: u8, filter: &Filter, f: &mut impl FnMut(&Sock)) -> io::Result<()> {
    ask(&request(SEQ, family, filter), f)
}

/// Sends `req` and reads the answers to the end.
fn ask(req: &[u8], f: &mut impl FnMut(&Sock)) -> io::Result<()> {
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let protocol = SockProtocol::NetlinkSockDiag;
    let fd = socket(AddressFamily::Netlink, SockType::Datagram, flags, protocol)?;
    sendto(fd.as_raw_fd(), req, &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
    let mut buf = vec![0u8; BUF];
    for _ in 0..MAX_READS {
        // MSG_TRUNC: the datagram's whole length, to tell a cut one.
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_TRUNC) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n > buf.len() {
            return Err(invalid("a netlink message longer than 32 KiB"));
        }
        if parse(&buf[..n], SEQ, f)? {
            return Ok(());
        }
    }
    Err(io::Error::other("a sock_diag dump that does not end"))
}

/// The request: header, inet_diag_req_v2, and the port program if any.
fn request(seq: u32, family: u8, filter: &Filter) -> Vec<u8> {
    let program = match filter.ports {
        Some(ports) if ports.len() <= MAX_PROGRAM_PORTS => program(ports),
        _ => Vec::new(),
    };
    let attr = if program.is_empty() { 0 } else { 4 + program.len() };
    let len = NLMSG_HDRLEN + REQ_LEN + attr;
    let mut m = Vec::with_capacity(len);
    m.extend((len as u32).to_ne_bytes());
    m.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend((NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend(seq.to_ne_bytes());
    m.extend(0u32.to_ne_bytes()); // pid: the kernel fills it in
    m.extend([family, IPPROTO_TCP, 0, 0]);
    m.extend(filter.states.to_ne_bytes());
    m.extend(filter.sport.to_be_bytes());
    m.extend(filter.dport.to_be_bytes());
    m.resize(NLMSG_HDRLEN + REQ_LEN, 0); // addresses, interface, cookie
    if attr != 0 {
        m.extend((attr as u16).to_ne_bytes());
        m.extend(INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        m.extend(program);
    }
    m
}

/// A program keeping the sockets whose local port is one of `ports`
/// (not empty): for each, `port >= p`, `port <= p`, then a jump to the
/// end; a failed test goes to the next port's, or, for the last port, 4
/// past the end. (S_EQ would halve it, but only kernels from 4.16 on have
/// it; these ops are as old as inet_diag.) The kernel's audit follows the
/// `yes` jumps, so every `no` must land on an op they reach: they do.
fn program(ports: &[u16]) -> Vec<u8> {
    const ONE: usize = 20; // two 8-byte tests and a jump
    let len = ports.len() * ONE - 4; // the last port needs no jump
    let mut p = Vec::with_capacity(len);
    let op = |p: &mut Vec<u8>, code: u8, yes: u8, no: usize| {
        p.extend([code, yes]);
        p.extend((no as u16).to_ne_bytes());
    };
    for (i, &port) in ports.iter().enumerate() {
        let start = p.len();
        let fail = if i + 1 == ports.len() { len + 4 } else { start + ONE };
        op(&mut p, BC_S_GE, 8, fail - start);
        op(&mut p, 0, 0, port.into());
        op(&mut p, BC_S_LE, 8, fail - start - 8);
        op(&mut p, 0, 0, port.into());
        if i + 1 < ports.len() {
            let to_end = len - p.len();
            op(&mut p, BC_JMP, 4, to_end);
        }
    }
    p
}

/// The messages of one datagram, each socket to `f`; true once the dump
/// is done. Messages of another sequence number are not ours: skipped.
fn parse(mut buf: &[u8], seq: u32, f: &mut impl FnMut(&Sock)) -> io::Result<bool> {
    while !buf.is_empty() {
        if buf.len() < NLMSG_HDRLEN {
            return Err(invalid("a netlink header cut short"));
        }
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(invalid("a netlink message length out of bounds"));
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let body = &buf[NLMSG_HDRLEN..len];
        if u32_at(buf, 8) == seq {
            match kind {
                NLMSG_DONE | NLMSG_ERROR => {
                    // DONE carries the dump's end status, ERROR a failure
                    // (or 0, an acknowledgement, not asked for here).
                    let status = if body.len() >= 4 { u32_at(body, 0) as i32 } else { 0 };
                    if status < 0 {
                        return Err(io::Error::from_raw_os_error(-status));
                    }
                    if kind == NLMSG_DONE {
                        return Ok(true);
                    }
                }
                SOCK_DIAG_BY_FAMILY => f(&sock(body)?),
                _ => {} // NLMSG_NOOP and the like
            }
        }
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    Ok(false)
}

/// An inet_diag_msg's fields graceexec reads.
fn sock(m: &[u8]) -> io::Result<Sock> {
    if m.len() < MSG_LEN {
        return Err(invalid("an inet_diag_msg cut short"));
    }
    Ok(Sock {
        state: m[1],
        sport: u16::from_be_bytes([m[4], m[5]]),
        dport: u16::from_be_bytes([m[6], m[7]]),
        inode: u32_at(m, 68),
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"))
}

#[cfg(test)]
mod tests;
