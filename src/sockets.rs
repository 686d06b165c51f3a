//! The listening sockets graceexec holds, and which generation accepts
//! from which.
//!
//! Each TCP address graceexec binds itself gets a pool of sockets in one
//! SO_REUSEPORT group (steer/pool.rs); everything else is one socket that
//! every generation shares, as before steering: UDP, unix and abstract
//! sockets, sockets adopted from systemd, `--handover shared`, and a
//! kernel that refuses the steering program.
//!
//! A *slot* is one index across every pool: a generation that has slot i
//! gets socket i of each pool (and the shared sockets) at fds 3.., in
//! `--listen` order, so a server cannot tell the difference. The route
//! says which slots new connections go to; probes from a known source
//! port go to the slot of the generation they probe.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};

use crate::cli::Handover;
use crate::fdstore::{Store, Stored};
use crate::listen::{bind_failed, bind_spec, Addr, Listener, Spec};
use crate::log;
use crate::steer::pool::{Pool, PoolError};
use crate::supervisor::GenId;

/// Sockets per pool at start-up: a serving generation, a candidate, one
/// draining, and one for a crash restart while one drains. More are bound
/// when needed, while graceexec still may (before `--user` drops root).
pub const SLOTS: u32 = 4;

const MILLION: u32 = 1_000_000;

mod carry;
mod route;
mod store;
pub use carry::SocketsOut;

enum Entry {
    Shared(Listener),
    Steered { name: String, shown: String, pool: Pool },
}

pub struct Sockets {
    entries: Vec<Entry>,
    /// Which slot each running generation has.
    slots: BTreeMap<GenId, u32>,
    /// Where new connections go, as (generation, share per million).
    shares: Vec<(GenId, u32)>,
    /// Probe connections by TCP source port, to their generation's slot.
    probes: BTreeMap<u16, GenId>,
    /// The slot most new connections went to at the last attach: where a
    /// crashed generation's clients queue until its restart takes it.
    routed: Option<u32>,
    /// The service manager's file descriptor store, with `--fdstore`.
    store: Option<Store>,
    /// Stopping with a store: new connections wait in a socket no
    /// generation holds, for the next start (fdstore.rs); no more routes.
    parked: bool,
    /// Bound by graceexec (or taken back from its store), not adopted from
    /// systemd, whose NonBlocking= decides their O_NONBLOCK.
    bound_here: bool,
}

/// What a generation got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Its own socket(s).
    Own(u32),
    /// The same socket(s) as another generation.
    Shared(u32),
    /// No steered socket at all: every generation shares.
    None,
}

impl Sockets {
    /// Bind every `--listen` address: steered pools for TCP (unless
    /// `handover` is shared or the kernel refuses), single sockets else.
    pub fn bind(
        specs: &[Spec],
        backlog: i32,
        unix_mode: Option<u32>,
        handover: Handover,
        (mut stored, store): (Stored, Option<Store>),
    ) -> anyhow::Result<Sockets> {
        // Without --fdstore now, what an earlier run stored is still taken
        // back, and what is not still removed: the manager would hold it,
        // and its port, until the unit stops.
        let remover = match &store {
            None if !stored.is_empty() => Store::from_env(),
            _ => None,
        };
        let rm = store.as_ref().or(remover.as_ref());
        rm.iter().for_each(|s| s.set_patient(true));
        let mut claimed = stored.claim(specs);
        // Stored for no address given now: closed, and removed.
        for name in stored.left() {
            rm.iter().for_each(|s| s.remove(&name));
        }
        let mut entries = Vec::with_capacity(specs.len());
        let mut taken = Vec::new();
        for (pos, spec) in specs.iter().enumerate() {
            let back = claimed[pos]
                .take()
                .and_then(|c| store::take_back(pos, spec, c, backlog, handover, rm));
            if let Some(entry) = back {
                taken.push(pos);
                entries.push(entry);
                continue;
            }
            let steerable = handover == Handover::Steer && matches!(spec.addr, Addr::Tcp(_));
            let entry = match (&spec.addr, steerable) {
                (Addr::Tcp(addr), true) => match Pool::bind(*addr, backlog, SLOTS) {
                    Ok(pool) => {
                        let shown = Addr::Tcp(pool.addr()).to_string();
                        let name = spec
                            .name
                            .clone()
                            .unwrap_or_else(|| format!("tcp-{}", pool.addr().port()));
                        Entry::Steered { name, shown, pool }
                    }
                    Err(PoolError::Refused(e)) => {
                        log::warn(&format!(
                            "{}: the kernel refused the steering program ({e}); every generation shares one socket",
                            spec.addr
                        ));
                        Entry::Shared(bind_spec(spec, backlog, unix_mode)?)
                    }
                    Err(PoolError::Bind(e)) => return Err(bind_failed(&spec.addr, &e)),
                    Err(e) => anyhow::bail!("cannot bind {}: {e}", spec.addr),
                },
                _ => Entry::Shared(bind_spec(spec, backlog, unix_mode)?),
            };
            entries.push(entry);
        }
        let mut sockets = Sockets::from_entries(entries);
        if taken.iter().any(|p| matches!(sockets.entries[*p], Entry::Steered { .. })) {
            sockets.settle_taken_back(&taken);
        }
        sockets.store = store;
        for (pos, slot) in sockets.storable() {
            sockets.put(pos, slot);
        }
        sockets.store.iter().for_each(|s| s.set_patient(false));
        Ok(sockets)
    }

