//! One test per cell of the table in the module docs (cells that behave the
//! same in every state share a test that loops over the states), then the
//! rules around it. The clock is fake: `base` plus milliseconds. The harness
//! keeps Log actions apart, so tests compare all the other actions exactly.

use super::*;

mod carry;
mod reload;
mod rules;
mod split;
mod steer;
mod table;
use nix::sys::signal::Signal::{self, SIGTERM, SIGUSR1};
use ReadyPolicy::{Accept, Auto, Delay, Notify, Probe};
use Status::{Code, Signal as Killed};

/// Generation `gen` always runs as pid 100+gen.
pub(super) fn pid(gen: GenId) -> i32 {
    100 + gen as i32
}
pub(super) fn sp(gen: GenId) -> Action {
    Action::Spawn { gen }
}
pub(super) fn sig(gen: GenId, signal: Signal) -> Action {
    Action::Signal { gen, signal: signal as i32 }
}
pub(super) fn term(gen: GenId) -> Action {
    sig(gen, SIGTERM)
}
pub(super) fn usr1(gen: GenId) -> Action {
    sig(gen, SIGUSR1)
}
pub(super) fn kg(gen: GenId) -> Action {
    Action::KillGroup { gen }
}
pub(super) fn fin(gen: GenId) -> Action {
    Action::Finish { gen }
}
pub(super) fn ex(code: i32) -> Action {
    Action::Exit { code, waiters: vec![] }
}
/// What an exit looks like: the group killed, the generation forgotten.
pub(super) fn gone(gen: GenId) -> Vec<Action> {
    vec![fin(gen)]
}
pub(super) fn sigs(mut a: Vec<Action>) -> Vec<Action> {
    a.retain(|x| matches!(x, Action::Signal { .. }));
    a
}

pub(super) struct H {
    sup: Supervisor,
    base: Instant,
    now: Instant,
    logs: Vec<Action>,
    /// Report and Systemd actions of the last event.
    reports: Vec<Action>,
}

