//! Sockets that outlive graceexec's own restart under systemd, through the
//! service manager's file descriptor store (sd_notify(3) `FDSTORE=1`;
//! systemd.io/FILE_DESCRIPTOR_STORE).
//!
//! - **Storing.** With `--fdstore` (or `$FDSTORE`, which systemd 254 and
//!   later set to the unit's `FileDescriptorStoreMax=`), graceexec sends
//!   each TCP or UDP socket it bound itself to `NOTIFY_SOCKET` as
//!   `FDSTORE=1` + `FDNAME=graceexec-P-S`: P its position in `--listen`
//!   order, S its index in the steered pool (0 for a shared socket). A
//!   steered pool is stored in index order: if the store is full, the
//!   sockets left out are the last ones, and the kernel's numbering of the
//!   group (steer/pool.rs) still matches S once they are gone.
//! - **Taking back.** At the next start, systemd passes the stored sockets
//!   in `LISTEN_FDS`, named. graceexec takes each one whose address still
//!   matches its `--listen` (the same address, or the same IP where the
//!   port was 0) instead of binding again: connections that came while it
//!   restarted wait in those sockets' queues. A stored socket that matches
//!   nothing is removed from the store (`FDSTOREREMOVE=1`) and closed.
//! - **Parking.** When graceexec stops while storing, it steers new
//!   connections to a pool socket no generation holds: they queue there,
//!   untouched by servers that are stopping, and the next start's first
//!   generation gets that socket.
//!
//! systemd 252 keeps the store across `systemctl restart` and a restart
//! by `Restart=`, and empties it when the unit stops (v254's
//! `FileDescriptorStorePreserve=` changes that).

use std::collections::BTreeMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};

use crate::listen::Listener;
use crate::log;

const PREFIX: &str = "graceexec-";

/// The name a socket is stored under.
pub fn name(pos: usize, slot: u32) -> String {
    format!("{PREFIX}{pos}-{slot}")
}

fn parse_name(name: &str) -> Option<(usize, u32)> {
    let (pos, slot) = name.strip_prefix(PREFIX)?.split_once('-')?;
    Some((pos.parse().ok()?, slot.parse().ok()?))
}

/// Whether to store: `--fdstore`, or a `$FDSTORE` above 0.
pub fn wanted(flag: bool) -> bool {
    flag || std::env::var("FDSTORE").is_ok_and(|v| v.parse::<u64>().is_ok_and(|n| n > 0))
}

/// The sockets systemd passed back from the store, by (position, index).
#[derive(Default)]
pub struct Stored {
    fds: BTreeMap<(usize, u32), OwnedFd>,
}

impl Stored {
    /// Sort what systemd passed: graceexec's own stored sockets, and the
    /// rest (a socket unit's, when `--listen` is given too), returned to
    /// be closed.
    pub fn sort(passed: Vec<Listener>) -> (Stored, Vec<Listener>) {
        let mut stored = Stored::default();
        let mut other = Vec::new();
        for l in passed {
            match parse_name(&l.name) {
                Some(key) => {
                    stored.fds.insert(key, l.fd);
                }
                None => other.push(l),
            }
        }
        (stored, other)
    }

    /// The sockets stored for `--listen` position `pos`, by index.
    pub fn take(&mut self, pos: usize) -> Vec<(u32, OwnedFd)> {
        let keys: Vec<(usize, u32)> = self.fds.keys().filter(|(p, _)| *p == pos).copied().collect();
        keys.into_iter().map(|k| (k.1, self.fds.remove(&k).expect("present"))).collect()
    }

    /// Names of those nobody took.
    pub fn left(self) -> Vec<String> {
        self.fds.into_keys().map(|(p, s)| name(p, s)).collect()
    }
}

/// Where stored sockets go: the service manager's notify socket.
pub struct Store {
    addr: UnixAddr,
    sock: std::os::unix::net::UnixDatagram,
}

impl Store {
    /// From `NOTIFY_SOCKET`; None without it.
    pub fn from_env() -> Option<Store> {
        let v = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty())?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => UnixAddr::new_abstract(name),
            None => UnixAddr::new(bytes),
        }
        .ok()?;
        let sock = std::os::unix::net::UnixDatagram::unbound().ok()?;
        // A manager that does not read must not stall graceexec.
        sock.set_nonblocking(true).ok()?;
        Some(Store { addr, sock })
    }

    /// Store `fd` as `name`.
    pub fn put(&self, fd: BorrowedFd<'_>, name: &str) {
        let msg = format!("FDSTORE=1\nFDNAME={name}");
        let fds = [fd.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        self.send(&msg, &cmsg);
    }

    /// Remove what is stored as `name`.
    pub fn remove(&self, name: &str) {
        self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), &[]);
    }

    fn send(&self, msg: &str, cmsg: &[ControlMessage<'_>]) {
        let iov = [IoSlice::new(msg.as_bytes())];
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        if let Err(e) = sendmsg(self.sock.as_raw_fd(), &iov, cmsg, flags, Some(&self.addr)) {
            log::warn(&format!("cannot reach the service manager's file descriptor store: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_not_ours() {
        assert_eq!(parse_name(&name(2, 3)), Some((2, 3)));
        assert_eq!(parse_name("tcp-8080"), None);
        assert_eq!(parse_name("graceexec-x-1"), None);
        assert!(crate::listen::valid_name(&name(12, 7)));
    }
}
