//! The control protocol, version 1, as types both ends share.
//!
//! One request per connection: the client sends one line of JSON, the
//! instance answers with one or more lines of JSON, each one object.
//! Unknown fields are ignored in both directions. Every line carries the
//! envelope `"graceexec":1`; every reply also `"ok"`, the instance's
//! `"name"`, and `"reply"`, which says what the rest of the line is.
//!
//! ```text
//! {"graceexec":1,"command":"reload","wait":true}    "wait" defaults to true
//! {"graceexec":1,"command":"status"}
//! {"graceexec":1,"command":"stop"}
//! ```
//!
//! | request | reply lines (`reply`) |
//! |---|---|
//! | reload | `reloaded` {generation, pid, ready_ms} or `reload_failed` {error, generation, serving, stderr}; with `"wait":false` at once `reload_accepted` |
//! | status | `status` (the [`Status`] fields) |
//! | stop | `stopping` {pid} at once, then `exited` {code} when the instance exits |
//! | anything wrong | `error` {error} |
//!
//! After `exited` the connection closes; the control socket is
//! close-on-exec, so EOF means the graceexec process is gone.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version this build speaks.
pub const VERSION: u64 = 1;

/// What a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Start a new generation; with `wait`, answer once it is ready or failed.
    Reload {
        wait: bool,
    },
    Status,
    /// Shut down; the connection is kept open until graceexec exits.
    Stop,
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
    Stopping {
        pid: u32,
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
    /// The last generations that exited, oldest first.
    #[serde(default)]
    pub exited: Vec<ExitedStatus>,
    /// While recovering: when the restart is due.
    #[serde(default)]
    pub restart_in_ms: Option<u64>,
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
        Request::Reload { wait } => {
            serde_json::json!({"graceexec": VERSION, "command": "reload", "wait": wait})
        }
        Request::Status => serde_json::json!({"graceexec": VERSION, "command": "status"}),
        Request::Stop => serde_json::json!({"graceexec": VERSION, "command": "stop"}),
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
        Some("reload") => match obj.get("wait") {
            None | Some(Value::Null) => Ok(Request::Reload { wait: true }),
            Some(Value::Bool(wait)) => Ok(Request::Reload { wait: *wait }),
            Some(_) => Err("\"wait\" must be true or false".into()),
        },
        Some("status") => Ok(Request::Status),
        Some("stop") => Ok(Request::Stop),
        Some(other) => {
            Err(format!("unknown command \"{other}\"; this instance knows reload, status and stop"))
        }
        None => Err("the request has no \"command\" string (reload, status or stop)".into()),
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
