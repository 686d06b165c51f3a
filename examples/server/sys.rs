//! The only code that talks to libc directly.

use super::{Inherited, SeqCst, RTMAX_COUNT, RTMIN_COUNT, TERM, USR1_COUNT};
use std::ffi::{c_int, c_void};
use std::io;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::ptr;

// From the Linux UAPI headers; x86_64 and aarch64 share these values.
const SOL_SOCKET: c_int = 1;
const IPPROTO_TCP: c_int = 6;
const TCP_DEFER_ACCEPT: c_int = 9;
const SO_TYPE: c_int = 3;
const SO_ACCEPTCONN: c_int = 30;
const SO_DOMAIN: c_int = 39;
const SOCK_STREAM: c_int = 1;
const SOCK_DGRAM: c_int = 2;
const AF_UNIX: c_int = 1;
const AF_INET: c_int = 2;
const AF_INET6: c_int = 10;
const SIGUSR1: c_int = 10;
const SIGTERM: c_int = 15;
const SIG_IGN: usize = 1;
const SIG_ERR: usize = usize::MAX;

extern "C" {
    fn getsockopt(fd: c_int, lvl: c_int, opt: c_int, val: *mut c_void, len: *mut u32) -> c_int;
    fn setsockopt(fd: c_int, lvl: c_int, opt: c_int, val: *const c_void, len: u32) -> c_int;
    // glibc and musl both give signal() BSD semantics (SA_RESTART, the
    // handler stays installed), which spares us spelling out sigaction.
    fn signal(signum: c_int, handler: usize) -> usize;
    fn fork() -> c_int;
    // SIGRTMIN and SIGRTMAX are functions in C: the C library keeps the
    // lowest real-time signals for itself. glibc and musl both export these.
    fn __libc_current_sigrtmin() -> c_int;
    fn __libc_current_sigrtmax() -> c_int;
}

fn sockopt(fd: RawFd, name: c_int) -> Result<c_int, String> {
    let mut value: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as u32;
    let value_ptr = ptr::addr_of_mut!(value).cast();
    // SAFETY: both pointers are to live locals, and len tells the kernel
    // the real size of value, so it writes no further; neither pointer is
    // kept after the call.
    let rc = unsafe { getsockopt(fd, SOL_SOCKET, name, value_ptr, &mut len) };
    let err = io::Error::last_os_error();
    match rc {
        0 => Ok(value),
        _ => Err(format!("fd {fd}: getsockopt: {err}")),
    }
}

/// Takes ownership of one inherited fd; main calls it once per fd.
pub fn adopt(fd: RawFd) -> Result<Inherited, String> {
    let (ty, family) = (sockopt(fd, SO_TYPE)?, sockopt(fd, SO_DOMAIN)?);
    let inet = family == AF_INET || family == AF_INET6;
    if !(ty == SOCK_STREAM && (inet || family == AF_UNIX) || ty == SOCK_DGRAM && inet) {
        return Err(format!("fd {fd}: unsupported family {family} type {ty}"));
    }
    if ty == SOCK_STREAM && sockopt(fd, SO_ACCEPTCONN)? == 0 {
        return Err(format!("fd {fd} is a stream socket that is not listening"));
    }
    // SAFETY: under the LISTEN_FDS protocol fds 3.. belong to this process
    // alone, nothing else here has wrapped or will close this fd, and the
    // checks above confirmed it is an open socket of the kind we wrap it
    // as, so the new object is its one and only owner.
    let socket = unsafe {
        match (family, ty) {
            (AF_UNIX, _) => Inherited::Unix(UnixListener::from_raw_fd(fd)),
            (_, SOCK_STREAM) => Inherited::Tcp(TcpListener::from_raw_fd(fd)),
            _ => Inherited::Udp(UdpSocket::from_raw_fd(fd)),
        }
    };
    // Acceptors poll, checking TERM between accepts, so that they can stop
    // taking connections without closing the socket under a blocked accept().
    match &socket {
        Inherited::Tcp(l) => l.set_nonblocking(true),
        Inherited::Unix(l) => l.set_nonblocking(true),
        Inherited::Udp(_) => Ok(()),
    }
    .map_err(|e| format!("fd {fd}: {e}"))?;
    Ok(socket)
}

/// TCP_DEFER_ACCEPT on `l`: the kernel completes a handshake, and queues
/// the connection, only once the client has sent something (or after
/// about `secs`).
pub fn defer_accept(l: &TcpListener, secs: c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value_ptr = ptr::addr_of!(secs).cast();
    let len = std::mem::size_of::<c_int>() as u32;
    // SAFETY: the pointer is to a live local of the size len says, which
    // the kernel only reads, and is not kept after the call.
    let rc = unsafe { setsockopt(l.as_raw_fd(), IPPROTO_TCP, TCP_DEFER_ACCEPT, value_ptr, len) };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

extern "C" fn on_term(_: c_int) {
    TERM.store(true, SeqCst);
}

extern "C" fn on_usr1(_: c_int) {
    USR1_COUNT.fetch_add(1, SeqCst);
}

extern "C" fn on_rtmin(_: c_int) {
    RTMIN_COUNT.fetch_add(1, SeqCst);
}

extern "C" fn on_rtmax(_: c_int) {
    RTMAX_COUNT.fetch_add(1, SeqCst);
}

pub fn install_handlers(ignore_term: bool) -> io::Result<()> {
    let usr1 = on_usr1 as extern "C" fn(c_int) as usize;
    let on_rtmin = on_rtmin as extern "C" fn(c_int) as usize;
    let on_rtmax = on_rtmax as extern "C" fn(c_int) as usize;
    let term = match ignore_term {
        true => SIG_IGN,
        false => on_term as extern "C" fn(c_int) as usize,
    };
    // SAFETY: both only return numbers the C library fixed at start-up.
    let (rtmin, rtmax) = unsafe { (__libc_current_sigrtmin(), __libc_current_sigrtmax()) };
    for (sig, handler) in [(SIGTERM, term), (SIGUSR1, usr1), (rtmin, on_rtmin), (rtmax, on_rtmax)] {
        // SAFETY: each handler only touches lock-free atomics, which is
        // async-signal-safe, and SIG_IGN is valid for any catchable signal.
        if unsafe { signal(sig, handler) } == SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// fork(2): Ok(0) in the child, Ok(child pid) in the parent. Call it only
/// while the process has one thread, so that the child, which has only
/// the calling thread, may go on to run any code.
pub fn fork_single_threaded() -> io::Result<u32> {
    // SAFETY: with one thread there is no lock another thread could hold
    // across the fork, so both processes continue in a consistent state.
    match unsafe { fork() } {
        -1 => Err(io::Error::last_os_error()),
        pid => Ok(pid as u32),
    }
}
