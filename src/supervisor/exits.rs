//! How generations end: the stop signal and SIGKILL after the stop
//! timeout, shutdown, exits, crash restarts with backoff, and the deadlines
//! `Tick` acts on.

use std::time::{Duration, Instant};

use super::phase::{Attempt, Draining, Phase, Recovery, Stage, Step, Stopping};
use super::{
    human, Action, GenId, Note, SdState, SdStatus, Status, Supervisor, Waiter, BACKOFF_FIRST,
    BACKOFF_MAX, HEALTHY, MILLION,
};
use crate::units::signal_name;

impl Supervisor {
    /// Send generation `id` the stop signal; it drains from now on, and
    /// its group gets SIGKILL at the stop timeout.
    pub(super) fn stop(
        &mut self,
        now: Instant,
        id: GenId,
        spawned_at: Instant,
        ready_after: Option<Duration>,
    ) {
        let stage = Stage::Emptying { until: now };
        self.draining.insert(id, Draining { spawned_at, ready_after, stage });
        self.signal_now(now, id);
    }

    /// Generation `id` is replaced by a ready one. With steering, new
    /// connections already go elsewhere: it keeps serving what it has and
    /// is signalled once it has nothing left (`Drained`), or after
    /// `--drain-wait`; so a server that drops what it accepted when told
    /// to stop has nothing to drop. Without, it is signalled now.
    pub(super) fn retire(
        &mut self,
        now: Instant,
        id: GenId,
        spawned_at: Instant,
        ready_after: Option<Duration>,
    ) {
        if !self.policy.steer {
            return self.stop(now, id, spawned_at, ready_after);
        }
        let stage = Stage::Emptying { until: now + self.policy.drain_wait };
        self.draining.insert(id, Draining { spawned_at, ready_after, stage });
        self.out.push(Action::WatchDrain { gen: id });
        self.debug(format!("generation {id} steered away from; stopping it once it is idle"));
    }

    /// Send a draining generation the stop signal, once.
    pub(super) fn signal_now(&mut self, now: Instant, id: GenId) {
        let kill_at = now + self.policy.stop_timeout;
        let Some(d) = self.draining.get_mut(&id) else { return };
        if matches!(d.stage, Stage::Signalled { .. }) {
            return;
        }
        d.stage = Stage::Signalled { kill_at, killed: false };
        let signal = self.policy.stop_signal;
        self.out.push(Action::Signal { gen: id, signal });
        self.out.push(Action::Note(Note::Stopping { gen: id, signal }));
        self.info(format!("generation {id} stopping with {}", signal_name(signal)));
    }

    pub(super) fn shutdown(&mut self, now: Instant, p: Phase, waiters: Vec<Waiter>) -> Phase {
        self.begin_shutdown(now, p, waiters, None)
    }

    /// A shutdown that exits with `code` whatever the generations' status.
    pub(super) fn shutdown_forced(&mut self, now: Instant, p: Phase, code: i32) -> Phase {
        self.begin_shutdown(now, p, Vec::new(), Some(code))
    }

