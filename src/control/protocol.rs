//! The control protocol, version 1, as types both ends share.
//!
//! One request per connection: the client sends one line of JSON, the
//! instance answers with one or more lines of JSON, each one object.
//! Unknown fields are ignored in both directions. Every line carries the
//! envelope `"graceexec":1`; every reply also `"ok"`, the instance's
//! `"name"`, and `"reply"`, which says what the rest of the line is.
//!
//! ```text
//! {"graceexec":1,"command":"reload","wait":true}    "wait" defaults to true; "canary":PCT
//! {"graceexec":1,"command":"promote"}
//! {"graceexec":1,"command":"rollback"}
//! {"graceexec":1,"command":"events","since":N}   "since" optional
//! {"graceexec":1,"command":"status"}
//! {"graceexec":1,"command":"stop"}
//! {"graceexec":1,"command":"upgrade","binary":PATH}    "binary" optional
//! ```
//!
//! | request | reply lines (`reply`) |
//! |---|---|
//! | reload | `reloaded` {generation, pid, ready_ms, share} or `reload_failed` {error, generation, serving, stderr}; with `"wait":false` at once `reload_accepted` |
//! | promote | `promoted` {generation, from} |
//! | rollback | `rolled_back` {generation, from} |
//! | events | `event` (the [`EventLine`] fields) per event, replayed from `since` then live, until the instance exits; `lagged` {missed} then EOF if the client does not keep up |
//! | status | `status` (the [`Status`] fields) |
//! | stop | `stopping` {pid} at once, then `exited` {code} when the instance exits |
//! | upgrade | `upgraded` {from, to, pid, generations} once the new image has taken everything over |
//! | anything wrong | `error` {error} |
//!
//! After `exited` the connection closes; the control socket is
//! close-on-exec, so EOF means the graceexec process is gone.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version this build speaks.
pub const VERSION: u64 = 1;

/// What a client asked for.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Start a new generation; with `wait`, answer once it is ready or
    /// failed. `canary`: its share of new connections, in percent.
    Reload {
        wait: bool,
        canary: Option<f64>,
    },
    /// Give the canary every new connection.
    Promote,
    /// Back to the previous generation.
    Rollback,
    /// Follow the instance: its events from `since` (a sequence number)
    /// on, then live, until it exits.
    Events {
        since: Option<u64>,
    },
    Status,
    /// Shut down; the connection is kept open until graceexec exits.
    Stop,
    /// Re-execute graceexec in place from `binary` (an absolute path), or
    /// from the path of its own binary.
    Upgrade {
        binary: Option<String>,
    },
}

/// What the instance answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Answer {
    Error {
        error: String,
    },
    Reloaded {
        generation: u32,
        pid: Option<i32>,
        ready_ms: u64,
        /// A canary's share of new connections, in percent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        share: Option<f64>,
    },
    /// The canary `generation` gets every new connection; `from` drains.
    Promoted {
        generation: u32,
        from: u32,
    },
    /// Back to `generation`; `from` drains.
    RolledBack {
        generation: u32,
        from: u32,
    },
    ReloadFailed {
        error: String,
        /// The generation that failed; none when nothing was started.
        generation: Option<u32>,
        /// The generation that keeps serving, if any.
        serving: Option<u32>,
        /// The last lines the failed generation or check wrote.
        stderr: Vec<String>,
    },
    ReloadAccepted,
    Status(Box<Status>),
    Event(Box<EventLine>),
    /// The subscriber did not keep up: `missed` events were dropped, and
    /// the connection closes.
    Lagged {
        missed: u64,
    },
    Stopping {
        pid: u32,
    },
    /// graceexec runs `to` now, as the same `pid`, with `generations`
    /// carried over.
    Upgraded {
        from: String,
        to: String,
        pid: u32,
        generations: usize,
    },
    Exited {
        code: i32,
    },
}

/// One reply line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub graceexec: u64,
    pub ok: bool,
    /// The instance's name: a client that came by `--control PATH` learns
    /// it here.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(flatten)]
    pub answer: Answer,
}

