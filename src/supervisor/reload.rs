//! Getting a new generation ready: the first start, reloads as
//! transactions (who asked, what they are told, what systemd is told), the
//! `--check` step, and a candidate's success or failure.

use std::time::Instant;

use super::phase::{Attempt, Candidate, Current, Phase, Recovery, Step};
use super::{
    human, Action, GenId, Note, Outcome, ReadyPolicy, SdState, SdStatus, Supervisor, Waiter,
    MILLION,
};
use crate::log::Level;

/// Which phase an attempt belongs to, with what else that phase holds.
enum Holder {
    Booting,
    Reloading(Current),
    Recovering,
}

fn split(p: Phase) -> (Holder, Attempt) {
    match p {
        Phase::Booting(a) => (Holder::Booting, a),
        Phase::Reloading(c, a) => (Holder::Reloading(c), a),
        Phase::Recovering(Recovery::Trying(a)) => (Holder::Recovering, a),
        _ => unreachable!("only phases with an attempt are split"),
    }
}

fn join(h: Holder, a: Attempt) -> Phase {
    match h {
        Holder::Booting => Phase::Booting(a),
        Holder::Reloading(c) => Phase::Reloading(c, a),
        Holder::Recovering => Phase::Recovering(Recovery::Trying(a)),
    }
}

impl Supervisor {
    pub(super) fn first_start(&mut self, now: Instant) -> Attempt {
        let c = self.start_candidate(now, Vec::new(), false, true);
        Attempt { step: Step::Starting(c), follow_up: None, canary: None }
    }

    /// Start a new generation. `alone`: nothing else serves, so new
    /// connections go to it at once and queue until it accepts.
    pub(super) fn start_candidate(
        &mut self,
        now: Instant,
        waiters: Vec<Waiter>,
        reload: bool,
        alone: bool,
    ) -> Candidate {
        let id = self.next_id;
        self.next_id += 1;
        self.out.push(Action::Spawn { gen: id });
        if alone && self.policy.steer {
            self.out.push(Action::Steer { shares: vec![(id, MILLION)] });
        }
        if self.probes() {
            self.out.push(Action::StartProbe { gen: id });
        }
        let deadline = now + self.policy.ready_timeout;
        let nag_at = now + self.policy.nag_every;
        Candidate { id, waiting: None, nag_at, spawned_at: now, deadline, waiters, reload }
    }

    /// Whether readiness needs the loop's probe: tcp, http, exec, accept.
    pub(super) fn probes(&self) -> bool {
        match self.policy.ready {
            ReadyPolicy::Probe | ReadyPolicy::Accept => true,
            ReadyPolicy::Auto => self.policy.steer,
            ReadyPolicy::Notify | ReadyPolicy::Delay(_) => false,
        }
    }

    /// A reload begins: the check if there is one, else the candidate.
    /// `alone`: nothing serves meanwhile (a reload while recovering).
    pub(super) fn begin_reload(
        &mut self,
        now: Instant,
        waiters: Vec<Waiter>,
        alone: bool,
    ) -> Attempt {
        let gen = self.next_id;
        self.note(Note::ReloadStarted { gen });
        let status = SdStatus::Reloading { gen };
        self.out.push(Action::Systemd { state: Some(SdState::Reloading), status });
        let step = if self.policy.check {
            self.out.push(Action::RunCheck { gen });
            Step::Checking { gen, waiters, deadline: Some(now + self.policy.ready_timeout) }
        } else {
            Step::Starting(self.start_candidate(now, waiters, true, alone))
        };
        Attempt { step, follow_up: None, canary: None }
    }

    /// A request while an attempt runs: one follow-up reload for all such.
    pub(super) fn merge(&mut self, mut a: Attempt, waiter: Option<Waiter>) -> Attempt {
        let what = match &a.step {
            Step::Starting(c) => format!("generation {} is starting", c.id),
            Step::Checking { gen, .. } => format!("the check before generation {gen} runs"),
        };
        self.info(format!("reload requested while {what}; merged into one follow-up reload"));
        self.note(Note::ReloadRequested { merged: true });
        a.follow_up.get_or_insert_with(Vec::new).extend(waiter);
        a
    }