    fn begin_shutdown(
        &mut self,
        now: Instant,
        p: Phase,
        waiters: Vec<Waiter>,
        forced: Option<i32>,
    ) -> Phase {
        let status = SdStatus::Stopping;
        self.out.push(Action::Systemd { state: Some(SdState::Stopping), status });
        let mut failed: Vec<Waiter> = Vec::new();
        let mut final_gen = None;
        let attempt = match p {
            Phase::Serving(cur) => {
                final_gen = Some(cur.id);
                self.end(now, cur.id, cur.spawned_at, Some(cur.ready_after));
                None
            }
            Phase::Reloading(cur, a) => {
                final_gen = Some(cur.id);
                self.end(now, cur.id, cur.spawned_at, Some(cur.ready_after));
                Some(a)
            }
            Phase::Booting(a) | Phase::Recovering(Recovery::Trying(a)) => Some(a),
            Phase::Split(s) => {
                final_gen = Some(s.old.id);
                self.end(now, s.old.id, s.old.spawned_at, Some(s.old.ready_after));
                self.end(now, s.new.id, s.new.spawned_at, Some(s.new.ready_after));
                None
            }
            Phase::Recovering(Recovery::Backoff { waiters, .. }) => {
                failed.extend(waiters);
                None
            }
            Phase::Idle | Phase::Stopping(_) | Phase::Done => None,
        };
        let serving = final_gen;
        if let Some(Attempt { step, follow_up, .. }) = attempt {
            failed.extend(follow_up.into_iter().flatten());
            match step {
                Step::Checking { waiters, deadline, .. } => {
                    failed.extend(waiters);
                    if deadline.is_some() {
                        let why = "graceexec is shutting down".into();
                        self.out.push(Action::CancelCheck { why });
                    }
                }
                Step::Starting(c) => {
                    failed.extend(c.waiters);
                    final_gen = final_gen.or(Some(c.id));
                    if self.probes() {
                        self.out.push(Action::StopProbe { gen: c.id });
                    }
                    self.stop(now, c.id, c.spawned_at, None);
                }
            }
        }
        if let Some(k) = self.kept.take() {
            self.stop(now, k.gen.id, k.gen.spawned_at, Some(k.gen.ready_after));
        }
        // Those steered away from and still emptying stop now too, unless
        // the stop hands over to the next start: then they finish first.
        if !self.hands_over() {
            let emptying: Vec<GenId> = self.draining.keys().copied().collect();
            for gen in emptying {
                self.signal_now(now, gen);
            }
        }
        failed.sort_unstable();
        self.report(failed, self.shutting_down());
        Phase::Stopping(Stopping { waiters, final_gen, serving, forced, escalated: false })
    }

    /// Whether a stop hands over to the next start (`park_at_stop`, with
    /// steering): new connections wait for it in a socket of their own.
    fn hands_over(&self) -> bool {
        self.policy.steer && self.policy.park_at_stop
    }

    /// A generation that serves, at a stop: signalled now; or, when the
    /// stop hands over to the next start, once it has finished what it
    /// has (or after `--drain-wait`), as at a reload. Stopped at once, it
    /// would leave what waits in its socket behind, where the next start,
    /// which takes one socket, would not serve it (fdstore.rs).
    fn end(&mut self, now: Instant, id: GenId, spawned_at: Instant, ready_after: Option<Duration>) {
        if self.hands_over() {
            self.retire(now, id, spawned_at, ready_after);
        } else {
            self.stop(now, id, spawned_at, ready_after);
        }
    }

    /// A second stop signal: SIGKILL to every group at once.
    pub(super) fn escalate(&mut self, now: Instant, mut s: Stopping) -> Phase {
        if !s.escalated {
            s.escalated = true;
            self.warn("second stop request: killing every generation now".into());
            // The event's time: the supervisor never reads the clock.
            let kill_at = now;
            for (gen, d) in self.draining.iter_mut() {
                d.stage = Stage::Signalled { kill_at, killed: true };
                self.out.push(Action::KillGroup { gen: *gen });
            }
        }
        Phase::Stopping(s)
    }

    /// A draining generation's main process exited.
    pub(super) fn drained(&mut self, p: &Phase, gen: GenId, pid: i32, status: Status) {
        self.draining.remove(&gen);
        self.out.push(Action::Finish { gen });
        if let Phase::Stopping(s) = p {
            if s.final_gen == Some(gen) {
                self.last_status = Some(status);
            }
        }
        self.info(format!("generation {gen} (pid {pid}) exited with {status}"));
    }

    /// The current generation of `p` exited on its own.
    pub(super) fn current_exited(
        &mut self,
        now: Instant,
        p: Phase,
        pid: i32,
        status: Status,
    ) -> Phase {
        let (id, attempt) = match p {
            Phase::Serving(cur) => (cur.id, None),
            Phase::Reloading(cur, a) => (cur.id, Some(a)),
            _ => unreachable!("checked by the caller"),
        };
        self.last_status = Some(status);
        // A service that had been up for a minute, across any number of
        // reloads, was healthy: the next restart, now or after a failed
        // candidate, starts the backoff afresh.
        if self.up_since.take().is_some_and(|t| now.duration_since(t) >= HEALTHY) {
            self.backoff = BACKOFF_FIRST;
        }
        self.warn(format!("generation {id} (pid {pid}) exited unexpectedly with {status}"));
        let crashed = SdStatus::Crashed { gen: id, status };
        self.out.push(Action::Systemd { state: None, status: crashed });
        let rest = match attempt {
            Some(a) => Phase::Recovering(Recovery::Trying(a)),
            None => Phase::Idle,
        };
        if !self.policy.restart {
            return self.shutdown_forced(now, rest, status.exit_code());
        }
        match rest {
            Phase::Recovering(Recovery::Trying(a)) => {
                let what = match a.candidate() {
                    Some(c) => {
                        // Nothing else serves: new connections queue for it.
                        if self.policy.steer {
                            self.out.push(Action::Steer { shares: vec![(c.id, MILLION)] });
                        }
                        format!("generation {} is starting and will take over", c.id)
                    }
                    None => "the reload's check runs; its generation will take over".into(),
                };
                self.info(what);
                Phase::Recovering(Recovery::Trying(a))
            }
            _ => {
                let at = self.schedule_restart(now);
                Phase::Recovering(Recovery::Backoff { at, waiters: Vec::new() })
            }
        }
    }

