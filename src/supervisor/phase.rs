//! The phases of an instance and what each one holds. A generation id is in
//! exactly one place: a phase's candidate, a phase's current, or the
//! draining map; a phase without a field for something cannot hold it.

use std::time::{Duration, Instant};

use super::{GenId, Waiter};

pub(super) enum Phase {
    /// Before `Start`.
    Idle,
    /// The first generation is starting; nothing has served yet.
    Booting(Attempt),
    Serving(Current),
    /// A reload: the check or the candidate, while `Current` serves.
    Reloading(Current, Attempt),
    /// Nothing serves: the current generation died.
    Recovering(Recovery),
    Stopping(Stopping),
    /// Two generations serve, the new one with a share of new
    /// connections: a canary, or a ramp.
    Split(Split),
    /// `Exit` has been emitted; nothing happens any more.
    Done,
}

pub(super) struct Split {
    pub old: Current,
    pub new: Current,
    /// The new one's share of new connections, per million.
    pub share: u32,
    pub mode: SplitMode,
}

pub(super) enum SplitMode {
    /// Until `graceexec promote` or `rollback`, or `promote_at`.
    Canary { promote_at: Option<Instant> },
    /// The share rises from 0 to all over `over` from `from`.
    Ramp { from: Instant, over: Duration },
}

/// A generation replaced by a promotion and kept alive, idle and
/// unsignalled, until `until`: `rollback` steers straight back to it.
pub(super) struct Kept {
    pub gen: Current,
    pub until: Instant,
}

/// The generation that serves.
pub(super) struct Current {
    pub id: GenId,
    pub spawned_at: Instant,
    pub ready_after: Duration,
}

/// Getting a new generation ready: a reload, the first start, a restart.
pub(super) struct Attempt {
    pub step: Step,
    /// A canary reload: the share the new generation gets when ready.
    pub canary: Option<u32>,
    /// Requests that came while this attempt ran: one more reload once it
    /// ends, for these waiters (a reload that started after they asked).
    pub follow_up: Option<Vec<Waiter>>,
}

pub(super) enum Step {
    /// `--check` runs; generation `gen` starts if it passes.
    /// `deadline` is None once the check has been cancelled.
    Checking {
        gen: GenId,
        waiters: Vec<Waiter>,
        deadline: Option<Instant>,
    },
    Starting(Candidate),
}

pub(super) struct Candidate {
    pub id: GenId,
    /// What it is not ready for yet, as the loop last said.
    pub waiting: Option<super::Waiting>,
    /// When to say again, at the default level, that it is not ready.
    pub nag_at: Instant,
    pub spawned_at: Instant,
    /// Not ready by then: failed (`--ready-timeout`).
    pub deadline: Instant,
    pub waiters: Vec<Waiter>,
    /// Started by a reload (its outcome is the last reload's), not by the
    /// first start or a crash restart nobody asked for.
    pub reload: bool,
}

pub(super) enum Recovery {
    /// The restart is due at `at`; `waiters` asked for a reload meanwhile
    /// and get the outcome of this start.
    Backoff {
        at: Instant,
        waiters: Vec<Waiter>,
    },
    Trying(Attempt),
}

pub(super) struct Stopping {
    /// `graceexec stop` clients, told the exit code.
    pub waiters: Vec<Waiter>,
    /// The generation whose status becomes the exit code.
    pub final_gen: Option<GenId>,
    /// The one that was serving, which forwarded signals still reach.
    pub serving: Option<GenId>,
    /// The exit code of a start-up failure or of `--restart never`.
    pub forced: Option<i32>,
    /// A second stop signal has SIGKILLed every group.
    pub escalated: bool,
}

/// A generation on its way out.
pub(super) struct Draining {
    pub spawned_at: Instant,
    pub ready_after: Option<Duration>,
    pub stage: Stage,
}

pub(super) enum Stage {
    /// Steered away from and not signalled: it serves what it has, and
    /// gets the stop signal once it has nothing left, or at `until`.
    Emptying { until: Instant },
    /// Sent the stop signal; SIGKILL to its group at `kill_at`.
    Signalled { kill_at: Instant, killed: bool },
}

impl Draining {
    /// When `Tick` has something to do for it.
    pub fn deadline(&self) -> Option<Instant> {
        match self.stage {
            Stage::Emptying { until } => Some(until),
            Stage::Signalled { kill_at, killed: false } => Some(kill_at),
            Stage::Signalled { killed: true, .. } => None,
        }
    }
}

impl Attempt {
    pub fn candidate(&self) -> Option<&Candidate> {
        match &self.step {
            Step::Starting(c) => Some(c),
            Step::Checking { .. } => None,
        }
    }
}

impl Phase {
    pub fn attempt(&self) -> Option<&Attempt> {
        match self {
            Phase::Booting(a) | Phase::Reloading(_, a) | Phase::Recovering(Recovery::Trying(a)) => {
                Some(a)
            }
            _ => None,
        }
    }

    pub fn candidate(&self) -> Option<&Candidate> {
        self.attempt().and_then(Attempt::candidate)
    }

    pub fn candidate_mut(&mut self) -> Option<&mut Candidate> {
        match self {
            Phase::Booting(a) | Phase::Reloading(_, a) | Phase::Recovering(Recovery::Trying(a)) => {
                match &mut a.step {
                    Step::Starting(c) => Some(c),
                    Step::Checking { .. } => None,
                }
            }
            _ => None,
        }
    }

    pub fn checking(&self) -> bool {
        self.attempt().is_some_and(|a| matches!(a.step, Step::Checking { .. }))
    }

    /// The generation that serves (in a split, the new one is the
    /// candidate for promotion, the old one still the current).
    pub fn current(&self) -> Option<&Current> {
        match self {
            Phase::Serving(c) | Phase::Reloading(c, _) => Some(c),
            Phase::Split(s) => Some(&s.old),
            _ => None,
        }
    }

    /// The phase's name in `status`.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle | Phase::Booting(_) => "starting",
            Phase::Serving(_) => "serving",
            Phase::Reloading(..) => "reloading",
            Phase::Recovering(_) => "recovering",
            Phase::Split(s) => match s.mode {
                SplitMode::Canary { .. } => "canary",
                SplitMode::Ramp { .. } => "ramping",
            },
            Phase::Stopping(_) | Phase::Done => "stopping",
        }
    }
}
