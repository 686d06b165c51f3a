//! The policy of generations, as a pure state machine.
//!
//! `handle(now, event)` returns the actions to carry out; it never touches a
//! process, a socket or the clock, so every decision is unit-tested without
//! either. A *generation* is one start of the server. The instance is in
//! one [`Phase`], which holds the generations that matter to it (the
//! *candidate*, started and not yet ready; the *current* one, ready and
//! serving); every other generation is *draining*: it has been sent the
//! stop signal or, with steered sockets, gets it once it has nothing left
//! (`Drained`) or after `--drain-wait`; the same rules apply to it in every
//! phase. With steering, the Split phase (a canary or a ramp) and a kept
//! generation (`--keep-old`) have their own table in split.rs; `Promote`
//! and `Rollback` in any phase that table does not name are refused.
//!
//! | phase \ event | Reload | candidate ready | candidate fails¹ | current exits | Tick | Stop |
//! |---|---|---|---|---|---|---|
//! | Idle (not started) | first start serves it | — | — | — | — | exit 0 |
//! | Booting (first candidate) | merge into follow-up | → Serving; follow-up? reload | stop it; exit 1 (126/127 for exec errors) | — | candidate deadline | stop all → Stopping |
//! | Serving | check? → Reloading(checking) : spawn → Reloading | — | — | restart? → Recovering(backoff) : → Stopping with its status | — | stop all → Stopping |
//! | Reloading | merge into follow-up | current drains; → Serving (follow-up? reload) | stop it; current keeps serving; follow-up? reload | restart? → Recovering, the attempt carries on : → Stopping | check and candidate deadlines | stop all → Stopping |
//! | Recovering (nothing serves) | backoff? start now : merge | → Serving (follow-up? reload) | stop it; backoff, with the follow-up's waiters | — | backoff timer, deadlines | stop all → Stopping |
//! | Stopping | fail it | — | — | — | — | signal: SIGKILL all; control: wait too |
//!
//! Draining generations, in every phase: their exit is forgotten (in
//! Stopping, the last one's ends graceexec), and `--stop-timeout` after the
//! stop signal their process group gets SIGKILL.
//!
//! Reloads are transactions (reload.rs): a `Reload` may carry a waiter (a
//! control client), told the outcome of the reload it started, or of the
//! follow-up it was merged into, a reload that starts after it asked. With
//! `--check`, a reload first runs the check; while it runs, reloads merge;
//! its failure is the reload's outcome, and so is a check not done within
//! `--ready-timeout`. The first start and crash restarts are not checked.
//! Every reload start tells systemd RELOADING=1 and every end READY=1.
//!
//! ¹ exits before it is ready, cannot be exec'd, or is not ready within
//! `--ready-timeout`. Restart backoff: 100 ms doubling to 10 s, back to
//! 100 ms once the service had been up (one generation after another,
//! without a break) for a minute.
//!
//! The exit code after a shutdown is the status of the generation that was
//! current when it began (128+N for signal N), or of the candidate if none
//! was, or of the last one that crashed, or the forced code of a start-up
//! failure.
//!
//! Signals (signals.rs) arrive as one batch per read of the signalfd and
//! are decided here too.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::log::Level;
use crate::units::human;

mod carry;
mod exits;
mod phase;
mod reload;
pub mod signals;
mod split;
mod types;
mod view;
mod waiting;
pub use carry::Carried;
use phase::*;
pub use signals::SYNCHRONOUS;
pub use types::*;
pub use view::{ExitView, Role, View};
pub use waiting::{Suspect, Waiting};

const AUTO_READY_AFTER: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const HEALTHY: Duration = Duration::from_secs(60);
/// Shares of new connections are per million.
pub const MILLION: u32 = 1_000_000;
/// Exited generations `status` remembers.
const HISTORY: usize = 8;

