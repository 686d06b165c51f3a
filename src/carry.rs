//! What crosses `graceexec upgrade` besides the supervisor's state: open
//! file descriptions, by number. Before the exec each is made inheritable
//! (FD_CLOEXEC cleared; set again if the exec fails); the new image takes
//! each back by its number, checking it is what the document says.
//!
//! Each module that owns such an fd writes its own `*Out` (plain data, in
//! the upgrade document) and takes it back; this module holds what they
//! share.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;

use anyhow::{bail, Result};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use serde::{Deserialize, Serialize};

/// The fds an export hands over, to make inheritable before the exec.
#[derive(Default)]
pub struct Handed {
    fds: Vec<RawFd>,
}

impl Handed {
    /// Record `fd` as handed over; its number, for the document.
    pub fn fd(&mut self, fd: BorrowedFd<'_>) -> RawFd {
        let n = fd.as_raw_fd();
        self.fds.push(n);
        n
    }

    pub fn fds(&self) -> &[RawFd] {
        &self.fds
    }
}

/// Clear or set FD_CLOEXEC on every handed fd.
pub fn inheritable(fds: &[RawFd], on: bool) -> Result<()> {
    for &n in fds {
        // The fds are owned by the running image; the borrow lives for
        // these two calls only, and a number that is not open is an error,
        // not a borrow of nothing.
        let set = crate::sys::with_fd(n, |fd| -> Result<()> {
            let mut flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD)?);
            flags.set(FdFlag::FD_CLOEXEC, !on);
            fcntl(fd, FcntlArg::F_SETFD(flags))?;
            Ok(())
        });
        set.unwrap_or_else(|| bail!("fd {n} is not open"))?;
    }
    Ok(())
}

/// Take fd `n` back in the new image: it must be open and of kind `mode`
/// (S_IFSOCK, S_IFIFO...); it is made close-on-exec again.
pub fn take(n: RawFd, mode: u32, what: &str) -> Result<OwnedFd> {
    crate::sys::claim_fd(n, |b| {
        let stat = nix::sys::stat::fstat(b)?;
        if stat.st_mode & nix::libc::S_IFMT != mode {
            bail!("fd {n} ({what}) is not what the upgrade document says");
        }
        fcntl(b, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        Ok(())
    })
}

pub fn take_socket(n: RawFd, what: &str) -> Result<OwnedFd> {
    take(n, nix::libc::S_IFSOCK, what)
}

pub fn take_pipe(n: RawFd, what: &str) -> Result<OwnedFd> {
    take(n, nix::libc::S_IFIFO, what)
}

/// A socket file's identity, so that only ours is ever removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOut {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
}

/// Whether fd `n` is open and of kind `mode` (S_IFSOCK, S_IFIFO...), for
/// the checks before anything is taken.
pub fn is_kind(n: RawFd, mode: u32) -> bool {
    crate::sys::with_fd(n, |b| {
        nix::sys::stat::fstat(b).is_ok_and(|s| s.st_mode & nix::libc::S_IFMT == mode)
    })
    .unwrap_or(false)
}

/// The whole content of the regular file (memfd) at fd `n`, read without
/// taking it or moving its offset.
pub fn read_all(n: RawFd) -> Result<Vec<u8>> {
    let read = crate::sys::with_fd(n, |b| -> Result<Vec<u8>> {
        let len = nix::sys::stat::fstat(b)?.st_size as usize;
        let mut bytes = vec![0; len];
        let mut done = 0;
        while done < len {
            match nix::sys::uio::pread(b, &mut bytes[done..], done as i64)? {
                0 => bail!("the file ended early"),
                k => done += k,
            }
        }
        Ok(bytes)
    });
    read.unwrap_or_else(|| bail!("fd {n} is not open"))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    fn cloexec(fd: BorrowedFd<'_>) -> bool {
        FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap())
            .contains(FdFlag::FD_CLOEXEC)
    }

    #[test]
    fn inheritable_toggles_close_on_exec_and_refuses_a_number_that_is_not_open() {
        let (read, _write) = nix::unistd::pipe().unwrap();
        inheritable(&[read.as_raw_fd()], false).unwrap();
        assert!(cloexec(read.as_fd()));
        inheritable(&[read.as_raw_fd()], true).unwrap();
        assert!(!cloexec(read.as_fd()));
        // An fd number far above anything this test process opens.
        let err = inheritable(&[1_000_000], true).unwrap_err();
        assert_eq!(err.to_string(), "fd 1000000 is not open");
    }
}