impl Reply {
    pub fn new(answer: Answer) -> Reply {
        let ok = !matches!(answer, Answer::Error { .. } | Answer::ReloadFailed { .. });
        Reply { graceexec: VERSION, ok, name: None, answer }
    }

    pub fn error(message: impl Into<String>) -> Reply {
        Reply::new(Answer::Error { error: message.into() })
    }

    pub fn line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("a reply always serializes");
        line.push('\n');
        line
    }
}

/// One event of `graceexec events`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventLine {
    /// Increases by one per event; `--since` asks for those after it.
    pub seq: u64,
    /// CLOCK_MONOTONIC, milliseconds.
    pub mono_ms: u64,
    /// Wall clock, RFC 3339, UTC.
    pub time: String,
    /// reload_requested, reload_merged, reload_started, reload_ready,
    /// reload_failed, started, ready, stopping, drained, exited,
    /// restart_scheduled, shares, promoted, rolled_back, upgraded.
    pub event: String,
    pub generation: Option<u32>,
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<u64>,
    /// Why a reload failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// How a generation exited ("status 0", "signal SIGKILL"), or the
    /// signal that stops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub how: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// (generation, percent of new connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<Vec<(u32, f64)>>,
    /// The generation that stops, after a promote or rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u32>,
    /// An upgrade's versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `graceexec status --json`: one instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub version: String,
    pub uptime_ms: u64,
    /// starting, serving, reloading, recovering or stopping.
    pub state: String,
    pub command: Vec<String>,
    pub sockets: Vec<SocketStatus>,
    pub generations: Vec<GenStatus>,
    pub last_reload: Option<LastReload>,
    pub restarts: u32,
    /// Reloads that ended with the new generation ready, and failed.
    #[serde(default)]
    pub reloads_ok: u64,
    #[serde(default)]
    pub reloads_failed: u64,
    /// Wall-clock time of the last reload's end (Unix seconds).
    #[serde(default)]
    pub last_reload_unix: Option<f64>,
    /// Wall-clock time of the end of the last reload that succeeded.
    #[serde(default)]
    pub last_reload_ok_unix: Option<f64>,
    /// The last generations that exited, oldest first.
    #[serde(default)]
    pub exited: Vec<ExitedStatus>,
    /// While recovering: when the restart is due.
    #[serde(default)]
    pub restart_in_ms: Option<u64>,
    /// How long the generation `--keep-old` kept stays.
    #[serde(default)]
    pub kept_for_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SocketStatus {
    pub name: String,
    pub address: String,
    /// Each generation has its own socket of a SO_REUSEPORT group at this
    /// address, and new connections are steered; else one shared socket.
    #[serde(default)]
    pub steered: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenStatus {
    pub generation: u32,
    /// Its main process.
    pub pid: Option<i32>,
    /// The process graceexec started, whose process group the generation
    /// is; another pid than `pid` after a MAINPID= hand-off.
    #[serde(default)]
    pub leader: Option<i32>,
    /// starting, ready or draining.
    pub state: String,
    /// candidate, canary, serving, kept or draining.
    #[serde(default)]
    pub phase: String,
    pub age_ms: u64,
    pub ready_ms: Option<u64>,
    /// The last STATUS= it sent over sd_notify.
    pub status: Option<String>,
    /// While it is starting: what it is not ready for yet (the last probe
    /// result, or no READY=1 yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// Steered sockets: the index of its own socket in each group (or of
    /// the one it shares, when none was left).
    #[serde(default)]
    pub socket: Option<u32>,
    /// The percentage of new connections steered to it.
    #[serde(default)]
    pub share: Option<f64>,
    /// Connections waiting in its sockets' accept queues.
    #[serde(default)]
    pub queued: Option<u32>,
    /// Connections on the steered ports its processes hold open.
    #[serde(default)]
    pub connections: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastReload {
    pub ok: bool,
    pub generation: Option<u32>,
    #[serde(default)]
    pub ready_ms: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
    pub ago_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExitedStatus {
    pub generation: u32,
    pub pid: i32,
    /// e.g. "status 1", "signal SIGKILL".
    pub how: String,
    /// The shell's code for it: the status, or 128+N for signal N.
    pub code: i32,
    pub ago_ms: u64,
}

/// The request line a client sends (without the newline).
pub fn request_line(request: Request) -> String {
    let v = match request {
        Request::Reload { wait, canary: None } => {
            serde_json::json!({"graceexec": VERSION, "command": "reload", "wait": wait})
        }
        Request::Reload { wait, canary: Some(pct) } => serde_json::json!(
            {"graceexec": VERSION, "command": "reload", "wait": wait, "canary": pct}
        ),
        Request::Promote => serde_json::json!({"graceexec": VERSION, "command": "promote"}),
        Request::Events { since } => {
            serde_json::json!({"graceexec": VERSION, "command": "events", "since": since})
        }
        Request::Rollback => serde_json::json!({"graceexec": VERSION, "command": "rollback"}),
        Request::Status => serde_json::json!({"graceexec": VERSION, "command": "status"}),
        Request::Stop => serde_json::json!({"graceexec": VERSION, "command": "stop"}),
        Request::Upgrade { binary } => {
            serde_json::json!({"graceexec": VERSION, "command": "upgrade", "binary": binary})
        }
    };
    v.to_string()
}

/// Parse one request line. The error is the message for the error reply:
/// each says what to send instead.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| {
        format!("the request is not valid JSON ({e}); send one JSON object per line")
    })?;
    let obj = v.as_object().ok_or("the request must be a JSON object")?;
    match obj.get("graceexec") {
        Some(n) if n.as_u64() == Some(VERSION) => {}
        Some(n) => {
            return Err(format!(
                "protocol version {n} is not supported; this instance speaks {VERSION}"
            ))
        }
        None => {
            return Err(format!(
                "the request has no \"graceexec\" field; send \"graceexec\":{VERSION}"
            ))
        }
    }
    match obj.get("command").and_then(Value::as_str) {
        Some("reload") => {
            let wait = match obj.get("wait") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(wait)) => *wait,
                Some(_) => return Err("\"wait\" must be true or false".into()),
            };
            let canary = match obj.get("canary") {
                None | Some(Value::Null) => None,
                Some(v) => match v.as_f64() {
                    Some(pct) if pct > 0.0 && pct < 100.0 => Some(pct),
                    _ => return Err("\"canary\" must be a percentage above 0 and below 100".into()),
                },
            };
            Ok(Request::Reload { wait, canary })
        }
        Some("promote") => Ok(Request::Promote),
        Some("events") => match obj.get("since") {
            None | Some(Value::Null) => Ok(Request::Events { since: None }),
            Some(v) => match v.as_u64() {
                Some(n) => Ok(Request::Events { since: Some(n) }),
                None => Err("\"since\" must be an event sequence number".into()),
            },
        },
        Some("rollback") => Ok(Request::Rollback),
        Some("status") => Ok(Request::Status),
        Some("stop") => Ok(Request::Stop),
        Some("upgrade") => match obj.get("binary") {
            None | Some(Value::Null) => Ok(Request::Upgrade { binary: None }),
            Some(Value::String(p)) if p.starts_with('/') => {
                Ok(Request::Upgrade { binary: Some(p.clone()) })
            }
            Some(_) => Err("\"binary\" must be an absolute path".into()),
        },
        Some(other) => Err(format!(
            "unknown command \"{other}\"; this instance knows reload, promote, rollback, events, status, stop and upgrade"
        )),
        None => {
            Err("the request has no \"command\" string (reload, promote, rollback, events, status, stop or upgrade)".into())
        }
    }
}

/// Parse one reply line; None if it is not protocol 1.
pub fn parse_reply(line: &str) -> Option<Reply> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v.get("graceexec").and_then(Value::as_u64) != Some(VERSION) {
        return None;
    }
    serde_json::from_value(v).ok()
}
