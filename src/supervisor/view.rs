//! What `graceexec status` shows of the supervisor: the phase, each
//! generation with its role, the last reload and the last exits. Pids are
//! the event loop's to fill in: the supervisor addresses generations by id.

use std::time::{Duration, Instant};

use super::phase::{Phase, Recovery};
use super::{GenId, Outcome, Status, Supervisor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Started, not ready yet.
    Starting,
    /// Ready and serving.
    Ready,
    /// Ready, with a share of new connections until promoted.
    Canary,
    /// Replaced, idle, kept for a rollback (`--keep-old`).
    Kept,
    /// Sent the stop signal.
    Draining,
}

impl Role {
    /// The phase `status` shows: candidate, canary, serving, kept or
    /// draining.
    pub fn phase(self) -> &'static str {
        match self {
            Role::Starting => "candidate",
            Role::Ready => "serving",
            Role::Canary => "canary",
            Role::Kept => "kept",
            Role::Draining => "draining",
        }
    }

    /// `status`'s state of the generation: starting, ready or draining.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Ready | Role::Canary | Role::Kept => "ready",
            Role::Draining => "draining",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenView {
    pub id: GenId,
    /// Filled in by the event loop.
    pub pid: Option<i32>,
    pub role: Role,
    pub age: Duration,
    pub ready_after: Option<Duration>,
}

/// A generation that has exited, most recent last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitView {
    pub id: GenId,
    pub pid: i32,
    pub status: Status,
    pub at: Instant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// starting, serving, reloading, recovering or stopping.
    pub state: &'static str,
    pub gens: Vec<GenView>,
    /// The last reload's outcome and how long ago it came.
    pub last_reload: Option<(Outcome, Duration)>,
    pub restarts: u32,
    /// Reloads that ended ready, and failed.
    pub reloads: (u64, u64),
    /// The last exits, oldest first, with how long ago each came.
    pub exited: Vec<(ExitView, Duration)>,
    /// When the restart after a crash is due, from now.
    pub restart_in: Option<Duration>,
    /// How long the kept generation stays, from now.
    pub kept_for: Option<Duration>,
}

impl Supervisor {
    pub fn view(&self, now: Instant) -> View {
        let age = |t: Instant| now.saturating_duration_since(t);
        let mut gens: Vec<GenView> = self
            .draining
            .iter()
            .map(|(id, d)| GenView {
                id: *id,
                pid: None,
                role: Role::Draining,
                age: age(d.spawned_at),
                ready_after: d.ready_after,
            })
            .collect();
        if let Some(c) = self.phase.current() {
            let (id, ready_after) = (c.id, Some(c.ready_after));
            gens.push(GenView {
                id,
                pid: None,
                role: Role::Ready,
                age: age(c.spawned_at),
                ready_after,
            });
        }
        if let Phase::Split(s) = &self.phase {
            let (id, role, ready_after) = (s.new.id, Role::Canary, Some(s.new.ready_after));
            gens.push(GenView { id, pid: None, role, age: age(s.new.spawned_at), ready_after });
        }
        if let Some(k) = &self.kept {
            let (id, role, ready_after) = (k.gen.id, Role::Kept, Some(k.gen.ready_after));
            gens.push(GenView { id, pid: None, role, age: age(k.gen.spawned_at), ready_after });
        }
        if let Some(c) = self.phase.candidate() {
            let (id, role) = (c.id, Role::Starting);
            gens.push(GenView { id, pid: None, role, age: age(c.spawned_at), ready_after: None });
        }
        gens.sort_by_key(|g| g.id);
        let last_reload = self.last_reload.as_ref().map(|(o, at)| (o.clone(), age(*at)));
        let exited = self.history.iter().map(|e| (e.clone(), age(e.at))).collect();
        let restart_in = match &self.phase {
            Phase::Recovering(Recovery::Backoff { at, .. }) => {
                Some(at.saturating_duration_since(now))
            }
            _ => None,
        };
        View {
            state: self.phase.name(),
            gens,
            last_reload,
            restarts: self.restarts,
            reloads: self.reloads,
            exited,
            restart_in,
            kept_for: self.kept.as_ref().map(|k| k.until.saturating_duration_since(now)),
        }
    }
}
