//! The sockets and the service manager's file descriptor store
//! (fdstore.rs): taking back what the last run stored, storing what this
//! one holds, and parking new connections when graceexec stops.

use std::cmp::Reverse;
use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt};

use super::{Entry, Sockets, SLOTS};
use crate::cli::Handover;
use crate::fdstore::{self, Claimed, Store};
use crate::listen::{take_stored, Addr, Spec};
use crate::log;
use crate::steer::bpf::Route;
use crate::steer::pool::Pool;

/// The sockets stored for `spec`, at `--listen` position `pos` now, taken
/// back in the form they were stored in: a steered pool (SO_REUSEPORT) or
/// one shared socket, whatever `--handover` says now, since binding the
/// address anew beside them is what must not happen (fdstore.rs). None if
/// they do not fit. What is not taken is closed and removed from the
/// store, and so are the old names of an address that moved in
/// `--listen` (it is stored again under its new position).
pub(super) fn take_back(
    pos: usize,
    spec: &Spec,
    Claimed { from, fds }: Claimed,
    backlog: i32,
    handover: Handover,
    store: Option<&Store>,
) -> Option<Entry> {
    let remove = |slots: &[u32]| {
        for slot in slots {
            store.iter().for_each(|s| s.remove(&fdstore::name(from, *slot)));
        }
    };
    let slots: Vec<u32> = fds.iter().map(|(s, _)| *s).collect();
    let pooled = fds.first().is_some_and(|(_, fd)| getsockopt(fd, sockopt::ReusePort) == Ok(true));
    let taken = match (&spec.addr, pooled) {
        (Addr::Tcp(a), true) => Pool::from_stored(fds, *a, backlog).map(|t| {
            remove(&t.dropped);
            let (pool, n) = (t.pool, t.dropped.len());
            if n > 0 {
                log::warn(&format!(
                    "{}: {n} stored socket(s) above index {} closed: the store did not keep the ones in between",
                    spec.addr,
                    pool.len() - 1
                ));
            }
            if handover == Handover::Shared {
                log::warn(&format!("{}: stored as a steered pool, which it stays until graceexec is stopped and started (--handover shared applies then)", spec.addr));
            }
            let shown = Addr::Tcp(pool.addr()).to_string();
            let name = spec.name.clone().unwrap_or_else(|| format!("tcp-{}", pool.addr().port()));
            Entry::Steered { name, shown, pool }
        }),
        (Addr::Tcp(_) | Addr::Udp(_), false) if fds.len() == 1 => {
            let fd = fds.into_iter().next().expect("one").1;
            take_stored(spec, fd).map(|l| {
                if handover == Handover::Steer && matches!(spec.addr, Addr::Tcp(_)) {
                    log::warn(&format!("{}: stored as one socket, which every generation shares until graceexec is stopped and started", spec.addr));
                }
                Entry::Shared(l)
            })
        }
        _ => Err(format!("{} sockets, not one", fds.len())),
    };
    match taken {
        Ok(entry) => {
            if from != pos {
                remove(&slots);
            }
            log::info(&format!("{}: taken back from the file descriptor store", spec.addr));
            Some(entry)
        }
        Err(why) => {
            log::warn(&format!(
                "{}: the stored socket does not fit ({why}); binding anew",
                spec.addr
            ));
            remove(&slots);
            None
        }
    }
}

impl Sockets {
    /// After pools were taken back: each one grown back to SLOTS while
    /// graceexec still may (a store that kept fewer), then every pool
    /// steered to the one slot where most connections wait (the one parked
    /// at the last stop, or the larger share of a split when graceexec was
    /// killed), which the first generation gets: a generation has the
    /// same slot in every pool. Whatever waits in another slot is reset: no
    /// generation would ever accept it, and its clients would wait for an
    /// answer that never comes.
    pub(super) fn settle_taken_back(&mut self, taken: &[usize]) {
        for pos in taken {
            if let Some(Entry::Steered { pool, .. }) = self.entries.get_mut(*pos) {
                while pool.len() < SLOTS {
                    if let Err(e) = pool.grow() {
                        log::debug(&format!("cannot add a socket to the group: {e}"));
                        break;
                    }
                }
            }
        }
        let routed = (0..self.len()).max_by_key(|s| (self.queued(*s), Reverse(*s))).unwrap_or(0);
        for pool in self.pools() {
            if let Err(e) = pool.attach(&Route::all(routed)) {
                log::warn(&format!("cannot steer {}: {e}", pool.addr()));
            }
        }
        self.routed = Some(routed);
        self.reset_stranded();
    }

    /// (position, index) of every socket the store takes (TCP and UDP):
    /// index 0 of every address first, then index 1..., so that a store
    /// too small for every pool (`FileDescriptorStoreMax=`) still keeps
    /// every address, and the low indexes that `park` and a start use.
    pub(super) fn storable(&self) -> Vec<(usize, u32)> {
        let most = self.pools().map(Pool::len).max().unwrap_or(1);
        let mut out = Vec::new();
        for slot in 0..most {
            for (pos, e) in self.entries.iter().enumerate() {
                match e {
                    Entry::Steered { pool, .. } if slot < pool.len() => out.push((pos, slot)),
                    Entry::Shared(l) if slot == 0 && l.is_inet() => out.push((pos, 0)),
                    _ => {}
                }
            }
        }
        out
    }

    pub(super) fn put(&self, pos: usize, slot: u32) {
        let Some(store) = &self.store else { return };
        let fd = match &self.entries[pos] {
            Entry::Steered { pool, .. } => pool.socket(slot),
            Entry::Shared(l) => Some(l.fd.as_fd()),
        };
        if let Some(fd) = fd {
            store.put(fd, &fdstore::name(pos, slot));
        }
    }

    /// graceexec stops while storing: new connections go to a socket no
    /// generation holds, and stay there for the next start; or, when no
    /// generation was `serving` yet, on to where they already wait (for
    /// the first generation, or a crashed one's restart): the next start
    /// serves one socket. False if no socket is free.
    pub fn park(&mut self, serving: bool) -> bool {
        if self.store.is_none() {
            return false;
        }
        let waiting = self.routed.filter(|r| !serving || self.users(*r) == 0);
        let free = || (0..self.len()).find(|s| self.users(*s) == 0);
        let Some(slot) = waiting.or_else(free) else { return false };
        for pool in self.pools() {
            if let Err(e) = pool.attach(&Route::all(slot)) {
                log::warn(&format!("cannot steer {}: {e}", pool.addr()));
            }
        }
        log::info(&format!("new connections wait in socket {slot} for the next start"));
        self.routed = Some(slot);
        self.parked = true;
        true
    }
}