    fn follow_up(&mut self, now: Instant, h: Holder, waiters: Vec<Waiter>) -> Phase {
        self.info("starting the follow-up reload".into());
        let alone = !matches!(h, Holder::Reloading(_));
        let a = self.begin_reload(now, waiters, alone);
        join(h, a)
    }

    pub(super) fn candidate_ready(&mut self, now: Instant, p: Phase) -> Phase {
        let (h, Attempt { step, follow_up, canary }) = split(p);
        let Step::Starting(c) = step else { unreachable!("checked by the caller") };
        let took = now.saturating_duration_since(c.spawned_at);
        self.info(format!("generation {} ready after {} ms", c.id, took.as_millis()));
        self.note(Note::Ready { gen: c.id, took });
        if self.probes() {
            self.out.push(Action::StopProbe { gen: c.id });
        }
        let first = matches!(h, Holder::Booting);
        self.up_since.get_or_insert(now);
        let cur = Current { id: c.id, spawned_at: c.spawned_at, ready_after: took };
        let share = canary.filter(|_| matches!(h, Holder::Reloading(_)));
        let outcome = Outcome::Ready { gen: c.id, took, share };
        let (waiters, mut systemd) = match c.reload {
            true => (c.waiters, self.end_reload(now, Some(cur.id), outcome.clone())),
            false => {
                let state = first.then_some(SdState::Ready);
                let status = SdStatus::Serving { gen: c.id, failed: None };
                (Vec::new(), Action::Systemd { state, status })
            }
        };
        // The switch: one setsockopt, and every new connection (or the
        // canary's share) goes to the new generation.
        let next = match h {
            Holder::Reloading(old) => self.hand_over(now, old, cur, share),
            _ => Phase::Serving(cur),
        };
        // Only then the answers, to `graceexec reload` and to the service
        // manager (READY=1 ends `systemctl reload` under Type=notify-reload):
        // a client that connects as soon as either returns must reach the
        // new generation, not the old one.
        if let (Phase::Split(s), Action::Systemd { status, .. }) = (&next, &mut systemd) {
            *status = SdStatus::Split { old: s.old.id, new: s.new.id, share: s.share };
        }
        self.out.push(systemd);
        self.report(waiters, outcome);
        match (next, follow_up) {
            (Phase::Serving(cur), Some(w)) => self.follow_up(now, Holder::Reloading(cur), w),
            (next, Some(w)) => {
                let why = "a canary is running: promote or roll back first".into();
                let serving = next.current().map(|c| c.id);
                self.report(w, Outcome::failed(None, why, serving));
                next
            }
            (next, None) => next,
        }
    }

    /// The candidate of `p` failed: `why` follows "generation N"; `running`
    /// when it still runs and must be stopped (a ready timeout).
    pub(super) fn candidate_failed(
        &mut self,
        now: Instant,
        p: Phase,
        why: String,
        code: Option<i32>,
        running: bool,
    ) -> Phase {
        let (h, Attempt { step, follow_up, .. }) = split(p);
        let Step::Starting(c) = step else { unreachable!("checked by the caller") };
        if running {
            if self.probes() {
                self.out.push(Action::StopProbe { gen: c.id });
            }
            self.stop(now, c.id, c.spawned_at, None);
        }
        let serving = match &h {
            Holder::Reloading(cur) => Some(cur.id),
            _ => None,
        };
        if c.reload {
            let outcome =
                Outcome::failed(Some(c.id), format!("generation {} {why}", c.id), serving);
            self.finish_reload(now, serving, c.waiters, outcome);
        }
        match h {
            Holder::Booting => {
                self.log(Level::Error, format!("generation {} {why}; giving up", c.id));
                let why = format!("the first generation {why}; graceexec gave up");
                self.report(follow_up.unwrap_or_default(), Outcome::failed(Some(c.id), why, None));
                self.shutdown_forced(now, Phase::Idle, code.unwrap_or(1))
            }
            Holder::Reloading(cur) => {
                self.warn(format!(
                    "reload failed: generation {} {why}; generation {} keeps serving",
                    c.id, cur.id
                ));
                match follow_up {
                    Some(w) => self.follow_up(now, Holder::Reloading(cur), w),
                    None => Phase::Serving(cur),
                }
            }
            Holder::Recovering => {
                // The follow-up's waiters ride the restart: a start after
                // they asked, whose outcome they get.
                self.warn(format!("generation {} {why}", c.id));
                let at = self.schedule_restart(now);
                Phase::Recovering(Recovery::Backoff { at, waiters: follow_up.unwrap_or_default() })
            }
        }
    }

