//! A pool of listening TCP sockets on one address, in one SO_REUSEPORT
//! group, with the steering program attached.
//!
//! Two kernel rules shape it (verified on Linux 6.18, see
//! shared/design/steering-facts.md):
//! - A socket's index in the group is the order of its `listen()`; when a
//!   socket leaves the group (its last fd closed), the *last* socket moves
//!   into the freed slot. So the pool never closes a socket before it is
//!   dropped, and only grows at the end: index `i` is `socket(i)` for the
//!   pool's whole life.
//! - Without a program, the kernel hashes new connections over every
//!   socket. So the first socket gets a program (`Route::all(0)`) before
//!   any second socket listens: no connection ever lands in a socket that
//!   no generation accepts from.
//!
//! Every socket has SO_REUSEPORT, so another process of the *same uid*
//! that sets it too can bind the address and join the group, at the next
//! index; and when it leaves, the pool's last socket moves into its slot.
//! A socket without SO_REUSEPORT, or from another uid, gets EADDRINUSE as
//! before.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::libc;
use nix::sys::socket::{
    bind, getsockname, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag,
    SockType, SockaddrStorage,
};

use super::bpf::{Family, Program, Route, RouteError};
use crate::sys;

/// The group's listening sockets; index `i` is the `i`th to listen.
#[derive(Debug)]
pub struct Pool {
    /// The address every socket is bound to, port 0 resolved.
    addr: SocketAddr,
    family: Family,
    backlog: Backlog,
    sockets: Vec<OwnedFd>,
}

/// A pool taken back from the store, and the indexes of stored sockets it
/// could not take (to close).
pub struct TakenBack {
    pub pool: Pool,
    pub dropped: Vec<u32>,
}

/// Why a pool could not be made, grown or steered.
#[derive(Debug)]
pub enum PoolError {
    /// socket(), bind() or listen() failed: the address is taken, a
    /// privileged port after `--user` dropped root, another uid's group...
    Bind(io::Error),
    /// The kernel refused SO_ATTACH_REUSEPORT_CBPF (older than 4.5, or a
    /// seccomp or LSM policy). From `Pool::bind`: nothing is left bound;
    /// bind the address the usual way and share that one socket between
    /// generations. From `attach`: the group keeps its previous program, so
    /// connections go where they went before.
    Refused(io::Error),
    /// The route names a socket the pool does not have (or is otherwise
    /// malformed): a bug in the caller. Nothing was attached.
    Route(RouteError),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Bind(e) => write!(f, "cannot bind a steered socket: {e}"),
            PoolError::Refused(e) => write!(f, "the kernel refused the steering program: {e}"),
            PoolError::Route(e) => write!(f, "bad steering route: {e}"),
        }
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PoolError::Bind(e) | PoolError::Refused(e) => Some(e),
            PoolError::Route(e) => Some(e),
        }
    }
}

fn bind_error(e: Errno) -> PoolError {
    PoolError::Bind(e.into())
}

/// TCP_INFO's `tcpi_state` of a listening socket (TCP_LISTEN).
const TCP_LISTEN: u8 = 10;

impl Pool {
    /// Binds `count` sockets (at least one) to `addr`, IPv4 or IPv6; with
    /// port 0, the first socket picks the port and the others bind it too.
    /// The group starts with `Route::all(0)`.
    ///
    /// `PoolError::Refused` means this kernel cannot steer: fall back to
    /// one shared socket. Nothing of the pool stays bound.
    pub fn bind(addr: SocketAddr, backlog: i32, count: u32) -> Result<Pool, PoolError> {
        let backlog = Backlog::new(backlog).map_err(bind_error)?;
        let family = if addr.is_ipv4() { Family::V4 } else { Family::V6 };
        let first = open(addr, backlog).map_err(bind_error)?;
        let addr = local_addr(first.as_fd()).map_err(bind_error)?;
        let mut pool = Pool { addr, family, backlog, sockets: vec![first] };
        // Before a second socket listens, or the kernel would hash new
        // connections onto it while no generation accepts there.
        pool.attach(&Route::all(0))?;
        for _ in 1..count {
            pool.grow()?;
        }
        Ok(pool)
    }

    /// A pool taken back from the service manager's file descriptor store
    /// (fdstore.rs): sockets of one group by index, still bound to an
    /// address `want` accepts, still listening. Only those from index 0 up
    /// to the first one missing are taken: one that was not stored left
    /// the group when the last run ended, the last socket moved into its
    /// index, and the numbering above it is lost. Those are returned to be
    /// closed, and so is every one when they do not fit; either way they
    /// leave the group first (`leave_group`). The group keeps the program
    /// it had: the caller steers it.
    pub fn from_stored(
        fds: Vec<(u32, OwnedFd)>,
        want: SocketAddr,
        backlog: i32,
    ) -> Result<TakenBack, String> {
        let below_gap = fds.iter().enumerate().take_while(|(i, (s, _))| *s == *i as u32).count();
        let fit = Backlog::new(backlog)
            .map_err(|e| e.to_string())
            .and_then(|b| Ok((b, stored_fit(&fds[..below_gap], want)?)));
        let (backlog, addr) = match fit {
            Ok(fit) => fit,
            Err(e) => {
                fds.iter().for_each(|(_, fd)| leave_group(fd.as_fd()));
                return Err(e);
            }
        };
        let mut sockets = Vec::with_capacity(below_gap);
        let mut dropped = Vec::new();
        for (slot, fd) in fds {
            if sockets.len() < below_gap {
                sockets.push(fd);
            } else {
                leave_group(fd.as_fd());
                dropped.push(slot);
            }
        }
        let family = if addr.is_ipv4() { Family::V4 } else { Family::V6 };
        Ok(TakenBack { pool: Pool { addr, family, backlog, sockets }, dropped })
    }

