//! The supervisor's vocabulary: what it is told (events), what it decides
//! (actions), and how processes end.

use std::time::Duration;

use super::Waiting;
use crate::log::Level;
use crate::units::{signal_name, SigNo};

/// A generation's number: 1 for the first start, one more for each start.
pub type GenId = u32;

/// Whoever waits for an outcome: a control connection.
pub type Waiter = u64;

/// How a process ended, as waitpid(2) reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Code(i32),
    Signal(i32),
}

impl Status {
    /// The shell convention: 128+N for death by signal N.
    pub fn exit_code(self) -> i32 {
        match self {
            Status::Code(c) => c,
            Status::Signal(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Status::Code(c) => write!(f, "status {c}"),
            Status::Signal(s) => write!(f, "signal {}", signal_name(s)),
        }
    }
}

/// What counts as ready under `--ready`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReadyPolicy {
    Notify,
    Delay(Duration),
    Probe,
    /// `--ready accept`: the candidate has accepted a connection on each of
    /// its own sockets.
    Accept,
    /// No `--ready`: READY=1 or, where sockets are steered, accept; else
    /// READY=1 or 1 s alive; whichever comes first.
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadySource {
    Notify,
    Probe,
    Accept,
}

/// The part of the configuration that is policy.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub ready: ReadyPolicy,
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
    pub stop_signal: SigNo,
    pub restart: bool,
    /// A `--check` command runs before each reload.
    pub check: bool,
    /// Each generation has its own sockets, and new connections go where
    /// `Steer` says (`--handover steer` with a TCP address to steer).
    pub steer: bool,
    /// How long a generation steered away from waits to have nothing
    /// left before it gets the stop signal anyway (`--drain-wait`).
    pub drain_wait: Duration,
    /// With the service manager's file descriptor store (`--fdstore`), a
    /// stop hands over to the next start: new connections wait for it
    /// (`Sockets::park`), and with steering each generation first
    /// finishes what it has, as at a reload.
    #[serde(default)]
    pub park_at_stop: bool,
    /// After a promotion, the previous generation stays alive, idle, this
    /// long, for a rollback without a start (`--keep-old`; 0: not kept).
    pub keep_old: Duration,
    /// A canary still up this long is promoted (`--promote-after`).
    pub promote_after: Option<Duration>,
    /// Every reload's new generation gets a share rising from 0 to 100%
    /// over this long (`--ramp`).
    pub ramp: Option<Duration>,
    /// How often a candidate not ready yet is mentioned in the log, with
    /// what it waits for.
    pub nag_every: Duration,
}

/// How a reload ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The reply adds the pid: the event loop knows it. `share`: a
    /// canary's share of new connections (per million), if it is one.
    Ready { gen: GenId, took: Duration, share: Option<u32> },
    /// `gen` is None when nothing was started (a failed check, a
    /// shutdown); `serving` is the generation that keeps serving, if any;
    /// `output` the failed check's last lines (a candidate's are the
    /// loop's to add: it holds its output).
    Failed { gen: Option<GenId>, why: String, serving: Option<GenId>, output: Vec<String> },
}

impl Outcome {
    pub(super) fn failed(gen: Option<GenId>, why: String, serving: Option<GenId>) -> Outcome {
        Outcome::Failed { gen, why, serving, output: Vec::new() }
    }
}

/// Something that happened, for `graceexec events` and the metrics: the
/// facts, where log lines have words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// A reload was asked for; `merged`: into the follow-up of one under way.
    ReloadRequested {
        merged: bool,
    },
    /// A reload starts generation `gen` (its check first, with `--check`).
    ReloadStarted {
        gen: GenId,
    },
    ReloadReady {
        gen: GenId,
        took: Duration,
    },
    ReloadFailed {
        gen: Option<GenId>,
        why: String,
    },
    /// A generation counts as ready (every start, not only reloads).
    Ready {
        gen: GenId,
        took: Duration,
    },
    Stopping {
        gen: GenId,
        signal: SigNo,
    },
    /// Steered away from, it has nothing left.
    Drained {
        gen: GenId,
    },
    Exited {
        gen: GenId,
        pid: i32,
        status: Status,
    },
    RestartScheduled {
        delay: Duration,
    },
    Promoted {
        gen: GenId,
        from: GenId,
    },
    RolledBack {
        gen: GenId,
        from: GenId,
    },
}

