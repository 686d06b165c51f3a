//! The supervisor's vocabulary: what it is told (events), what it decides
//! (actions), and how processes end.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::log::Level;

use super::GenId;

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
            Status::Signal(s) => match Signal::try_from(s) {
                Ok(sig) => write!(f, "signal {}", sig.as_str()),
                Err(_) => write!(f, "signal {s}"),
            },
        }
    }
}

/// What counts as ready under `--ready`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadyPolicy {
    Notify,
    Delay(Duration),
    Probe,
    /// No `--ready`: READY=1 or 1 s alive, whichever comes first.
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadySource {
    Notify,
    Probe,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub ready: ReadyPolicy,
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
    pub stop_signal: Signal,
    pub restart: bool,
    /// A `--check` command runs before each reload.
    pub check: bool,
}

/// Whoever asked for a reload and waits for its outcome (a control
/// connection). Signals ask without waiting.
pub type Waiter = u64;

/// How a reload ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ready {
        gen: GenId,
        pid: i32,
        took: Duration,
    },
    /// `gen` is None when nothing was started (a failed check, a shutdown);
    /// `serving` is the generation that keeps serving, if any.
    Failed {
        gen: Option<GenId>,
        why: String,
        serving: Option<GenId>,
    },
}

/// What graceexec tells its own service manager (sd_notify(3)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SdState {
    Ready,
    Reloading,
    Stopping,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Reload {
        waiter: Option<Waiter>,
    },
    /// The `--check` command finished; `why` says how when it failed.
    CheckDone {
        ok: bool,
        why: String,
    },
    Shutdown,
    Forward(Signal),
    Spawned {
        gen: GenId,
        pid: i32,
    },
    SpawnFailed {
        gen: GenId,
        code: i32,
        message: String,
    },
    Ready {
        gen: GenId,
        by: ReadySource,
    },
    Exited {
        pid: i32,
        status: Status,
    },
    /// A deadline from `next_deadline` has passed.
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Spawn {
        gen: GenId,
    },
    StartProbe {
        gen: GenId,
        pid: i32,
    },
    StopProbe {
        gen: GenId,
    },
    Signal {
        pid: i32,
        signal: Signal,
    },
    /// SIGKILL to the process group led by `pid`.
    KillGroup {
        pid: i32,
    },
    /// The generation is gone: close its notify socket.
    Release {
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
    /// Abandon a running check (shutdown).
    CancelCheck,
    /// Tell `waiters` how their reload ended.
    Report {
        waiters: Vec<Waiter>,
        outcome: Outcome,
    },
    /// sd_notify: a state change (if any) and a STATUS= line.
    Systemd {
        state: Option<SdState>,
        status: String,
    },
    Exit {
        code: i32,
    },
}
