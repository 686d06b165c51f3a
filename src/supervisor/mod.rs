//! The policy of generations, as a pure state machine.
//!
//! `handle(now, event)` returns the actions to carry out; it never touches a
//! process, a socket or the clock, so every decision is unit-tested without
//! either. A *generation* is one start of the server. At most one is the
//! *candidate* (started, not yet ready), at most one is *current* (ready,
//! serving), and any number are *old* (sent the stop signal, draining).
//!
//! | state \ event | Reload | candidate ready | candidate fails¹ | current exits | old exits | stop timeout | restart timer | Shutdown |
//! |---|---|---|---|---|---|---|---|---|
//! | Booting (first candidate) | merge into follow-up | it becomes current → Serving; follow-up? spawn | stop it; exit 1 (126/127 for exec errors) | — | forget | SIGKILL its group | — | stop it → Stopping |
//! | Serving | spawn candidate → Reloading | — | — | restart: timer with backoff → Recovering; never: → Stopping with its status | forget | SIGKILL its group | — | stop all → Stopping |
//! | Reloading | merge into follow-up | stop current; candidate becomes current; follow-up? spawn → Reloading : Serving | stop it; current keeps serving; follow-up? spawn | restart: candidate carries on → Recovering; never: → Stopping | forget | SIGKILL its group | — | stop all → Stopping |
//! | Recovering (no current) | candidate? merge : spawn now | it becomes current → Serving | stop it; restart timer with backoff | — | forget | SIGKILL its group | spawn candidate | stop all → Stopping |
//! | Stopping | ignore | ignore | forget | forget | forget; none left → exit | SIGKILL its group | — | SIGKILL all groups |
//!
//! Reloads are transactions (reload.rs). A `Reload` may carry a waiter (a
//! control client); it is told the outcome of the candidate that reload
//! starts. A request merged into the follow-up waits for the follow-up, a
//! reload that starts after it was made; a follow-up dropped in Recovering
//! hands its waiters to the restart. Shutdown fails every waiter, and a
//! `Reload` while Stopping fails at once. With `--check`, a reload in
//! Serving or Recovering first emits `RunCheck`: while it runs, reloads
//! merge into the follow-up; `CheckDone` ok starts the candidate, a failure
//! is the reload's outcome (current keeps serving; follow-up? spawn), and
//! so is a check not done within `--ready-timeout` (`CancelCheck`). The
//! first start and crash restarts are not checked. Every reload start emits
//! `Systemd(Reloading)` and every reload end `Systemd(Ready)`; the first
//! generation ready emits `Systemd(Ready)`, a shutdown `Systemd(Stopping)`.
//!
//! ¹ exits before it is ready, cannot be exec'd, or is not ready within
//! `--ready-timeout`. Any exited leader's group also gets SIGKILL, so no
//! straggler of a finished generation keeps the sockets. Restart backoff:
//! 100 ms doubling to 10 s, back to 100 ms when the service had been up (one
//! generation after another, without a break) for a minute.
//!
//! The exit code after a shutdown is the status of the generation that was
//! current when it began (128+N for signal N), or of the candidate if none
//! was, or the forced code of a start-up failure.
//!
//! Starts, readiness and failed candidates are handled here; stopping,
//! shutdown, exits, crash restarts and the timers in exits.rs.

use std::time::{Duration, Instant};

use crate::log::Level;

mod exits;
mod reload;
mod types;
pub use types::*;

pub type GenId = u32;

const AUTO_READY_AFTER: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const HEALTHY: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Candidate { deadline: Instant },
    Current,
    Old,
}

#[derive(Debug)]
struct Gen {
    id: GenId,
    pid: Option<i32>,
    role: Role,
    spawned_at: Instant,
    /// Set when the stop signal went out: (SIGKILL deadline, killed yet).
    stop: Option<(Instant, bool)>,
    /// Started by a reload (not the first start, not a restart).
    reload: bool,
    /// Control clients waiting for this candidate's outcome.
    waiters: Vec<Waiter>,
    ready_after: Option<Duration>,
}

