//! The supervisor's state across `graceexec upgrade`: what a new image
//! needs to go on exactly where this one is. Instants do not survive an
//! exec as values, so every deadline and age is written as a duration from
//! the moment of the export, and read back against the moment of the
//! import.
//!
//! Only a settled instance is carried: one generation serving, with any
//! number draining and a kept one. A reload, a canary, a recovery or a
//! shutdown under way is refused (`carriable`): its candidate, probes and
//! waiters would each need their own handover, for a state that lasts
//! seconds. The caller asks again once it is over.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::phase::{Current, Draining, Kept, Phase, Stage};
use super::{ExitView, GenId, Outcome, Status, Supervisor};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Carried {
    current: CurrentOut,
    draining: Vec<DrainingOut>,
    kept: Option<(CurrentOut, Duration)>,
    next_id: GenId,
    backoff: Duration,
    up_for: Option<Duration>,
    restarts: u32,
    reloads: (u64, u64),
    /// The last reload: ok, generation, took or why, and how long ago.
    last_reload: Option<ReloadOut>,
    last_status: Option<StatusOut>,
    exits: Vec<(GenId, i32, StatusOut, Duration)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CurrentOut {
    id: GenId,
    age: Duration,
    ready_after: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct DrainingOut {
    id: GenId,
    age: Duration,
    ready_after: Option<Duration>,
    /// Emptying until this long from now; or signalled, SIGKILL this long
    /// from now (None: killed already).
    emptying: Option<Duration>,
    kill_in: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ReloadOut {
    gen: Option<GenId>,
    took: Option<Duration>,
    why: Option<String>,
    ago: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
enum StatusOut {
    Code(i32),
    Signal(i32),
}

impl From<Status> for StatusOut {
    fn from(s: Status) -> StatusOut {
        match s {
            Status::Code(c) => StatusOut::Code(c),
            Status::Signal(n) => StatusOut::Signal(n),
        }
    }
}

impl From<StatusOut> for Status {
    fn from(s: StatusOut) -> Status {
        match s {
            StatusOut::Code(c) => Status::Code(c),
            StatusOut::Signal(n) => Status::Signal(n),
        }
    }
}

fn out(c: &Current, now: Instant) -> CurrentOut {
    CurrentOut {
        id: c.id,
        age: now.saturating_duration_since(c.spawned_at),
        ready_after: c.ready_after,
    }
}

fn back(c: CurrentOut, now: Instant) -> Current {
    Current {
        id: c.id,
        spawned_at: now.checked_sub(c.age).unwrap_or(now),
        ready_after: c.ready_after,
    }
}

impl Supervisor {
    /// Why the state cannot be carried now, if it cannot.
    pub fn carriable(&self) -> Result<(), String> {
        match &self.phase {
            Phase::Serving(_) => Ok(()),
            p => Err(format!(
                "graceexec is {}: upgrade once it serves with no reload under way",
                p.name()
            )),
        }
    }

    pub fn export(&self, now: Instant) -> Result<Carried, String> {
        self.carriable()?;
        let Phase::Serving(cur) = &self.phase else { unreachable!("checked") };
        let left = |t: Instant| t.saturating_duration_since(now);
        let draining = self
            .draining
            .iter()
            .map(|(id, d)| DrainingOut {
                id: *id,
                age: now.saturating_duration_since(d.spawned_at),
                ready_after: d.ready_after,
                emptying: match d.stage {
                    Stage::Emptying { until } => Some(left(until)),
                    Stage::Signalled { .. } => None,
                },
                kill_in: match d.stage {
                    Stage::Signalled { kill_at, killed: false } => Some(left(kill_at)),
                    _ => None,
                },
            })
            .collect();
        let last_reload = self.last_reload.as_ref().map(|(o, at)| match o {
            Outcome::Ready { gen, took, .. } => {
                ReloadOut { gen: Some(*gen), took: Some(*took), why: None, ago: now - *at }
            }
            Outcome::Failed { gen, why, .. } => {
                ReloadOut { gen: *gen, took: None, why: Some(why.clone()), ago: now - *at }
            }
        });
        Ok(Carried {
            current: out(cur, now),
            draining,
            kept: self.kept.as_ref().map(|k| (out(&k.gen, now), left(k.until))),
            next_id: self.next_id,
            backoff: self.backoff,
            up_for: self.up_since.map(|t| now.saturating_duration_since(t)),
            restarts: self.restarts,
            reloads: self.reloads,
            last_reload,
            last_status: self.last_status.map(StatusOut::from),
            exits: self
                .history
                .iter()
                .map(|e| (e.id, e.pid, e.status.into(), now.saturating_duration_since(e.at)))
                .collect(),
        })
    }

    /// A supervisor that goes on from `c`, carried at the instant `now`
    /// stands for.
    pub fn import(policy: super::Policy, c: Carried, now: Instant) -> Supervisor {
        let mut s = Supervisor::new(policy);
        let ago = |d: Duration| now.checked_sub(d).unwrap_or(now);
        s.phase = Phase::Serving(back(c.current, now));
        s.draining = c
            .draining
            .into_iter()
            .map(|d| {
                let stage = match (d.emptying, d.kill_in) {
                    (Some(left), _) => Stage::Emptying { until: now + left },
                    (None, Some(left)) => Stage::Signalled { kill_at: now + left, killed: false },
                    (None, None) => Stage::Signalled { kill_at: now, killed: true },
                };
                (d.id, Draining { spawned_at: ago(d.age), ready_after: d.ready_after, stage })
            })
            .collect::<BTreeMap<_, _>>();
        s.kept = c.kept.map(|(g, left)| Kept { gen: back(g, now), until: now + left });
        s.next_id = c.next_id;
        s.backoff = c.backoff;
        s.up_since = c.up_for.map(ago);
        s.restarts = c.restarts;
        s.reloads = c.reloads;
        s.last_reload = c.last_reload.map(|r| {
            let outcome = match (r.took, r.why) {
                (Some(took), _) => Outcome::Ready { gen: r.gen.unwrap_or(0), took, share: None },
                (None, why) => Outcome::failed(r.gen, why.unwrap_or_default(), None),
            };
            (outcome, ago(r.ago))
        });
        s.last_status = c.last_status.map(Status::from);
        s.history = c
            .exits
            .into_iter()
            .map(|(id, pid, status, a)| ExitView { id, pid, status: status.into(), at: ago(a) })
            .collect::<VecDeque<_>>();
        s
    }

    /// The generations the loop must keep: serving, draining (with whether
    /// each is still emptying, to watch its drain again), kept.
    pub fn carried_gens(&self) -> Vec<(GenId, bool)> {
        let mut gens: Vec<(GenId, bool)> = self
            .draining
            .iter()
            .map(|(id, d)| (*id, matches!(d.stage, Stage::Emptying { .. })))
            .collect();
        gens.extend(self.phase.current().map(|c| (c.id, false)));
        gens.extend(self.kept.as_ref().map(|k| (k.gen.id, false)));
        gens
    }
}