/// The answer to a promote or rollback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `gen` gets every new connection; `from` drains (or is kept).
    Promoted {
        gen: GenId,
        from: GenId,
    },
    /// Back to `gen`; `from` drains.
    RolledBack {
        gen: GenId,
        from: GenId,
    },
    Refused {
        why: String,
    },
}

/// What graceexec tells its own service manager (sd_notify(3)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SdState {
    Ready,
    Reloading,
    Stopping,
}

/// The STATUS= line, as facts; the loop writes it out with pids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SdStatus {
    /// `gen` serves; `failed` is why the last reload failed, if it did.
    Serving {
        gen: GenId,
        failed: Option<String>,
    },
    NotServing {
        failed: Option<String>,
    },
    /// `old` and `new` both serve, `new` with `share` per million.
    Split {
        old: GenId,
        new: GenId,
        share: u32,
    },
    Reloading {
        gen: GenId,
    },
    Crashed {
        gen: GenId,
        status: Status,
    },
    Stopping,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Start the first generation. Signals and requests that came before
    /// it are handled first.
    Start,
    /// One read of the signalfd, in the order read (SIGCHLD is the loop's).
    Signals(Vec<SigNo>),
    /// `graceexec reload`, or `--watch`; `waiter` waits for the outcome.
    /// `canary`: the new generation gets only this share of new
    /// connections (per million) until promoted.
    Reload { waiter: Option<Waiter>, canary: Option<u32> },
    /// `graceexec promote`: the canary gets every new connection.
    Promote { waiter: Option<Waiter> },
    /// `graceexec rollback`: back to the previous generation, the canary's
    /// or the kept one.
    Rollback { waiter: Option<Waiter> },
    /// `graceexec stop`: waits for the exit, never escalates.
    Stop { waiter: Waiter },
    /// The `--check` command finished; `why` says how when it failed.
    CheckDone { ok: bool, why: String, output: Vec<String> },
    /// The generation could not be started; `code` is 126/127 for exec
    /// errors (the shells' convention), 1 otherwise.
    SpawnFailed { gen: GenId, code: i32, message: String },
    /// The generation counts as ready by `by`.
    Ready { gen: GenId, by: ReadySource },
    /// The generation, steered away from, has an empty accept queue and
    /// holds no connection any more.
    Drained { gen: GenId },
    /// Why the candidate is not ready yet, when that changes (the last
    /// probe's result); for `status` and the failure message.
    Waiting { gen: GenId, why: Waiting },
    /// The generation's main process `pid` exited. It is not reaped yet:
    /// a `Finish` now kills its group before the pid can be reused.
    Exited { gen: GenId, pid: i32, status: Status },
    /// A deadline from `next_deadline` has passed.
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Spawn {
        gen: GenId,
    },
    /// From now on, new connections go to these generations' sockets, in
    /// these shares (per million, summing to a million).
    Steer {
        shares: Vec<(GenId, u32)>,
    },
    /// Tell `Drained` once the generation has nothing left to serve.
    WatchDrain {
        gen: GenId,
    },
    StartProbe {
        gen: GenId,
    },
    StopProbe {
        gen: GenId,
    },
    /// To the generation's main process.
    Signal {
        gen: GenId,
        signal: SigNo,
    },
    /// SIGKILL to the generation's process group.
    KillGroup {
        gen: GenId,
    },
    /// The generation's main process has exited: SIGKILL to what is left
    /// of its group (before the main process is reaped, so the group id
    /// cannot have been reused), then its notify socket closes and the
    /// watchdog forgets it.
    Finish {
        gen: GenId,
    },
    Log {
        level: Level,
        msg: String,
    },
    /// Run the `--check` command; generation `gen` starts if it passes.
    RunCheck {
        gen: GenId,
    },
    /// Kill a running check (its deadline, a shutdown); the loop answers
    /// with `CheckDone` failed for `why`, with what it wrote so far.
    CancelCheck {
        why: String,
    },
    /// For `graceexec events` and the metrics.
    Note(Note),
    /// Answer a promote or rollback request.
    Answer {
        waiter: Waiter,
        verdict: Verdict,
    },
    /// Tell `waiters` how their reload ended.
    Report {
        waiters: Vec<Waiter>,
        outcome: Outcome,
    },
    /// sd_notify: a state change (if any) and a STATUS= line.
    Systemd {
        state: Option<SdState>,
        status: SdStatus,
    },
    /// Exit with `code`; `waiters` asked `stop` and hear the exit.
    Exit {
        code: i32,
        waiters: Vec<Waiter>,
    },
}