pub struct Supervisor {
    cfg: Config,
    gens: Vec<Gen>,
    next_id: GenId,
    follow_up: bool,
    /// Waiters of requests merged into the follow-up: their reload is one
    /// that starts after they asked, never the one already under way.
    follow_up_waiters: Vec<Waiter>,
    /// Waiters of the reload whose `--check` is running, and when it is
    /// given up (`--ready-timeout`).
    checking: Option<(Vec<Waiter>, Instant)>,
    last_reload: Option<(Outcome, Instant)>,
    restarts: u32,
    restart_at: Option<Instant>,
    backoff: Duration,
    ever_ready: bool,
    shutting_down: bool,
    forced_code: Option<i32>,
    final_gen: Option<GenId>,
    last_status: Option<Status>,
    /// Since when some generation has been serving without a break.
    serving_since: Option<Instant>,
    out: Vec<Action>,
}

fn human(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

impl Supervisor {
    pub fn new(cfg: Config) -> Supervisor {
        Supervisor {
            cfg,
            gens: Vec::new(),
            next_id: 1,
            follow_up: false,
            follow_up_waiters: Vec::new(),
            checking: None,
            last_reload: None,
            restarts: 0,
            restart_at: None,
            backoff: BACKOFF_FIRST,
            ever_ready: false,
            shutting_down: false,
            forced_code: None,
            final_gen: None,
            last_status: None,
            serving_since: None,
            out: Vec::new(),
        }
    }

    /// Spawn the first generation.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.start_candidate(now, Vec::new(), false);
        std::mem::take(&mut self.out)
    }

    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        match event {
            Event::Reload { waiter } => self.on_reload(now, waiter),
            Event::CheckDone { ok, why } => self.on_check_done(now, ok, why),
            Event::Shutdown => self.on_shutdown(now),
            Event::Forward(signal) => match self.find(|g| g.role == Role::Current) {
                Some(i) => {
                    let pid = self.gens[i].pid.expect("current has a pid");
                    self.out.push(Action::Signal { pid, signal });
                }
                None => {
                    self.debug(format!("no serving generation to forward {} to", signal.as_str()))
                }
            },
            Event::Spawned { gen, pid } => self.on_spawned(now, gen, pid),
            Event::SpawnFailed { gen, code, message } => {
                if let Some(i) = self.find(|g| g.id == gen) {
                    let g = self.gens.remove(i);
                    self.out.push(Action::Release { gen });
                    self.candidate_failed(now, gen, (g.reload, g.waiters), message, Some(code));
                }
            }
            Event::Ready { gen, by } => self.on_ready(now, gen, by),
            Event::Exited { pid, status } => self.on_exited(now, pid, status),
            Event::Tick => self.on_tick(now),
        }
        if self.shutting_down && self.gens.is_empty() {
            let code =
                self.forced_code.unwrap_or_else(|| self.last_status.map_or(0, Status::exit_code));
            self.info(format!("exiting with status {code}"));
            self.out.push(Action::Exit { code });
        }
        std::mem::take(&mut self.out)
    }

    /// The earliest instant at which `Tick` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut times: Vec<Instant> = self.restart_at.into_iter().collect();
        times.extend(self.checking.as_ref().map(|(_, deadline)| *deadline));
        for g in &self.gens {
            match (g.role, g.stop, g.pid) {
                (_, Some((kill_at, false)), Some(_)) => times.push(kill_at),
                (Role::Candidate { deadline }, None, Some(_)) => {
                    times.push(deadline);
                    times.extend(self.auto_ready_at(g));
                }
                _ => {}
            }
        }
        times.into_iter().min()
    }

    fn auto_ready_at(&self, g: &Gen) -> Option<Instant> {
        match self.cfg.ready {
            ReadyPolicy::Delay(d) => Some(g.spawned_at + d),
            ReadyPolicy::Auto => Some(g.spawned_at + AUTO_READY_AFTER),
            _ => None,
        }
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

    fn find(&self, f: impl Fn(&Gen) -> bool) -> Option<usize> {
        self.gens.iter().position(f)
    }

    fn candidate(&self) -> Option<usize> {
        self.find(|g| matches!(g.role, Role::Candidate { .. }))
    }

    fn start_candidate(&mut self, now: Instant, waiters: Vec<Waiter>, reload: bool) {
        let id = self.next_id;
        self.next_id += 1;
        self.gens.push(Gen {
            id,
            pid: None,
            role: Role::Candidate { deadline: now + self.cfg.ready_timeout },
            spawned_at: now,
            stop: None,
            reload,
            waiters,
            ready_after: None,
        });
        self.out.push(Action::Spawn { gen: id });
    }

    fn on_spawned(&mut self, now: Instant, gen: GenId, pid: i32) {
        let timeout = self.cfg.ready_timeout;
        let Some(i) = self.find(|g| g.id == gen) else {
            return;
        };
        let g = &mut self.gens[i];
        g.pid = Some(pid);
        g.spawned_at = now;
        // A stop decided before the pid was known (a shutdown that came
        // between Spawn and Spawned) could not be sent yet: send it now.
        let stop_pending = g.stop.take().is_some();
        if let Role::Candidate { deadline } = &mut g.role {
            *deadline = now + timeout;
        }
        self.info(format!("generation {gen} started as pid {pid}"));
        if stop_pending {
            self.stop(now, i);
        } else if self.cfg.ready == ReadyPolicy::Probe {
            self.out.push(Action::StartProbe { gen, pid });
        }
    }

    fn on_ready(&mut self, now: Instant, gen: GenId, by: ReadySource) {
        let accepted = matches!(
            (self.cfg.ready, by),
            (ReadyPolicy::Notify | ReadyPolicy::Auto, ReadySource::Notify)
                | (ReadyPolicy::Probe, ReadySource::Probe)
        );
        match self.candidate() {
            Some(i) if accepted && self.gens[i].id == gen => self.promote(now, i),
            _ => self.debug(format!("generation {gen}: readiness ignored")),
        }
    }

    fn promote(&mut self, now: Instant, i: usize) {
        let g = &mut self.gens[i];
        g.role = Role::Current;
        let (id, took) = (g.id, now - g.spawned_at);
        g.ready_after = Some(took);
        let (pid, reload) = (g.pid.expect("a ready generation has a pid"), g.reload);
        let waiters = std::mem::take(&mut g.waiters);
        self.serving_since.get_or_insert(now);
        let first = !self.ever_ready;
        self.ever_ready = true;
        self.restart_at = None;
        self.info(format!("generation {id} ready after {} ms", took.as_millis()));
        if self.cfg.ready == ReadyPolicy::Probe {
            self.out.push(Action::StopProbe { gen: id });
        }
        for j in 0..self.gens.len() {
            if self.gens[j].role == Role::Current && self.gens[j].id != id {
                self.gens[j].role = Role::Old;
                self.stop(now, j);
            }
        }
        if reload {
            self.finish_reload(now, waiters, Outcome::Ready { gen: id, pid, took });
        } else {
            let state = first.then_some(SdState::Ready);
            let status = format!("serving: generation {id} (pid {pid})");
            self.out.push(Action::Systemd { state, status });
        }
        if self.follow_up {
            self.start_follow_up(now);
        }
    }

    /// The candidate `id` failed; if it still runs, it is at index `i`.
    /// `asked`: whether it was started by a reload, and who waits for it.
    fn candidate_failed(
        &mut self,
        now: Instant,
        id: GenId,
        asked: (bool, Vec<Waiter>),
        why: String,
        code: Option<i32>,
    ) {
        if let Some(i) = self.find(|g| g.id == id) {
            self.stop(now, i);
        }
        if asked.0 {
            let serving = self.find(|g| g.role == Role::Current).map(|c| self.gens[c].id);
            let why = format!("generation {id} {why}");
            self.finish_reload(now, asked.1, Outcome::Failed { gen: Some(id), why, serving });
        }
        if self.shutting_down {
            return;
        }
        if !self.ever_ready {
            self.log(Level::Error, format!("generation {id} {why}; giving up"));
            self.forced_code = Some(code.unwrap_or(1));
            self.begin_shutdown(now);
        } else if let Some(c) = self.find(|g| g.role == Role::Current) {
            let cur = self.gens[c].id;
            self.warn(format!(
                "reload failed: generation {id} {why}; generation {cur} keeps serving"
            ));
            if self.follow_up {
                self.start_follow_up(now);
            }
        } else {
            // The follow-up's waiters stay: the restart below is a start
            // after they asked, and they get its outcome.
            self.follow_up = false;
            self.warn(format!("generation {id} {why}"));
            self.schedule_restart(now);
        }
    }
}

#[cfg(test)]
mod tests;
