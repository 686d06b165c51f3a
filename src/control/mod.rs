//! The control channel: `graceexec reload|status|stop|list` talk to a
//! running instance over its unix stream control socket.
//!
//! # Protocol (version 1)
//!
//! One request per connection. The client sends one line of JSON; the
//! instance answers with one or more lines of JSON, each a single object.
//! Unknown fields are ignored in both directions.
//!
//! Requests:
//!
//! ```text
//! {"graceexec":1,"command":"reload","wait":true}    "wait" defaults to true
//! {"graceexec":1,"command":"status"}
//! {"graceexec":1,"command":"stop"}
//! ```
//!
//! A request whose `"graceexec"` is not 1 is answered with the error
//! `protocol version N is not supported; this instance speaks 1`.
//!
//! Every reply line has `"graceexec":1`, `"ok":true|false`, the instance's
//! `"name"` (added by `Server::reply`), and `"error":"..."` when `ok` is
//! false.
//!
//! - reload, success: `{"graceexec":1,"ok":true,"generation":3,"pid":4242,"ready_ms":37,
//!   "name":"api"}`
//! - reload, failure: `{"graceexec":1,"ok":false,"error":"generation 3 (pid 4242) exited
//!   with status 1 before it was ready","generation":3,"serving":2,"stderr":["last","lines"],"name":"api"}`
//!   (`serving` may be null, `stderr` may be empty)
//! - reload with `"wait":false`: `{"graceexec":1,"ok":true,"accepted":true,"name":"api"}`
//! - status: `{"graceexec":1,"ok":true,"pid":100,"version":"0.1.0",
//!   "uptime_ms":123,"state":"serving","command":["./server","--flag"],
//!   "sockets":[{"name":"tcp-8080","address":"127.0.0.1:8080"}],
//!   "generations":[{"generation":2,"pid":4242,"state":"ready","age_ms":5000,
//!   "ready_ms":37,"status":null}],"last_reload":null,"restarts":0,"name":"api"}`;
//!   instance state: starting, serving, reloading, recovering or stopping;
//!   generation state: starting, ready or draining; `ready_ms` may be null;
//!   `last_reload` is null, `{"ok":true,"generation":2,"ready_ms":37,"ago_ms":4000}`
//!   or `{"ok":false,"generation":3,"error":"...","ago_ms":10}`.
//! - stop: `{"graceexec":1,"ok":true,"stopping":true,"pid":100,"name":"api"}` at once, then
//!   `{"graceexec":1,"ok":true,"exited":true,"code":0,"name":"api"}` when the instance
//!   exits, then the connection closes. The control socket is
//!   close-on-exec, so EOF means the graceexec process is gone.
//!
//! Only graceexec's own effective uid and root may connect (checked with
//! SO_PEERCRED); anyone else gets `permission denied`. A connection must
//! send its request within 5 seconds; a request line is at most 64 KiB.

pub mod client;
pub mod paths;
pub mod server;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

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

/// A reply line saying what went wrong.
pub fn error_reply(message: &str) -> Value {
    json!({"graceexec": VERSION, "ok": false, "error": message})
}

/// The request line a client sends (without the newline).
pub fn request_line(request: Request) -> String {
    let v = match request {
        Request::Reload { wait } => {
            json!({"graceexec": VERSION, "command": "reload", "wait": wait})
        }
        Request::Status => json!({"graceexec": VERSION, "command": "status"}),
        Request::Stop => json!({"graceexec": VERSION, "command": "stop"}),
    };
    v.to_string()
}

/// Parse one request line. The error is the message for the error reply.
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
    let command = obj.get("command").and_then(Value::as_str);
    match command {
        Some("reload") => {
            let wait = match obj.get("wait") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err("\"wait\" must be true or false".into()),
            };
            Ok(Request::Reload { wait })
        }
        Some("status") => Ok(Request::Status),
        Some("stop") => Ok(Request::Stop),
        Some(other) => {
            Err(format!("unknown command \"{other}\"; this instance knows reload, status and stop"))
        }
        None => Err("the request has no \"command\" string (reload, status or stop)".into()),
    }
}

// The exchange of lines on a socket, for the client and for the server's
// check whether an instance is already running.

fn connect(path: &Path, deadline: Instant) -> std::io::Result<UnixStream> {
    paths::check_len(path)
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e.to_string()))?;
    let left = remaining(deadline).ok_or(ErrorKind::TimedOut)?;
    crate::sockfile::connect_unix(path, left)
}

/// Time left before `deadline`, or None when it has passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    Some(deadline.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
}

/// Why no (further) reply line came.
#[derive(Debug)]
enum Fail {
    Timeout,
    Eof,
    Io(std::io::Error),
    Bad(String),
}

/// One request on a connected socket, and its reply lines.
struct Session {
    reader: BufReader<UnixStream>,
    deadline: Instant,
}

