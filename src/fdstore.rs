//! Sockets that outlive graceexec's own restart under systemd, through the
//! service manager's file descriptor store (sd_notify(3) `FDSTORE=1`;
//! systemd.io/FILE_DESCRIPTOR_STORE).
//!
//! - **Storing.** With `--fdstore` (or `$FDSTORE`, which systemd 254 and
//!   later set to the unit's `FileDescriptorStoreMax=`), graceexec sends
//!   each TCP or UDP socket it bound itself to `NOTIFY_SOCKET` as
//!   `FDSTORE=1` + `FDNAME=graceexec-P-S`: P its position in `--listen`
//!   order, S its index in the steered pool (0 for a shared socket). Index
//!   0 of every address goes first, then index 1...: a store too small for
//!   every socket leaves out the highest indexes, so every address
//!   survives, and the kernel's numbering of each group (steer/pool.rs)
//!   still matches S once the others are gone.
//! - **Taking back.** At the next start, systemd passes the stored sockets
//!   in `LISTEN_FDS`, named. graceexec takes back the ones stored for each
//!   address of its `--listen`, wherever that address was in the last
//!   run's (a port 0 address: what its own position had, on its IP), in
//!   the form they were stored in, instead of binding again: connections
//!   that came while it restarted wait in those sockets' queues. An
//!   address that moved is stored again under its new position; one no
//!   longer listed is closed and removed from the store
//!   (`FDSTOREREMOVE=1`). Every pool then steers to the one index where
//!   most connections wait, which the first generation gets; what waits
//!   in any other socket (a canary's share when graceexec was killed) is
//!   reset rather than left waiting for good.
//! - **Parking.** When graceexec stops while storing, it steers new
//!   connections to a pool socket no generation holds: they queue there,
//!   untouched by servers that are stopping, and the next start's first
//!   generation gets that socket. Each generation finishes what it has
//!   first, as at a reload (supervisor/exits.rs), so that nothing is left
//!   in its socket. Stopped before any generation served (the first one
//!   still starting), it leaves new connections where the last restart's
//!   already wait for it.
//!
//! systemd 252 keeps the store across `systemctl restart` and a restart
//! by `Restart=`, and empties it when the unit stops (v254's
//! `FileDescriptorStorePreserve=` changes that).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};

use crate::listen::{self, Addr, Listener, Spec};
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

    /// The stored sockets for each of `specs`, matched by address rather
    /// than by position, so that an address added, removed or moved in
    /// `--listen` since the last run leaves the others theirs. Binding an
    /// address anew while the service manager still holds a stored pool
    /// of it would join that pool's SO_REUSEPORT group, whose numbering
    /// then shifts under the new pool as the old sockets close: every
    /// connection would go to a socket no generation accepts from. A port
    /// 0 address takes what was stored at its own position if that is on
    /// its IP and no fixed address claims it: anywhere else, it could keep
    /// open an address taken out of `--listen`.
    pub fn claim(&mut self, specs: &[Spec]) -> Vec<Option<Claimed>> {
        let mut out: Vec<Option<Claimed>> = specs.iter().map(|_| None).collect();
        let any_port = |s: &Spec| matches!(s.addr, Addr::Tcp(a) | Addr::Udp(a) if a.port() == 0);
        let positions = |fds: &BTreeMap<(usize, u32), OwnedFd>| {
            let mut p: Vec<usize> = fds.keys().map(|(p, _)| *p).collect();
            p.dedup();
            p
        };
        // Fixed addresses first, wherever they were; then port 0.
        for port_0 in [false, true] {
            for (pos, spec) in specs.iter().enumerate().filter(|(_, s)| any_port(s) == port_0) {
                let fits = |from: &usize| {
                    let first = self.fds.range((*from, 0)..(*from + 1, 0)).next();
                    first.is_some_and(|(_, fd)| listen::fits(&spec.addr, fd.as_fd()).is_ok())
                };
                let from = match port_0 {
                    false => positions(&self.fds).into_iter().find(fits),
                    true => Some(pos).filter(fits),
                };
                let Some(from) = from else { continue };
                let keys: Vec<(usize, u32)> =
                    self.fds.range((from, 0)..(from + 1, 0)).map(|(k, _)| *k).collect();
                let fds = keys.into_iter().map(|k| (k.1, self.fds.remove(&k).expect("present")));
                out[pos] = Some(Claimed { from, fds: fds.collect() });
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Names of those nobody took.
    pub fn left(self) -> Vec<String> {
        self.fds.into_keys().map(|(p, s)| name(p, s)).collect()
    }
}

/// The sockets stored for one `--listen` position of the last run.
pub struct Claimed {
    /// That position: they are stored as `graceexec-FROM-S`.
    pub from: usize,
    /// By index in the pool (0 for a shared socket), in order.
    pub fds: Vec<(u32, OwnedFd)>,
}

/// Where stored sockets go: the service manager's notify socket.
pub struct Store {
    addr: UnixAddr,
    sock: std::os::unix::net::UnixDatagram,
    /// Whether a send waits (up to PATIENCE) for room in the manager's
    /// queue: during start-up, before the loop runs.
    patient: Cell<bool>,
}

/// How long a start-up message may wait for room. A unix datagram socket
/// queues few messages (net.unix.max_dgram_qlen: 10 unless systemd raised
/// it to 512, which it cannot where /proc/sys is read-only, as in many
/// containers), and a start that takes back, removes and stores a few
/// pools sends more than that at once: without waiting, the rest would be
/// dropped, a socket left out of the store.
const PATIENCE: Duration = Duration::from_millis(250);

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
        // A manager that does not read must not stall graceexec: the loop
        // never waits (MSG_DONTWAIT), start-up at most PATIENCE.
        sock.set_write_timeout(Some(PATIENCE)).ok()?;
        Some(Store { addr, sock, patient: Cell::new(false) })
    }

    /// Whether sends wait for room in the manager's queue, as at start-up.
    pub fn set_patient(&self, patient: bool) {
        self.patient.set(patient);
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
        let mut flags = MsgFlags::MSG_NOSIGNAL;
        if !self.patient.get() {
            flags |= MsgFlags::MSG_DONTWAIT;
        }
        if let Err(e) = sendmsg(self.sock.as_raw_fd(), &iov, cmsg, flags, Some(&self.addr)) {
            // One wait in vain is enough: the rest go without.
            self.patient.set(false);
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