    /// Sockets adopted from systemd: shared, as systemd made them.
    pub fn adopted(listeners: Vec<Listener>) -> Sockets {
        let mut sockets = Sockets::from_entries(listeners.into_iter().map(Entry::Shared).collect());
        sockets.bound_here = false;
        sockets
    }

    fn from_entries(entries: Vec<Entry>) -> Sockets {
        let (slots, probes) = (BTreeMap::new(), BTreeMap::new());
        let shares = Vec::new();
        let (routed, store, parked, bound_here) = (None, None, false, true);
        Sockets { entries, slots, shares, probes, routed, store, parked, bound_here }
    }

    /// Whether any socket is steered.
    pub fn steering(&self) -> bool {
        self.pools().next().is_some()
    }

    fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Steered { pool, .. } => Some(pool),
            Entry::Shared(_) => None,
        })
    }

    fn pools_mut(&mut self) -> impl Iterator<Item = &mut Pool> {
        self.entries.iter_mut().filter_map(|e| match e {
            Entry::Steered { pool, .. } => Some(pool),
            Entry::Shared(_) => None,
        })
    }

    /// (LISTEN_FDNAMES name, address as shown) of each, in order.
    pub fn describe(&self) -> Vec<(&str, &str, bool)> {
        self.entries
            .iter()
            .map(|e| match e {
                Entry::Shared(l) => (l.name.as_str(), l.shown.as_str(), false),
                Entry::Steered { name, shown, .. } => (name.as_str(), shown.as_str(), true),
            })
            .collect()
    }

    pub fn names(&self) -> Vec<&str> {
        self.describe().into_iter().map(|(n, _, _)| n).collect()
    }

    /// The fds of the first socket of each entry, for SERVER_STARTER_PORT.
    pub fn first_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.fds(0)
    }

    /// The local ports of the steered sockets.
    pub fn steered_ports(&self) -> Vec<u16> {
        self.pools().map(|p| p.addr().port()).collect()
    }

    /// Whether a connection to `addr` reaches a steered socket (a probe of
    /// the address graceexec serves, or of loopback on a wildcard one).
    pub fn steers(&self, addr: SocketAddr) -> bool {
        self.pools().any(|p| {
            let bound = p.addr();
            bound.port() == addr.port()
                && bound.is_ipv4() == addr.is_ipv4()
                && (bound.ip() == addr.ip() || bound.ip().is_unspecified())
        })
    }

    fn len(&self) -> u32 {
        self.pools().map(Pool::len).min().unwrap_or(0)
    }

    fn users(&self, slot: u32) -> usize {
        self.slots.values().filter(|s| **s == slot).count()
    }

    /// Give generation `gen` a slot: the one new connections go to if its
    /// generation is gone (a crash restart serves what queued there), else
    /// a free one with connections queued (nothing queued is dropped), else
    /// the lowest free one, else a new one if the pools can grow; else it
    /// shares the slot new connections go to, as before steering.
    /// `alone`: no other generation runs (`unshared_blocking`).
    pub fn assign(&mut self, gen: GenId, alone: bool) -> Slot {
        if alone {
            self.unshared_blocking();
        }
        if !self.steering() {
            return Slot::None;
        }
        let free: Vec<u32> = (0..self.len()).filter(|s| self.users(*s) == 0).collect();
        let pick = self
            .routed
            .filter(|s| free.contains(s))
            .or_else(|| free.iter().copied().find(|s| self.queued(*s) > 0))
            .or_else(|| free.first().copied())
            .or_else(|| self.grow());
        if let Some(slot) = pick {
            self.slots.insert(gen, slot);
            // As bound, whatever a generation that had it before set; never
            // a socket a running generation holds (Shared below, or
            // Entry::Shared ones: every generation has them at once).
            self.pools().for_each(|p| p.set_blocking(slot));
            return Slot::Own(slot);
        }
        let shared = self.routed.unwrap_or(0);
        log::warn(&format!(
            "generation {gen}: no socket of its own left; it shares socket {shared} with the generation it replaces"
        ));
        self.slots.insert(gen, shared);
        Slot::Shared(shared)
    }

    /// No generation runs (the first start, a crash restart): the sockets
    /// every generation shares back to blocking, as graceexec bound them,
    /// for the reason `Pool::set_blocking` gives. Only now: while a
    /// generation runs, it holds them too. Not sockets adopted from
    /// systemd, whose flags follow the unit's NonBlocking=.
    fn unshared_blocking(&self) {
        if !self.bound_here {
            return;
        }
        for entry in &self.entries {
            if let Entry::Shared(l) = entry {
                crate::steer::pool::set_blocking(l.fd.as_fd());
            }
        }
    }

    fn grow(&mut self) -> Option<u32> {
        let len = self.len();
        let mut grown = None;
        for pool in self.pools_mut() {
            match pool.grow() {
                Ok(i) => grown = Some(i),
                Err(e) => {
                    log::debug(&format!("cannot add a socket to the group: {e}"));
                    return None;
                }
            }
        }
        for (pos, slot) in self.storable() {
            if slot == len {
                self.put(pos, slot);
            }
        }
        grown.filter(|i| *i == len)
    }

    /// The fds a generation with `slot` gets, in `--listen` order.
    pub fn fds(&self, slot: u32) -> Vec<BorrowedFd<'_>> {
        self.entries
            .iter()
            .map(|e| match e {
                Entry::Shared(l) => l.fd.as_fd(),
                Entry::Steered { pool, .. } => {
                    pool.socket(slot).expect("slots are bounded by the pool")
                }
            })
            .collect()
    }

    pub fn slot_of(&self, gen: GenId) -> Option<u32> {
        self.slots.get(&gen).copied()
    }

    /// Whether `gen` shares its socket with another running generation.
    pub fn sharing(&self, gen: GenId) -> bool {
        self.slot_of(gen).is_some_and(|s| self.users(s) > 1)
    }

    /// `gen` has exited: its slot is free. What is queued in it waits for
    /// the generation a crash restart brings if new connections go there;
    /// else it is reset (`reset_stranded`).
    pub fn release(&mut self, gen: GenId) {
        self.slots.remove(&gen);
        self.reset_stranded();
    }

    /// Reset what waits in a socket that no generation holds and new
    /// connections do not go to: nothing would ever accept it (a canary
    /// that crashed and was rolled back, a generation killed before it
    /// had emptied its queue), and its clients would wait until the next
    /// reload happened to take that socket, hours later maybe, or give up.
    /// Called at each exit and switch, and a while after an exit for what
    /// completes its handshake late (event_loop/drain.rs).
    pub fn reset_stranded(&self) {
        for slot in (0..self.len()).filter(|s| Some(*s) != self.routed && self.users(*s) == 0) {
            for pool in self.pools() {
                let n = pool.reset_queued(slot);
                if n > 0 {
                    log::warn(&format!(
                        "{}: {n} connection(s) waiting in socket {slot}, which no generation takes now, reset",
                        pool.addr()
                    ));
                }
            }
        }
    }

    /// Connections queued in `slot`, over every pool.
    pub fn queued(&self, slot: u32) -> u32 {
        self.pools().map(|p| p.queue_len(slot).unwrap_or(0)).sum()
    }
}
