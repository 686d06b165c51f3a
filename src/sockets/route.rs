//! Which slots new connections and probes go to: the shares the
//! supervisor decided and the probes' source ports, made into one steering
//! program for every pool.

use std::net::SocketAddr;

use super::{Entry, Sockets, MILLION};
use crate::log;
use crate::steer::bpf::{Route, Split};
use crate::supervisor::GenId;

impl Sockets {
    /// The share of new connections each generation gets from now on.
    pub fn set_shares(&mut self, shares: &[(GenId, u32)]) {
        self.shares = shares.to_vec();
        self.attach();
    }

    pub fn share_of(&self, gen: GenId) -> u32 {
        self.shares.iter().find(|(g, _)| *g == gen).map_or(0, |(_, s)| *s)
    }

    /// Send connections from TCP source `port` to `gen`'s socket.
    pub fn route_probe(&mut self, port: u16, gen: GenId) {
        self.probes.insert(port, gen);
        self.attach();
    }

    pub fn unroute_probe(&mut self, port: u16) {
        if self.probes.remove(&port).is_some() {
            self.attach();
        }
    }

    /// Forget every probe route of `gen` (its probe stopped).
    pub fn unroute_probes_of(&mut self, gen: GenId) {
        let before = self.probes.len();
        self.probes.retain(|_, g| *g != gen);
        if self.probes.len() != before {
            self.attach();
        }
    }

    /// The steered sockets, as (position in `--listen` order, where a
    /// connection reaches it: its address, loopback for a wildcard one).
    pub fn steered_targets(&self) -> Vec<(usize, SocketAddr)> {
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if let Entry::Steered { pool, .. } = e {
                let mut to = pool.addr();
                if to.ip().is_unspecified() {
                    to.set_ip(match to {
                        SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                        SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                    });
                }
                out.push((i, to));
            }
        }
        out
    }

    /// The accept queue of `gen`'s socket at `--listen` position `at`.
    pub fn queue_of(&self, at: usize, gen: GenId) -> Option<u32> {
        let slot = self.slot_of(gen)?;
        match self.entries.get(at)? {
            Entry::Steered { pool, .. } => pool.queue_len(slot).ok(),
            Entry::Shared(_) => None,
        }
    }

    /// The route the shares and probes make, in slots. Generations without
    /// a slot (not started, gone) are left out; with nothing left, the
    /// route stays where it was.
    fn route(&self) -> Option<Route> {
        let slot = |g: &GenId| self.slots.get(g).copied();
        let routed: Vec<(u32, u32)> =
            self.shares.iter().filter_map(|(g, s)| slot(g).map(|sl| (sl, *s))).collect();
        let split = match routed.as_slice() {
            [] => return None,
            [(a, _)] => Split::All(*a),
            [(a, _), (b, share_b), ..] => {
                Split::Share { a: *a, b: *b, b_per_million: (*share_b).min(MILLION) }
            }
        };
        let probes = self.probes.iter().filter_map(|(p, g)| slot(g).map(|s| (*p, s))).collect();
        Some(Route { probes, split })
    }

    fn attach(&mut self) {
        if self.parked {
            return;
        }
        let Some(route) = self.route() else { return };
        self.routed = Some(match route.split {
            Split::All(a) => a,
            Split::Share { a, b, b_per_million } => {
                if b_per_million > MILLION / 2 {
                    b
                } else {
                    a
                }
            }
        });
        for pool in self.pools() {
            if let Err(e) = pool.attach(&route) {
                log::warn(&format!("cannot steer {}: {e}", pool.addr()));
            }
        }
        // A socket steered away from whose generation is gone.
        self.reset_stranded();
    }
}
