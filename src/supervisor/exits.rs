//! How generations end: the stop signal and SIGKILL after the stop
//! timeout, shutdown, exited processes, crash restarts with backoff, and
//! the deadlines `Tick` acts on.

use std::time::Instant;

use super::{
    human, Action, ReadyPolicy, Role, SdState, Status, Supervisor, BACKOFF_FIRST, BACKOFF_MAX,
    HEALTHY,
};
use crate::log::Level;

impl Supervisor {
    /// Send the stop signal once; SIGKILL follows at the stop timeout.
    pub(super) fn stop(&mut self, now: Instant, i: usize) {
        let sig = self.cfg.stop_signal;
        let deadline = now + self.cfg.stop_timeout;
        let g = &mut self.gens[i];
        if g.stop.is_some() {
            return;
        }
        g.stop = Some((deadline, false));
        let was_candidate = matches!(g.role, Role::Candidate { .. });
        if was_candidate {
            g.role = Role::Old;
        }
        let (id, pid) = (g.id, g.pid);
        if was_candidate && self.cfg.ready == ReadyPolicy::Probe {
            self.out.push(Action::StopProbe { gen: id });
        }
        if let Some(pid) = pid {
            self.out.push(Action::Signal { pid, signal: sig });
            self.info(format!("generation {id} (pid {pid}) stopping with {}", sig.as_str()));
        }
    }

    pub(super) fn on_shutdown(&mut self, now: Instant) {
        if self.shutting_down {
            self.warn("second stop request: killing every generation now".into());
            for g in &mut self.gens {
                if let Some(pid) = g.pid {
                    self.out.push(Action::KillGroup { pid });
                    g.stop = Some((now, true));
                }
            }
            return;
        }
        self.info("shutting down".into());
        self.begin_shutdown(now);
    }

    pub(super) fn begin_shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        self.follow_up = false;
        self.restart_at = None;
        self.fail_all_waiters();
        self.out
            .push(Action::Systemd { state: Some(SdState::Stopping), status: "stopping".into() });
        self.final_gen = self
            .find(|g| g.role == Role::Current)
            .or_else(|| self.candidate())
            .map(|i| self.gens[i].id);
        for i in 0..self.gens.len() {
            self.stop(now, i);
        }
    }

    pub(super) fn schedule_restart(&mut self, now: Instant) {
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.restart_at = Some(now + delay);
        self.info(format!("restarting in {}", human(delay)));
    }

    pub(super) fn on_exited(&mut self, now: Instant, pid: i32, status: Status) {
        let Some(i) = self.find(|g| g.pid == Some(pid)) else {
            return;
        };
        let g = self.gens.remove(i);
        self.out.push(Action::Release { gen: g.id });
        self.out.push(Action::KillGroup { pid });
        if self.final_gen == Some(g.id) {
            self.last_status = Some(status);
        }
        match (g.role, g.stop) {
            (_, Some(_)) | (Role::Old, _) => {
                self.info(format!("generation {} (pid {pid}) exited with {status}", g.id));
            }
            (Role::Candidate { .. }, None) => {
                self.candidate_failed(
                    now,
                    g.id,
                    (g.reload, g.waiters),
                    format!("(pid {pid}) exited with {status} before it was ready"),
                    None,
                );
            }
            (Role::Current, None) => {
                self.last_status = Some(status);
                // A service that had been up for a minute, across any number
                // of reloads, was healthy: the next restart, now or after a
                // failed candidate, starts the backoff afresh.
                if self.serving_since.take().is_some_and(|t| now.duration_since(t) >= HEALTHY) {
                    self.backoff = BACKOFF_FIRST;
                }
                self.warn(format!(
                    "generation {} (pid {pid}) exited unexpectedly with {status}",
                    g.id
                ));
                let line = format!("generation {} exited unexpectedly with {status}", g.id);
                self.out.push(Action::Systemd { state: None, status: line });
                if !self.cfg.restart {
                    self.forced_code = Some(status.exit_code());
                    self.begin_shutdown(now);
                } else if let Some(c) = self.candidate() {
                    let id = self.gens[c].id;
                    self.info(format!("generation {id} is starting and will take over"));
                } else {
                    self.schedule_restart(now);
                }
            }
        }
    }

    pub(super) fn on_tick(&mut self, now: Instant) {
        if self.checking.as_ref().is_some_and(|(_, deadline)| now >= *deadline) {
            self.out.push(Action::CancelCheck);
            let why = format!("the check did not finish within {}", human(self.cfg.ready_timeout));
            self.on_check_done(now, false, why);
        }
        if let Some(i) = self.candidate() {
            let g = &self.gens[i];
            if let (Role::Candidate { deadline }, Some(_)) = (g.role, g.pid) {
                let id = g.id;
                if now >= deadline {
                    let why = format!("was not ready within {}", human(self.cfg.ready_timeout));
                    let asked = (g.reload, std::mem::take(&mut self.gens[i].waiters));
                    self.candidate_failed(now, id, asked, why, None);
                } else if self.auto_ready_at(g).is_some_and(|t| now >= t) {
                    self.promote(now, i);
                }
            }
        }
        for g in &mut self.gens {
            if let (Some((kill_at, false)), Some(pid)) = (g.stop, g.pid) {
                if now >= kill_at {
                    g.stop = Some((kill_at, true));
                    self.out.push(Action::KillGroup { pid });
                    let msg = format!(
                        "generation {} (pid {pid}) killed after the stop timeout ({})",
                        g.id,
                        human(self.cfg.stop_timeout)
                    );
                    self.out.push(Action::Log { level: Level::Warn, msg });
                }
            }
        }
        if self.restart_at.is_some_and(|t| now >= t) {
            self.restart_at = None;
            self.restarts += 1;
            // Requests that came while there was nothing to reload get the
            // outcome of this start, which began after they asked.
            self.follow_up = false;
            let waiters = std::mem::take(&mut self.follow_up_waiters);
            let reload = !waiters.is_empty();
            self.start_candidate(now, waiters, reload);
        }
    }
}