    /// When the next restart is due, with backoff.
    pub(super) fn schedule_restart(&mut self, now: Instant) -> Instant {
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.info(format!("restarting in {}", human(delay)));
        self.out.push(Action::Note(Note::RestartScheduled { delay }));
        now + delay
    }

    pub(super) fn on_tick(&mut self, now: Instant, p: Phase) -> Phase {
        let timeout = self.policy.stop_timeout;
        let mut idle_too_long = Vec::new();
        for (gen, d) in self.draining.iter_mut() {
            match &mut d.stage {
                Stage::Emptying { until } if now >= *until => idle_too_long.push(*gen),
                Stage::Signalled { kill_at, killed } if !*killed && now >= *kill_at => {
                    *killed = true;
                    self.out.push(Action::KillGroup { gen: *gen });
                    let msg = format!(
                        "generation {gen} killed after the stop timeout ({})",
                        human(timeout)
                    );
                    self.out.push(Action::Log { level: crate::log::Level::Warn, msg });
                }
                _ => {}
            }
        }
        for gen in idle_too_long {
            let wait = human(self.policy.drain_wait);
            self.info(format!("generation {gen} still had connections after {wait}"));
            self.signal_now(now, gen);
        }
        self.kept_tick(now);
        match p {
            Phase::Split(s) => self.split_tick(now, s),
            Phase::Recovering(Recovery::Backoff { at, waiters }) if now >= at => {
                self.restarts += 1;
                let reload = !waiters.is_empty();
                let c = self.start_candidate(now, waiters, reload, true);
                Phase::Recovering(Recovery::Trying(Attempt {
                    step: Step::Starting(c),
                    follow_up: None,
                    canary: None,
                }))
            }
            p => self.attempt_deadlines(now, p),
        }
    }

    /// The check's and the candidate's deadlines.
    fn attempt_deadlines(&mut self, now: Instant, mut p: Phase) -> Phase {
        let too_long = self.check_too_long();
        let attempt = match &mut p {
            Phase::Booting(a) | Phase::Reloading(_, a) | Phase::Recovering(Recovery::Trying(a)) => {
                a
            }
            _ => return p,
        };
        match &mut attempt.step {
            Step::Checking { deadline, .. } => {
                if deadline.is_some_and(|d| now >= d) {
                    // The loop kills it and answers with CheckDone.
                    *deadline = None;
                    self.out.push(Action::CancelCheck { why: too_long });
                }
                p
            }
            Step::Starting(c) if now >= c.deadline => {
                let mut why = format!("was not ready within {}", human(self.policy.ready_timeout));
                if let Some(w) = &c.waiting {
                    why.push(' ');
                    why.push_str(&w.failure());
                }
                self.candidate_failed(now, p, why, None, true)
            }
            Step::Starting(c) if self.auto_ready_at(c).is_some_and(|t| now >= t) => {
                self.candidate_ready(now, p)
            }
            Step::Starting(c) if now >= c.nag_at => {
                let waiting = match (&c.waiting, self.policy.ready) {
                    (Some(w), _) => w.to_string(),
                    (None, super::ReadyPolicy::Delay(d)) => format!("its {} delay", human(d)),
                    (None, _) => "no READY=1 yet".into(),
                };
                let line = format!(
                    "generation {} not ready after {} ({waiting})",
                    c.id,
                    human(Duration::from_secs(
                        now.saturating_duration_since(c.spawned_at).as_secs()
                    ))
                );
                c.nag_at = now + self.policy.nag_every;
                self.info(line);
                p
            }
            Step::Starting(_) => p,
        }
    }
}
