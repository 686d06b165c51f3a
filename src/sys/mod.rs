//! Every `unsafe` block of graceexec, and nothing that could be safe: the
//! crate root denies `unsafe_code` everywhere but here.
//!
//! - spawn.rs: fork and exec with the socket-activation fd layout;
//! - taking ownership of an fd graceexec inherited (systemd's sockets, the
//!   watchdog's pipe), after the caller's checks on a borrow;
//! - signals by number (nix's `Signal` has no real-time signals);
//! - TCP_INFO, which nix does not wrap.

pub mod spawn;

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;

use crate::units::SigNo;

/// Take ownership of `fd`, inherited from whoever started graceexec, once
/// `check` accepts it. Until then it is only borrowed: a wrong LISTEN_FDS
/// or a stray fd 3 is never closed, so graceexec never closes an fd that
/// something else in the process uses.
pub fn claim_fd(
    fd: RawFd,
    check: impl FnOnce(BorrowedFd<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<OwnedFd> {
    if fd < 0 {
        anyhow::bail!("fd {fd} is not a file descriptor");
    }
    // SAFETY: the borrow lives only for the checks below, while the fd
    // number cannot change owner (graceexec is single-threaded here). An fd
    // that is not open makes F_GETFD fail with EBADF before anything else
    // uses the borrow.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_GETFD).map_err(|e| anyhow::anyhow!("fd {fd} is not open: {e}"))?;
    check(borrowed)?;
    // SAFETY: the fd is open, and was passed to this process for graceexec
    // (LISTEN_FDS naming this pid, or the watchdog's layout); nothing else
    // in graceexec owns it, so this becomes its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Look at fd `n`, which may not be open (an upgrade document's numbers,
/// checked before any is taken): None if it is not.
pub fn with_fd<T>(n: RawFd, look: impl FnOnce(BorrowedFd<'_>) -> T) -> Option<T> {
    if n < 0 {
        return None;
    }
    // SAFETY: as in `claim_fd`: the borrow lives only for this call, and
    // F_GETFD fails with EBADF on a number that is not open before `look`
    // could use it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(n) };
    fcntl(borrowed, FcntlArg::F_GETFD).ok()?;
    Some(look(borrowed))
}

/// Send signal number `sig` to `pid`; real-time signals included.
pub fn kill(pid: i32, sig: SigNo) -> Result<(), Errno> {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    let r = unsafe { libc::kill(pid, sig) };
    Errno::result(r).map(drop)
}

/// Whether the process has one thread: fork copies only the calling one,
/// so with others a lock they held stays locked in the child forever.
pub fn one_thread() -> bool {
    std::fs::read_dir("/proc/self/task").map_or(true, |d| d.count() == 1)
}

/// `getsockopt(fd, IPPROTO_TCP, TCP_INFO)` into `buf`: the number of bytes
/// of `struct tcp_info` the kernel filled (fewer than `buf.len()` when its
/// struct is shorter). On a listening socket, `tcpi_unacked` is the
/// accept queue's length (tcp(7) does not say so; the kernel's
/// tcp_get_info() does).
pub fn tcp_info(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut len = libc::socklen_t::try_from(buf.len())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `buf` is valid for writes of `len` bytes for the whole call,
    // and getsockopt(2) writes at most `len` bytes to it, then stores the
    // count in `len`, a live local; `fd` is an open descriptor borrowed for
    // the call. tcp_info has no alignment need here: the kernel copies bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((len as usize).min(buf.len()))
}