impl H {
    /// Not started yet.
    pub(super) fn idle(ready: ReadyPolicy, restart: bool) -> H {
        let (ready_timeout, stop_timeout) = (Duration::from_secs(30), Duration::from_secs(5));
        let stop_signal = SIGTERM as i32;
        let (steer, drain_wait) = (false, Duration::from_secs(5));
        let policy = Policy {
            ready,
            ready_timeout,
            stop_timeout,
            stop_signal,
            restart,
            check: false,
            steer,
            drain_wait,
            park_at_stop: false,
            keep_old: Duration::ZERO,
            promote_after: None,
            ramp: None,
            // Out of the way of the deadlines the table's tests check.
            nag_every: Duration::from_secs(3600),
        };
        let (sup, base) = (Supervisor::new(policy), Instant::now());
        H { sup, base, now: base, logs: vec![], reports: vec![] }
    }
    /// Started: Spawn { gen: 1 } is out at 0 s.
    pub(super) fn new(ready: ReadyPolicy, restart: bool) -> H {
        let mut h = H::idle(ready, restart);
        let mut first = vec![sp(1)];
        if ready == Probe {
            first.push(Action::StartProbe { gen: 1 });
        }
        assert_eq!(h.ev(Event::Start), first);
        h
    }
    /// Booting: generation 1 spawned at 0 s.
    pub(super) fn booting(ready: ReadyPolicy) -> H {
        H::new(ready, true)
    }
    /// Serving: generation 1 ready at 0 s.
    pub(super) fn serving(restart: bool) -> H {
        let mut h = H::new(Notify, restart);
        assert_eq!(h.ready(1), vec![]);
        h
    }
    /// Reloading: 1 current, candidate 2 spawned at 1 s.
    pub(super) fn reloading(restart: bool) -> H {
        let mut h = H::serving(restart);
        assert_eq!(h.at(1000).reload(), vec![sp(2)]);
        h
    }
    /// Serving: 2 current since 2 s, 1 old (stop deadline 7 s).
    pub(super) fn replaced() -> H {
        let mut h = H::reloading(true);
        assert_eq!(h.at(2000).ready(2), vec![term(1)]);
        h
    }
    /// Reloading: 2 current, 1 old (stop deadline 7 s), candidate 3 spawned at 3 s.
    pub(super) fn reloading_with_old() -> H {
        let mut h = H::replaced();
        assert_eq!(h.at(3000).reload(), vec![sp(3)]);
        h
    }
    /// Recovering: 1 crashed at 5 s, restart timer at 5.1 s.
    pub(super) fn recovering() -> H {
        let mut h = H::serving(true);
        assert_eq!(h.at(5000).exited(1, Code(1)), gone(1));
        h
    }
    /// Recovering: the timer spawned candidate 2 at 5.1 s.
    pub(super) fn recovering_candidate() -> H {
        let mut h = H::recovering();
        assert_eq!(h.tick(5100), vec![sp(2)]);
        h
    }
    pub(super) fn at(&mut self, ms: u64) -> &mut H {
        let t = self.base + Duration::from_millis(ms);
        assert!(t >= self.now, "the fake clock only moves forward");
        self.now = t;
        self
    }
    pub(super) fn deadline(&self) -> Option<u64> {
        let ms = |t: Instant| (t - self.base).as_millis() as u64;
        self.sup.next_deadline().map(ms)
    }
    pub(super) fn ev(&mut self, e: Event) -> Vec<Action> {
        let out = self.sup.handle(self.now, e).into_iter();
        let (logs, acts): (Vec<_>, Vec<_>) =
            out.partition(|a| matches!(a, Action::Log { .. } | Action::Note(_)));
        self.logs = logs;
        let (reports, acts) = acts.into_iter().partition(|a| {
            matches!(a, Action::Report { .. } | Action::Systemd { .. } | Action::Answer { .. })
        });
        self.reports = reports;
        acts
    }
    /// The messages the last event logged at `level`.
    pub(super) fn logged(&self, level: Level) -> Vec<&str> {
        let mut v = vec![];
        for a in &self.logs {
            match a {
                Action::Log { level: l, msg } if *l == level => v.push(msg.as_str()),
                _ => {}
            }
        }
        v
    }
    pub(super) fn tick(&mut self, ms: u64) -> Vec<Action> {
        self.at(ms).ev(Event::Tick)
    }
    /// A reload asked by control client `w`, who waits for the outcome.
    pub(super) fn ask(&mut self, w: Waiter) -> Vec<Action> {
        self.ev(Event::Reload { waiter: Some(w), canary: None })
    }
    pub(super) fn reload(&mut self) -> Vec<Action> {
        self.ev(Event::Reload { waiter: None, canary: None })
    }
    /// SIGTERM to graceexec.
    pub(super) fn shutdown(&mut self) -> Vec<Action> {
        self.ev(Event::Signals(vec![SIGTERM as i32]))
    }
    /// `graceexec stop` from control client `w`.
    pub(super) fn stop(&mut self, w: Waiter) -> Vec<Action> {
        self.ev(Event::Stop { waiter: w })
    }
    /// SIGUSR1 to graceexec, for the serving generation.
    pub(super) fn forward(&mut self) -> Vec<Action> {
        self.ev(Event::Signals(vec![SIGUSR1 as i32]))
    }
    pub(super) fn spawn_failed(&mut self, gen: GenId, code: i32) -> Vec<Action> {
        let message = "cannot exec".into();
        self.ev(Event::SpawnFailed { gen, code, message })
    }
    pub(super) fn ready(&mut self, gen: GenId) -> Vec<Action> {
        let by = ReadySource::Notify;
        self.ev(Event::Ready { gen, by })
    }
    pub(super) fn probed(&mut self, gen: GenId) -> Vec<Action> {
        let by = ReadySource::Probe;
        self.ev(Event::Ready { gen, by })
    }
    pub(super) fn exited(&mut self, gen: GenId, status: Status) -> Vec<Action> {
        let pid = pid(gen);
        self.ev(Event::Exited { gen, pid, status })
    }
}