    pub(super) fn check_done(
        &mut self,
        now: Instant,
        p: Phase,
        ok: bool,
        why: String,
        output: Vec<String>,
    ) -> Phase {
        let (h, Attempt { step, follow_up, canary }) = split(p);
        let Step::Checking { waiters, .. } = step else { unreachable!("checked by the caller") };
        if ok {
            let alone = !matches!(h, Holder::Reloading(_));
            let c = self.start_candidate(now, waiters, true, alone);
            return join(h, Attempt { step: Step::Starting(c), follow_up, canary });
        }
        let serving = match &h {
            Holder::Reloading(cur) => Some(cur.id),
            _ => None,
        };
        match serving {
            Some(cur) => self.warn(format!("reload failed: {why}; generation {cur} keeps serving")),
            None => self.warn(format!("reload failed: {why}")),
        }
        let outcome = Outcome::Failed { gen: None, why, serving, output };
        self.finish_reload(now, serving, waiters, outcome);
        match (h, follow_up) {
            (h, Some(w)) => self.follow_up(now, h, w),
            (Holder::Reloading(cur), None) => Phase::Serving(cur),
            (_, None) => {
                let at = self.schedule_restart(now);
                Phase::Recovering(Recovery::Backoff { at, waiters: Vec::new() })
            }
        }
    }

    /// A reload ended: remember it, answer its waiters, and end the
    /// service manager's reload with READY=1 (sd_notify(3): RELOADING=1
    /// must be followed by READY=1 once the reload is complete, whether it
    /// worked or not).
    pub(super) fn finish_reload(
        &mut self,
        now: Instant,
        serving: Option<GenId>,
        waiters: Vec<Waiter>,
        outcome: Outcome,
    ) {
        let systemd = self.end_reload(now, serving, outcome.clone());
        self.out.push(systemd);
        self.report(waiters, outcome);
    }

    /// A reload ended; the caller answers its waiters and pushes the
    /// returned READY=1 for the service manager.
    fn end_reload(&mut self, now: Instant, serving: Option<GenId>, outcome: Outcome) -> Action {
        self.last_reload = Some((outcome.clone(), now));
        match &outcome {
            Outcome::Ready { gen, took, .. } => {
                self.reloads.0 += 1;
                self.note(Note::ReloadReady { gen: *gen, took: *took });
            }
            Outcome::Failed { gen, why, .. } => {
                self.reloads.1 += 1;
                self.note(Note::ReloadFailed { gen: *gen, why: why.clone() });
            }
        }
        let failed = match &outcome {
            Outcome::Failed { why, .. } => Some(why.clone()),
            Outcome::Ready { .. } => None,
        };
        let status = match serving {
            Some(gen) => SdStatus::Serving { gen, failed },
            None => SdStatus::NotServing { failed },
        };
        Action::Systemd { state: Some(SdState::Ready), status }
    }

    pub(super) fn report(&mut self, waiters: Vec<Waiter>, outcome: Outcome) {
        if !waiters.is_empty() {
            self.out.push(Action::Report { waiters, outcome });
        }
    }

    pub(super) fn shutting_down(&self) -> Outcome {
        Outcome::failed(None, "graceexec is shutting down".into(), None)
    }

    pub(super) fn nothing_to_reload(&self) -> Outcome {
        Outcome::failed(None, "graceexec has not started its first generation yet".into(), None)
    }

    /// The reason a check that ran too long fails the reload.
    pub(super) fn check_too_long(&self) -> String {
        format!("the check did not finish within {}", human(self.policy.ready_timeout))
    }
}