    /// Resets every connection waiting in socket `index`'s accept queue
    /// (accepted, then closed with SO_LINGER 0): for a socket no generation
    /// holds or will get, whose clients would otherwise wait for nothing.
    /// The socket is made non-blocking for the moment, so that accept()
    /// never blocks (should a dying process of an exited generation take
    /// a connection first): that setting belongs to the open description,
    /// which generations share, so this is only for a socket no running
    /// generation holds, and the flags are set back before one gets it.
    /// How many it reset.
    pub fn reset_queued(&self, index: u32) -> u32 {
        if self.queue_len(index).unwrap_or(0) == 0 {
            return 0;
        }
        let Some(fd) = self.socket(index) else { return 0 };
        // A copy of the fd: the same description, and the same queue.
        let Ok(listener) = fd.try_clone_to_owned().map(std::net::TcpListener::from) else {
            return 0;
        };
        let Ok(flags) = fcntl(&listener, FcntlArg::F_GETFL) else { return 0 };
        let flags = OFlag::from_bits_truncate(flags);
        if fcntl(&listener, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).is_err() {
            return 0;
        }
        let mut reset = 0;
        // Bounded by what the queue can hold.
        for _ in 0..self.backlog_len() {
            let Ok((conn, _)) = listener.accept() else { break };
            let abort = libc::linger { l_onoff: 1, l_linger: 0 };
            let _ = setsockopt(&conn, sockopt::Linger, &abort);
            reset += 1;
        }
        let _ = fcntl(&listener, FcntlArg::F_SETFL(flags));
        reset
    }

    /// Socket `index` back to blocking, as it was bound, for a generation
    /// about to get it. O_NONBLOCK belongs to the open description, which
    /// every process given the socket shares: a server that set it (most
    /// event loops do) would hand it on to the next generation given this
    /// index, and one that accepts in blocking mode would fail with EAGAIN
    /// at its first empty queue. So only for an index no running generation
    /// holds.
    pub fn set_blocking(&self, index: u32) {
        if let Some(fd) = self.socket(index) {
            set_blocking(fd);
        }
    }

    fn backlog_len(&self) -> u32 {
        i32::from(self.backlog).max(1) as u32 + 1
    }

    /// One more socket, at index `len()`, which it returns. The program in
    /// place never names it, so it gets no connection until a route does.
    /// Fails after `--user` has dropped root (the group belongs to root's
    /// uid, and a privileged port needs root): share a socket then.
    pub fn grow(&mut self) -> Result<u32, PoolError> {
        let index = self.len();
        let fd = open(self.addr, self.backlog).map_err(bind_error)?;
        self.sockets.push(fd);
        Ok(index)
    }

    pub fn len(&self) -> u32 {
        self.sockets.len() as u32
    }

    /// The bound address, with the real port where 0 was asked for.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    #[cfg(test)]
    pub fn family(&self) -> Family {
        self.family
    }

    /// Socket `index`, to dup into a generation (at fd 3). Its index never
    /// changes while the pool lives.
    pub fn socket(&self, index: u32) -> Option<BorrowedFd<'_>> {
        self.sockets.get(index as usize).map(|s| s.as_fd())
    }

    /// Replaces the group's program with `route`'s, in one setsockopt:
    /// every connection whose SYN arrives after this returns follows the
    /// new route; those already queued stay where they are.
    pub fn attach(&self, route: &Route) -> Result<(), PoolError> {
        let program = Program::build(route, self.family, self.len()).map_err(PoolError::Route)?;
        self.attach_program(&program)
    }

    fn attach_program(&self, program: &Program) -> Result<(), PoolError> {
        let filters = program.to_filters();
        let fprog = libc::sock_fprog {
            // At most BPF_MAXINSNS (4096) by construction.
            len: filters.len() as u16,
            // The kernel copies the program and never writes through this.
            filter: filters.as_ptr().cast_mut(),
        };
        // From any member: the program belongs to the group.
        setsockopt(&self.sockets[0], sockopt::AttachReusePortCbpf, &fprog)
            .map_err(|e| PoolError::Refused(e.into()))
    }

    /// How many connections wait in socket `index`'s accept queue: the
    /// handshake is done and nobody has accepted them yet. (A SYN routed
    /// here whose handshake is still under way joins the queue later.)
    pub fn queue_len(&self, index: u32) -> io::Result<u32> {
        let fd = self.socket(index).ok_or(io::ErrorKind::InvalidInput)?;
        let mut info = [0u8; 256];
        let n = sys::tcp_info(fd, &mut info)?;
        accept_queue(&info[..n]).ok_or_else(|| io::Error::other("TCP_INFO: not a listening socket"))
    }
}

