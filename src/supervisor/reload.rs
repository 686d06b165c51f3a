//! Reloads as transactions: who asked, what they are told, what the service
//! manager is told, and the view `graceexec status` shows.

use std::time::{Duration, Instant};

use super::{Action, GenId, Outcome, Role, SdState, Supervisor, Waiter};

/// One generation as `graceexec status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenView {
    pub id: GenId,
    pub pid: Option<i32>,
    /// starting, ready or draining.
    pub state: &'static str,
    pub age: Duration,
    pub ready_after: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// starting, serving, reloading, recovering or stopping.
    pub state: &'static str,
    pub gens: Vec<GenView>,
    /// The last reload's outcome and how long ago it came.
    pub last_reload: Option<(Outcome, Duration)>,
    pub restarts: u32,
}

impl Supervisor {
    pub(super) fn on_reload(&mut self, now: Instant, waiter: Option<Waiter>) {
        if self.shutting_down {
            self.info("reload ignored: shutting down".into());
            let failure = Outcome::Failed {
                gen: None,
                why: "graceexec is shutting down".into(),
                serving: None,
            };
            self.report(waiter.into_iter().collect(), failure);
        } else if self.candidate().is_some() || self.checking.is_some() {
            self.follow_up = true;
            self.follow_up_waiters.extend(waiter);
            let what = match self.candidate() {
                Some(i) => format!("generation {} is starting", self.gens[i].id),
                None => "the check is running".into(),
            };
            self.info(format!("reload requested while {what}; merged into one follow-up reload"));
        } else {
            self.info("reload requested".into());
            self.restart_at = None;
            self.begin_reload(now, waiter.into_iter().collect());
        }
    }

    /// Run the check if there is one, else start the candidate at once.
    fn begin_reload(&mut self, now: Instant, waiters: Vec<Waiter>) {
        let gen = self.next_id;
        let status = format!("reloading: starting generation {gen}");
        self.out.push(Action::Systemd { state: Some(SdState::Reloading), status });
        if self.cfg.check {
            self.checking = Some((waiters, now + self.cfg.ready_timeout));
            self.out.push(Action::RunCheck { gen });
        } else {
            self.start_candidate(now, waiters, true);
        }
    }

    pub(super) fn start_follow_up(&mut self, now: Instant) {
        self.follow_up = false;
        self.info("starting the follow-up reload".into());
        let waiters = std::mem::take(&mut self.follow_up_waiters);
        self.begin_reload(now, waiters);
    }

    pub(super) fn on_check_done(&mut self, now: Instant, ok: bool, why: String) {
        let Some((waiters, _)) = self.checking.take() else {
            return;
        };
        if self.shutting_down {
            return;
        }
        if ok {
            if self.candidate().is_some() {
                // A restart began while the check ran: this reload follows it.
                self.follow_up = true;
                self.follow_up_waiters.extend(waiters);
            } else {
                self.restart_at = None;
                self.start_candidate(now, waiters, true);
            }
            return;
        }
        let serving = self.find(|g| g.role == Role::Current).map(|c| self.gens[c].id);
        match serving {
            Some(cur) => self.warn(format!("reload failed: {why}; generation {cur} keeps serving")),
            None => self.warn(format!("reload failed: {why}")),
        }
        self.finish_reload(now, waiters, Outcome::Failed { gen: None, why, serving });
        if self.follow_up {
            self.start_follow_up(now);
        } else if serving.is_none() && self.candidate().is_none() && self.restart_at.is_none() {
            self.schedule_restart(now);
        }
    }

    /// A reload ended: remember it, answer its waiters, and end the
    /// service manager's reload with READY=1 (sd_notify(3): RELOADING=1
    /// must be followed by READY=1 once the reload is complete, whether it
    /// worked or not).
    pub(super) fn finish_reload(&mut self, now: Instant, waiters: Vec<Waiter>, outcome: Outcome) {
        self.last_reload = Some((outcome.clone(), now));
        if !self.shutting_down {
            let serving = self.find(|g| g.role == Role::Current).map(|c| &self.gens[c]);
            let mut status = match serving {
                Some(g) => format!("serving: generation {} (pid {})", g.id, g.pid.unwrap_or(0)),
                None => "not serving".into(),
            };
            if let Outcome::Failed { why, .. } = &outcome {
                status.push_str(&format!("; reload failed: {why}"));
            }
            self.out.push(Action::Systemd { state: Some(SdState::Ready), status });
        }
        self.report(waiters, outcome);
    }

    fn report(&mut self, waiters: Vec<Waiter>, outcome: Outcome) {
        if !waiters.is_empty() {
            self.out.push(Action::Report { waiters, outcome });
        }
    }

    /// Shutdown: nobody's reload will happen now.
    pub(super) fn fail_all_waiters(&mut self) {
        let mut waiters = std::mem::take(&mut self.follow_up_waiters);
        if let Some((w, _)) = self.checking.take() {
            waiters.extend(w);
            self.out.push(Action::CancelCheck);
        }
        for g in &mut self.gens {
            waiters.append(&mut g.waiters);
        }
        let why = "graceexec is shutting down".to_string();
        self.report(waiters, Outcome::Failed { gen: None, why, serving: None });
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    pub fn view(&self, now: Instant) -> View {
        let current = self.gens.iter().any(|g| g.role == Role::Current);
        let state = if self.shutting_down {
            "stopping"
        } else if !self.ever_ready {
            "starting"
        } else if !current {
            "recovering"
        } else if self.candidate().is_some() || self.checking.is_some() {
            "reloading"
        } else {
            "serving"
        };
        let gens = self
            .gens
            .iter()
            .map(|g| GenView {
                id: g.id,
                pid: g.pid,
                state: match g.role {
                    Role::Candidate { .. } => "starting",
                    Role::Current => "ready",
                    Role::Old => "draining",
                },
                age: now.saturating_duration_since(g.spawned_at),
                ready_after: g.ready_after,
            })
            .collect();
        let last_reload = self
            .last_reload
            .as_ref()
            .map(|(o, at)| (o.clone(), now.saturating_duration_since(*at)));
        View { state, gens, last_reload, restarts: self.restarts }
    }
}
