//! The only `unsafe` of `steer`: system calls that neither std nor nix
//! wraps. (To move into the crate's single `sys` module.)

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::libc;

/// `getsockopt(fd, IPPROTO_TCP, TCP_INFO)` into `buf`: the number of bytes
/// of `struct tcp_info` the kernel filled (fewer than `buf.len()` when its
/// struct is shorter).
pub fn tcp_info(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = libc::socklen_t::try_from(buf.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
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
        return Err(io::Error::last_os_error());
    }
    Ok((len as usize).min(buf.len()))
}
