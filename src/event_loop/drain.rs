//! Watching generations that new connections no longer go to, until each
//! has nothing left: its sockets' accept queues empty, and no connection
//! on a steered port held by any process of its group. Then the
//! supervisor hears `Drained` and sends the stop signal: a server that
//! drops what it accepted when told to stop has nothing to drop. And once
//! a generation is gone, what still reaches the socket it leaves to
//! nobody is reset (`SWEEP_EVERY`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::Runtime;
use crate::log;
use crate::steer::conns::{self, Scanner};
use crate::supervisor::{Event, GenId};

/// A SYN steered to the old socket just before the switch joins that
/// queue one round trip later, when the handshake completes, and the
/// kernel's tables cannot say which socket of the group a half-open
/// connection is for. So until this long after the switch, a generation
/// counts as drained only while no connection to the port is half open;
/// after it, half-open ones are taken to be the new generation's. (On
/// loopback a handshake takes microseconds; across a network, a round
/// trip.)
const SETTLE: Duration = Duration::from_millis(100);
/// Between looks: soon at first, when most drains end; less often for a
/// generation that holds on to long connections (a look walks the kernel's connection table).
const FIRST_LOOK: Duration = Duration::from_millis(5);
const LAST_LOOK: Duration = Duration::from_millis(100);
/// A generation's exit resets what waits in a socket it leaves to nobody
/// (sockets.rs, `reset_stranded`); but a connection whose SYN came to that
/// socket before its share ended joins the queue only when its handshake
/// completes: a round trip later, later still where a SYN-ACK is resent
/// or the socket defers accepts (TCP_DEFER_ACCEPT) until the client
/// sends. So such sockets are swept again this often, for SWEEP_FOR after
/// the last exit: one TCP_INFO per socket, and no wake-up once it ends.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
const SWEEP_FOR: Duration = Duration::from_secs(60);

pub(super) struct Watch {
    scanner: Scanner,
    since: Instant,
    next: Instant,
    every: Duration,
}

#[derive(Default)]
pub(super) struct Drains {
    watches: BTreeMap<GenId, Watch>,
    /// The next sweep of the sockets no generation takes, and the last.
    sweep: Option<(Instant, Instant)>,
}

impl Drains {
    pub(super) fn watch(&mut self, gen: GenId, now: Instant) {
        let scanner = Scanner::new();
        self.watches.insert(gen, Watch { scanner, since: now, next: now, every: FIRST_LOOK });
    }

    pub(super) fn forget(&mut self, gen: GenId) {
        self.watches.remove(&gen);
    }

    /// `gen` is gone: its socket, if no other takes it, is swept a while.
    pub(super) fn gone(&mut self, gen: GenId, now: Instant) {
        self.forget(gen);
        self.sweep = Some((now + SWEEP_EVERY, now + SWEEP_FOR));
    }

    pub(super) fn wake_at(&self) -> Option<Instant> {
        let sweep = self.sweep.map(|(next, _)| next);
        self.watches.values().map(|w| w.next).chain(sweep).min()
    }
}

impl Runtime {
    /// Look at the generations whose time has come.
    pub(super) fn check_drains(&mut self, now: Instant) {
        if let Some((next, last)) = self.drains.sweep.filter(|(next, _)| now >= *next) {
            self.io.sockets.reset_stranded();
            self.drains.sweep = (next < last).then_some((now + SWEEP_EVERY, last));
        }
        let due: Vec<GenId> =
            self.drains.watches.iter().filter(|(_, w)| now >= w.next).map(|(g, _)| *g).collect();
        for gen in due {
            if self.drained(gen, now) {
                self.drains.forget(gen);
                self.queue.push_back(Event::Drained { gen });
            } else if let Some(w) = self.drains.watches.get_mut(&gen) {
                w.next = now + w.every;
                w.every = (w.every * 2).min(LAST_LOOK);
            }
        }
    }

    fn drained(&mut self, gen: GenId, now: Instant) -> bool {
        let sockets = &self.io.sockets;
        // A generation that shares its socket with the one now serving
        // (no socket of its own was left) cannot be told apart from it:
        // it stops at once, as without steering.
        if !sockets.steering() || sockets.sharing(gen) {
            return true;
        }
        let Some(io) = self.gens.get(&gen) else { return true };
        let queued = sockets
            .steered_targets()
            .iter()
            .any(|(at, _)| sockets.queue_of(*at, gen).is_some_and(|q| q > 0));
        if queued {
            return false;
        }
        let ports = sockets.steered_ports();
        let Some(w) = self.drains.watches.get_mut(&gen) else { return true };
        let settled = now >= w.since + SETTLE;
        let idle = match w.scanner.count(io.leader, &ports) {
            Ok(n) => n == 0,
            Err(e) => {
                log::debug(&format!("generation {gen}: cannot count its connections: {e}"));
                return false;
            }
        };
        idle && (settled || conns::half_open(&ports).is_ok_and(|n| n == 0))
    }
}