/// Clears O_NONBLOCK on `fd`'s open description, which every process
/// given a copy shares: only for a socket no running generation holds.
pub fn set_blocking(fd: BorrowedFd<'_>) {
    let Ok(flags) = fcntl(fd, FcntlArg::F_GETFL) else { return };
    let flags = OFlag::from_bits_truncate(flags);
    if flags.contains(OFlag::O_NONBLOCK) {
        let _ = fcntl(fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK));
    }
}

/// `tcpi_unacked` (offset 24 of `struct tcp_info`), which on a listening
/// socket is the accept queue's length; None unless `tcpi_state` (offset
/// 0) is LISTEN, where the field means unacknowledged segments instead.
fn accept_queue(info: &[u8]) -> Option<u32> {
    let unacked = info.get(24..28)?;
    (info[0] == TCP_LISTEN).then(|| u32::from_ne_bytes(unacked.try_into().unwrap()))
}

/// A listening socket in `addr`'s group: SO_REUSEADDR as `listen.rs` sets
/// it (restarts while old connections sit in TIME_WAIT), SO_REUSEPORT to
/// join the group, IPv6 only on an IPv6 address, close-on-exec.
fn open(addr: SocketAddr, backlog: Backlog) -> nix::Result<OwnedFd> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, backlog)?;
    Ok(fd)
}

/// The address of stored sockets 0.. of one group, if each is bound to
/// one `want` accepts (the same one), listening, with SO_REUSEPORT.
fn stored_fit(fds: &[(u32, OwnedFd)], want: SocketAddr) -> Result<SocketAddr, String> {
    let mut addr = None;
    for (_, fd) in fds {
        let local = local_addr(fd.as_fd()).map_err(|e| e.to_string())?;
        let same_port = want.port() == 0 || want.port() == local.port();
        if local.ip() != want.ip() || !same_port || addr.is_some_and(|a| a != local) {
            return Err(format!("it is bound to {local}"));
        }
        let listening = nix::sys::socket::getsockopt(fd, sockopt::AcceptConn);
        let reuse = nix::sys::socket::getsockopt(fd, sockopt::ReusePort);
        if !listening.unwrap_or(false) || !reuse.unwrap_or(false) {
            return Err("it is not a listening socket of a SO_REUSEPORT group".into());
        }
        addr = Some(local);
    }
    addr.ok_or_else(|| "socket 0 of the group was not stored".into())
}

/// Take a stored socket that is not kept out of its group now. Closing
/// our copy is not enough: the service manager holds another until it
/// acts on FDSTOREREMOVE, later, and a socket that leaves the group then
/// has the group's last one moved into its index, under a pool that grew
/// (or was bound anew on the same address) meanwhile. shutdown(2) stops
/// it listening at once, whoever holds it; what waited in it is reset, as
/// closing it would.
fn leave_group(fd: BorrowedFd<'_>) {
    let _ = nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
}

fn local_addr(fd: BorrowedFd<'_>) -> nix::Result<SocketAddr> {
    let ss: SockaddrStorage = getsockname(fd.as_raw_fd())?;
    if let Some(v4) = ss.as_sockaddr_in() {
        return Ok(SocketAddr::V4((*v4).into()));
    }
    ss.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into())).ok_or(Errno::EAFNOSUPPORT)
}

#[cfg(test)]
mod tests;

/// A pool across `graceexec upgrade`: its sockets by fd number, in index
/// order. The program stays attached to the group in the kernel, so the
/// new image steers on where this one left off.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PoolOut {
    addr: SocketAddr,
    backlog: i32,
    sockets: Vec<i32>,
}

impl Pool {
    pub fn carry(&self, handed: &mut crate::carry::Handed) -> PoolOut {
        PoolOut {
            addr: self.addr,
            backlog: self.backlog.into(),
            sockets: self.sockets.iter().map(|s| handed.fd(s.as_fd())).collect(),
        }
    }

    pub fn carried_fds(p: &PoolOut) -> Vec<i32> {
        p.sockets.clone()
    }

    pub fn adopt(p: PoolOut) -> anyhow::Result<Pool> {
        let backlog = Backlog::new(p.backlog)?;
        let family = if p.addr.is_ipv4() { Family::V4 } else { Family::V6 };
        let sockets = p
            .sockets
            .into_iter()
            .map(|n| crate::carry::take_socket(n, "a steered socket"))
            .collect::<anyhow::Result<Vec<OwnedFd>>>()?;
        Ok(Pool { addr: p.addr, family, backlog, sockets })
    }
}