pub struct Supervisor {
    policy: Policy,
    phase: Phase,
    draining: BTreeMap<GenId, Draining>,
    next_id: GenId,
    backoff: Duration,
    /// Since when some generation has been serving without a break.
    up_since: Option<Instant>,
    restarts: u32,
    /// Reloads that ended ready, and failed.
    reloads: (u64, u64),
    last_reload: Option<(Outcome, Instant)>,
    /// The status of the last generation that counts for the exit code.
    last_status: Option<Status>,
    /// The generation a promotion replaced, alive and idle (`--keep-old`).
    kept: Option<Kept>,
    history: VecDeque<ExitView>,
    out: Vec<Action>,
}

impl Supervisor {
    pub fn new(policy: Policy) -> Supervisor {
        Supervisor {
            policy,
            phase: Phase::Idle,
            draining: BTreeMap::new(),
            next_id: 1,
            backoff: BACKOFF_FIRST,
            up_since: None,
            restarts: 0,
            reloads: (0, 0),
            last_reload: None,
            last_status: None,
            kept: None,
            history: VecDeque::new(),
            out: Vec::new(),
        }
    }

    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        let next = self.step(now, phase, event);
        self.phase = match next {
            Phase::Stopping(s) if self.draining.is_empty() => {
                let code =
                    s.forced.unwrap_or_else(|| self.last_status.map_or(0, Status::exit_code));
                self.info(format!("exiting with status {code}"));
                self.out.push(Action::Exit { code, waiters: s.waiters });
                Phase::Done
            }
            p => p,
        };
        std::mem::take(&mut self.out)
    }

    /// One (phase, event) cell of the table.
    fn step(&mut self, now: Instant, phase: Phase, event: Event) -> Phase {
        use Event as E;
        use Phase as P;
        match (phase, event) {
            (P::Done, _) => P::Done,
            (p, E::Signals(batch)) => self.on_signals(now, p, batch),
            (p, E::Tick) => self.on_tick(now, p),
            // Draining generations: the same in every phase.
            (p, E::Exited { gen, pid, status }) if self.draining.contains_key(&gen) => {
                self.drained(&p, gen, pid, status);
                self.remember(gen, pid, status, now);
                p
            }
            // The kept generation: idle, and forgotten if it goes.
            (p, E::Exited { gen, pid, status })
                if self.kept.as_ref().is_some_and(|k| k.gen.id == gen) =>
            {
                self.kept = None;
                self.out.push(Action::Finish { gen });
                self.remember(gen, pid, status, now);
                self.warn(format!("the kept generation {gen} (pid {pid}) exited with {status}"));
                p
            }
            (P::Split(s), E::Exited { gen, pid, status }) if s.old.id == gen || s.new.id == gen => {
                self.out.push(Action::Finish { gen });
                self.remember(gen, pid, status, now);
                self.split_exited(s, gen, status)
            }
            (p, E::SpawnFailed { gen, .. }) if self.draining.contains_key(&gen) => {
                self.draining.remove(&gen);
                p
            }
            (p, E::Drained { gen }) => {
                self.debug(format!("generation {gen} has nothing left to serve"));
                self.note(Note::Drained { gen });
                self.signal_now(now, gen);
                p
            }
            (mut p, E::Waiting { gen, why }) => {
                if let Some(c) = p.candidate_mut().filter(|c| c.id == gen) {
                    c.waiting = Some(why);
                }
                p
            }
            (P::Idle, E::Start) => P::Booting(self.first_start(now)),
            (p, E::Reload { waiter, canary: Some(_) }) if !self.canary_possible(&p) => {
                let why = match (self.policy.steer, &p) {
                    (false, _) => "a canary needs steered sockets (TCP, --handover steer)".into(),
                    (true, P::Split(_)) => "a canary is running: promote or roll back first".into(),
                    (true, p) => {
                        format!("a canary can start only while serving, not while {}", p.name())
                    }
                };
                self.report(waiter.into_iter().collect(), Outcome::failed(None, why, None));
                p
            }
            (P::Split(s), E::Reload { waiter, .. }) => {
                let why = "a canary is running: promote or roll back first".into();
                let serving = Some(s.old.id);
                self.report(waiter.into_iter().collect(), Outcome::failed(None, why, serving));
                P::Split(s)
            }
            (P::Split(s), E::Promote { waiter }) => self.promote(now, s, waiter),
            (p, E::Promote { waiter }) => {
                let why = format!("nothing to promote: no canary while {}", p.name());
                self.answer(waiter, Verdict::Refused { why });
                p
            }
            (p, E::Rollback { waiter }) => self.rollback(now, p, waiter),
            (P::Idle, E::Reload { waiter, .. }) => {
                self.info(
                    "reload requested before the first start: the first start serves it".into(),
                );
                self.report(waiter.into_iter().collect(), self.nothing_to_reload());
                P::Idle
            }
            (P::Idle, E::Stop { waiter }) => self.shutdown(now, P::Idle, vec![waiter]),
            (P::Stopping(s), E::Reload { waiter, .. }) => {
                self.info("reload ignored: shutting down".into());
                self.report(waiter.into_iter().collect(), self.shutting_down());
                P::Stopping(s)
            }
            (P::Stopping(mut s), E::Stop { waiter }) => {
                // Unlike a second SIGTERM, a second `graceexec stop` does
                // not escalate: it waits for the same exit.
                s.waiters.push(waiter);
                P::Stopping(s)
            }
            (p, E::Stop { waiter }) => {
                self.info("stop requested through the control socket".into());
                self.shutdown(now, p, vec![waiter])
            }
            (P::Booting(a), E::Reload { waiter, .. }) => P::Booting(self.merge(a, waiter)),
            (P::Serving(cur), E::Reload { waiter, canary }) => {
                self.info("reload requested".into());
                self.note(Note::ReloadRequested { merged: false });
                let mut a = self.begin_reload(now, waiter.into_iter().collect(), false);
                a.canary = canary;
                P::Reloading(cur, a)
            }
            (P::Reloading(cur, a), E::Reload { waiter, .. }) => {
                P::Reloading(cur, self.merge(a, waiter))
            }
            (P::Recovering(Recovery::Backoff { mut waiters, .. }), E::Reload { waiter, .. }) => {
                self.info("reload requested while nothing serves: starting now".into());
                self.note(Note::ReloadRequested { merged: false });
                waiters.extend(waiter);
                P::Recovering(Recovery::Trying(self.begin_reload(now, waiters, true)))
            }
            (P::Recovering(Recovery::Trying(a)), E::Reload { waiter, .. }) => {
                P::Recovering(Recovery::Trying(self.merge(a, waiter)))
            }
            (p, E::Ready { gen, by }) => match p.candidate() {
                Some(c) if c.id == gen && self.accepts(by) => self.candidate_ready(now, p),
                _ => {
                    self.debug(format!("generation {gen}: readiness ignored"));
                    p
                }
            },
            (p, E::SpawnFailed { gen, code, message })
                if p.candidate().is_some_and(|c| c.id == gen) =>
            {
                self.candidate_failed(now, p, message, Some(code), false)
            }
            (p, E::Exited { gen, pid, status }) if p.candidate().is_some_and(|c| c.id == gen) => {
                self.out.push(Action::Finish { gen });
                self.remember(gen, pid, status, now);
                let why = format!("(pid {pid}) exited with {status} before it was ready");
                self.candidate_failed(now, p, why, None, false)
            }
            // The current generation exits within `--keep-old`: back to
            // the kept one, which is ready, at once; a reload that runs
            // carries on, now replacing the kept one.
            (P::Serving(cur), E::Exited { gen, pid, status })
                if cur.id == gen && self.kept.is_some() =>
            {
                self.out.push(Action::Finish { gen });
                self.remember(gen, pid, status, now);
                P::Serving(self.crashed_to_kept(gen, status).expect("a kept generation"))
            }
            (P::Reloading(cur, a), E::Exited { gen, pid, status })
                if cur.id == gen && self.kept.is_some() =>
            {
                self.out.push(Action::Finish { gen });
                self.remember(gen, pid, status, now);
                P::Reloading(self.crashed_to_kept(gen, status).expect("a kept generation"), a)
            }
            (p, E::Exited { gen, pid, status }) if p.current().is_some_and(|c| c.id == gen) => {
                self.out.push(Action::Finish { gen });
                self.remember(gen, pid, status, now);
                self.current_exited(now, p, pid, status)
            }
            (p, E::CheckDone { ok, why, output }) if p.checking() => {
                self.check_done(now, p, ok, why, output)
            }
            (p, event) => {
                self.debug(format!("ignored {event:?}"));
                p
            }
        }
    }

    /// Whether a generation was serving when the stop began: false when
    /// the first one, or the restart of a crashed one, was still starting,
    /// and what came meanwhile waits in its socket for nobody yet.
    pub fn stopped_while_serving(&self) -> bool {
        matches!(&self.phase, Phase::Stopping(s) if s.serving.is_some())
    }

    /// Whether `graceexec reload --canary` can start now.
    fn canary_possible(&self, p: &Phase) -> bool {
        self.policy.steer && matches!(p, Phase::Serving(_))
    }

    /// The earliest instant at which `Tick` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut times: Vec<Instant> =
            self.draining.values().filter_map(Draining::deadline).collect();
        times.extend(self.kept.as_ref().map(|k| k.until));
        match &self.phase {
            Phase::Recovering(Recovery::Backoff { at, .. }) => times.push(*at),
            Phase::Split(s) => times.extend(self.split_deadline(s)),
            p => {
                if let Some(c) = p.candidate() {
                    times.push(c.deadline);
                    times.push(c.nag_at);
                    times.extend(self.auto_ready_at(c));
                }
                if let Some(Step::Checking { deadline: Some(d), .. }) = p.attempt().map(|a| &a.step)
                {
                    times.push(*d);
                }
            }
        }
        times.into_iter().min()
    }

    fn auto_ready_at(&self, c: &Candidate) -> Option<Instant> {
        match self.policy.ready {
            ReadyPolicy::Delay(d) => Some(c.spawned_at + d),
            // Alive for a second proves nothing where acceptance can be
            // seen: a server that never accepts on its socket would be
            // declared ready and hold every connection hostage.
            ReadyPolicy::Auto if !self.policy.steer => Some(c.spawned_at + AUTO_READY_AFTER),
            _ => None,
        }
    }

    fn accepts(&self, by: ReadySource) -> bool {
        let steer = self.policy.steer;
        matches!(
            (self.policy.ready, by),
            (ReadyPolicy::Notify | ReadyPolicy::Auto, ReadySource::Notify)
                | (ReadyPolicy::Probe, ReadySource::Probe)
                | (ReadyPolicy::Accept, ReadySource::Accept)
        ) || (steer && self.policy.ready == ReadyPolicy::Auto && by == ReadySource::Accept)
    }

    fn note(&mut self, note: Note) {
        self.out.push(Action::Note(note));
    }

    fn remember(&mut self, gen: GenId, pid: i32, status: Status, now: Instant) {
        self.note(Note::Exited { gen, pid, status });
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(ExitView { id: gen, pid, status, at: now });
    }

    fn log(&mut self, level: Level, msg: String) {
        self.out.push(Action::Log { level, msg });
    }
    fn info(&mut self, msg: String) {
        self.log(Level::Info, msg)
    }
    fn warn(&mut self, msg: String) {
        self.log(Level::Warn, msg)
    }
    fn debug(&mut self, msg: String) {
        self.log(Level::Debug, msg)
    }
}

#[cfg(test)]
mod tests;
