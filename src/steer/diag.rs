//! The TCP sockets graceexec asks about, from the kernel's sock_diag
//! netlink interface (sock_diag(7)) instead of /proc/net/tcp{,6}.
//!
//! Reading /proc/net/tcp makes the kernel format a line for every socket in
//! the network namespace; with tens of thousands of TIME_WAIT sockets (any
//! busy server) that is megabytes of text per read, most of a drain's CPU.
//! An inet_diag dump is filtered in the kernel instead: by TCP state (the
//! `idiag_states` bitmask: a TIME_WAIT socket costs a state test, no text)
//! and by local port (a bytecode program). It still walks the whole
//! established hash, once per address family, touching every socket in
//! it. A single connection needs no walk: the kernel looks its 4-tuple up.
//! The messages and where their layouts come from: wire.rs.
//!
//! What the kernel reports, checked on a real kernel by the tests: request
//! sockets (a SYN answered, the handshake not done) are dumped only when
//! the states ask for SYN_RECV, and show as SYN_RECV with inode 0; a
//! TIME_WAIT socket shows its substate (TIME_WAIT, or FIN_WAIT2 for an
//! orphan the kernel turned into one), inode 0; a connection in an accept
//! queue has inode 0 until accept() gives it an fd. The same as
//! /proc/net/tcp says (proc(5)), which conns.rs falls back to.
//!
//! The kernel answers synchronously: the first part of a dump, or the one
//! answer, is queued by the time the request's send returns, and each later
//! part of a dump while the previous one is read. So the socket is
//! non-blocking, and a read that finds nothing is an error, never a wait.
//! A fresh socket per query keeps a dump cut short from leaving anything
//! behind for the next one, and no fd is held between queries.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use wire::{is, Filter, Sock, AF_INET, AF_INET6, BOTH};

mod wire;

/// TCP states (include/net/tcp_states.h).
pub const ESTABLISHED: u8 = 1;
const SYN_SENT: u8 = 2;
pub const SYN_RECV: u8 = 3;
const FIN_WAIT1: u8 = 4;
const FIN_WAIT2: u8 = 5;
#[cfg(test)]
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

/// The kernel fills a dump's parts up to 32 KiB when the reader's buffer
/// is that large (netlink_recvmsg's max_recvmsg_len), never more.
const BUF: usize = 32 * 1024;
/// Reads of one dump: about 250 sockets each, so far more than any
/// filtered answer; only a kernel that never ends a dump reaches it.
const MAX_READS: usize = 10_000;
/// Each query has a socket of its own, so any number will do.
const SEQ: u32 = 1;

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

/// Into `out`: every listening TCP socket of both families, as its local
/// address and inode. Only the listeners' hash is walked: no state but
/// LISTEN is asked for.
pub fn listening(out: &mut Vec<(SocketAddr, u64)>) -> io::Result<()> {
    let filter = Filter { states: bits(&[LISTEN]), sport: 0, dport: 0, ports: None };
    each(&filter, |s| out.push((SocketAddr::new(s.ip, s.sport), s.inode.into())))
}

/// The server side of the connection from `client` to `server` (as the
/// client sees them: its local and peer addresses): Some(false) while it
/// waits to be accepted (`is_queued`), Some(true) once accepted (it has an
/// inode, or the server has closed it already), None if there is none.
/// One hash lookup, however many sockets the machine has.
pub fn accepted(server: SocketAddr, client: SocketAddr) -> io::Result<Option<bool>> {
    let mut found = None;
    match ask(&wire::exact_request(SEQ, server, client), false, &mut |s| found = Some(*s)) {
        // Where it finds no connection, the lookup falls back to the
        // listener: nothing to say either.
        Ok(()) => Ok(found.filter(|s| s.state != LISTEN).map(|s| !is_queued(s.state, s.inode))),
        Err(e) if is(&e, Errno::ENOENT) => {
            // No such socket, or no sock_diag for TCP at all: a dump of
            // listeners (no walk of the connections) tells which.
            let family = if server.is_ipv4() { AF_INET } else { AF_INET6 };
            let port = server.port();
            let listeners = Filter { states: bits(&[LISTEN]), sport: port, dport: 0, ports: None };
            dump(family, &listeners, &mut |_| {})?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
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
    unavailable.iter().any(|&n| is(e, n))
}

/// Set once the kernel refuses a dump of both families at once: one per
/// family from then on.
static ONE_BY_ONE: AtomicBool = AtomicBool::new(false);

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
    if !ONE_BY_ONE.load(Ordering::Relaxed) {
        match dump(BOTH, filter, &mut keep) {
            // Refused as a whole, before any answer.
            Err(e) if unavailable(&e) => ONE_BY_ONE.store(true, Ordering::Relaxed),
            r => return r,
        }
    }
    each_family(filter, &mut keep)
}

/// `each`, by a dump per family.
fn each_family(filter: &Filter, f: &mut impl FnMut(&Sock)) -> io::Result<()> {
    dump(AF_INET, filter, f)?;
    match dump(AF_INET6, filter, f) {
        // A kernel built without IPv6 has no handler for it, and no IPv6
        // sockets either.
        Err(e) if is(&e, Errno::ENOENT) => Ok(()),
        r => r,
    }
}

fn dump(family: u8, filter: &Filter, f: &mut impl FnMut(&Sock)) -> io::Result<()> {
    ask(&wire::dump_request(SEQ, family, filter), true, f)
}

/// Sends `req` and reads the answers: to the end of a dump, or the one.
fn ask(req: &[u8], dump: bool, f: &mut impl FnMut(&Sock)) -> io::Result<()> {
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
            return Err(wire::invalid("a netlink message longer than 32 KiB"));
        }
        if wire::parse(&buf[..n], SEQ, f)? || !dump {
            return Ok(());
        }
    }
    Err(io::Error::other("a sock_diag dump that does not end"))
}

#[cfg(test)]
mod tests;