impl Session {
    fn send(stream: UnixStream, request: Request, deadline: Instant) -> Result<Session, Fail> {
        let mut line = request_line(request);
        line.push('\n');
        let left = remaining(deadline).ok_or(Fail::Timeout)?;
        stream.set_write_timeout(Some(left)).map_err(Fail::Io)?;
        match (&stream).write_all(line.as_bytes()) {
            // An instance that refuses us (another uid, too many
            // connections) answers and closes at once, maybe before our
            // request is out: its reply is still waiting to be read.
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
            other => other.map_err(io_fail)?,
        }
        Ok(Session { reader: BufReader::new(stream), deadline })
    }

    /// The next reply line; `Ok(None)` at EOF.
    fn next(&mut self) -> Result<Option<Value>, Fail> {
        let mut line = String::new();
        let left = remaining(self.deadline).ok_or(Fail::Timeout)?;
        self.reader.get_ref().set_read_timeout(Some(left)).map_err(Fail::Io)?;
        match self.reader.read_line(&mut line) {
            // Ok(n > 0): a whole line, or the last bytes before EOF.
            Ok(0) => return Ok(None),
            Ok(_) => {}
            // Closing with unread data makes the reader's EOF a reset.
            Err(e) if e.kind() == ErrorKind::ConnectionReset && line.is_empty() => return Ok(None),
            Err(e) => return Err(io_fail(e)),
        }
        // Quoted in the error, shortened: it may be anything at all.
        let bad = || Fail::Bad(line.trim_end().chars().take(200).collect());
        let v: Value = serde_json::from_str(&line).map_err(|_| bad())?;
        // Also false for anything but an object.
        if v.get("graceexec").and_then(Value::as_u64) != Some(VERSION) {
            return Err(bad());
        }
        Ok(Some(v))
    }
}

fn io_fail(e: std::io::Error) -> Fail {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Fail::Timeout,
        _ => Fail::Io(e),
    }
}

/// Send one request and read one reply line (used by the server's check
/// for a live instance, too).
fn ask(stream: UnixStream, request: Request, deadline: Instant) -> Result<Value, Fail> {
    Session::send(stream, request, deadline)?.next()?.ok_or(Fail::Eof)
}

// Replies as a person reads them (`graceexec status`, `list`).

fn ok(v: &Value) -> bool {
    v.get("ok").and_then(Value::as_bool) == Some(true)
}

fn num(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn opt(n: Option<u64>) -> String {
    n.map_or_else(|| "-".into(), |n| n.to_string())
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// An age in whole seconds, as `4m 1s`.
fn age(ms: u64) -> String {
    human(Duration::from_secs((ms + 500) / 1000))
}

/// Columns padded to their widest cell, two spaces apart.
fn table(rows: &[Vec<String>], indent: &str) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> =
                r.iter().enumerate().map(|(c, s)| format!("{s:<w$}", w = width[c])).collect();
            format!("{indent}{}", cells.join("  ").trim_end())
        })
        .collect()
}

fn status_text(v: &Value) -> Vec<String> {
    let restarts = num(v, "restarts").unwrap_or(0);
    let mut out = vec![format!(
        "{}: pid {}, up {}, state {}, {restarts} restart{}",
        text(v, "name").unwrap_or("?"),
        opt(num(v, "pid")),
        num(v, "uptime_ms").map_or_else(|| "-".into(), age),
        text(v, "state").unwrap_or("-"),
        if restarts == 1 { "" } else { "s" },
    )];
    let command: Vec<&str> =
        v["command"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    out.push(format!("  command: {}", command.join(" ")));
    let sockets: Vec<Vec<String>> = v["sockets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            vec![text(s, "name").unwrap_or("-").into(), text(s, "address").unwrap_or("-").into()]
        })
        .collect();
    out.extend(table(&sockets, "  "));
    let gens = v["generations"].as_array().map(Vec::as_slice).unwrap_or_default();
    if gens.is_empty() {
        out.push("  no generation running".into());
    } else {
        let mut rows = vec![["GEN", "PID", "STATE", "AGE", "READY AFTER", "STATUS"]
            .map(String::from)
            .to_vec()];
        for g in gens {
            rows.push(vec![
                opt(num(g, "generation")),
                opt(num(g, "pid")),
                text(g, "state").unwrap_or("-").into(),
                num(g, "age_ms").map_or_else(|| "-".into(), age),
                num(g, "ready_ms").map_or_else(|| "-".into(), |ms| format!("{ms} ms")),
                text(g, "status").unwrap_or("-").into(),
            ]);
        }
        out.extend(table(&rows, "  "));
    }
    let last = &v["last_reload"];
    out.push(match last.get("ok").and_then(Value::as_bool) {
        None => "last reload: none".into(),
        Some(true) => format!(
            "last reload: generation {} ready after {} ms, {} ago",
            opt(num(last, "generation")),
            opt(num(last, "ready_ms")),
            num(last, "ago_ms").map_or_else(|| "?".into(), age)
        ),
        Some(false) => format!(
            "last reload: failed {} ago: {}",
            num(last, "ago_ms").map_or_else(|| "?".into(), age),
            text(last, "error").unwrap_or("unknown error")
        ),
    });
    out
}

#[cfg(test)]
mod tests;
