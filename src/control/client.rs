//! The client side: `graceexec reload|status|stop|list`.
//!
//! Exit codes:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the instance answered with a failure (reload failed, permission denied, ...) |
//! | 2 | usage error |
//! | 3 | no instance reachable: none running, several running and no --name, no control socket, nothing answering on it |
//! | 4 | no answer within --timeout; the request may still complete |

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::paths::{default_dir, instances};
use super::protocol::{Answer, Reply, Request};
use super::render::{human, list_row, reload_text, status_text, table};
use super::{ask, connect, Fail};

mod open;
pub(super) use open::open_session;
use open::{check_peer, connect_error, fail_output, gone, open, Instance};

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_UNREACHABLE: i32 = 3;
pub const EXIT_TIMEOUT: i32 = 4;

/// `status` and `list` have no --timeout; an instance answers them at once.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Which instance a command talks to.
#[derive(Clone, Copy, Debug)]
pub enum Which<'a> {
    /// The only one running.
    Only,
    Name(&'a str),
    Control(&'a Path),
}

pub fn reload(w: Which, timeout: Duration, wait: bool, canary: Option<f64>) -> i32 {
    reload_in(w, &default_dir(), timeout, Request::Reload { wait, canary }).emit()
}

/// `graceexec promote` and `rollback`: one answer, at once.
pub fn decide(w: Which, request: Request) -> i32 {
    decide_in(w, &default_dir(), request).emit()
}

/// How `status` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Prometheus,
}

pub fn status(w: Which, format: Format) -> i32 {
    status_in(w, &default_dir(), format).emit()
}

pub fn stop(w: Which, timeout: Duration) -> i32 {
    stop_in(w, &default_dir(), timeout, &mut |line| say(&mut std::io::stdout(), &line)).emit()
}

/// `graceexec upgrade`: the binary made absolute (the instance has its own
/// working directory), one answer once the new image has taken over.
pub fn upgrade(w: Which, binary: Option<&Path>, timeout: Duration) -> i32 {
    let binary = match binary.map(std::path::absolute).transpose() {
        Ok(b) => b.map(|p| p.to_string_lossy().into_owned()),
        Err(e) => {
            return Output::fail(EXIT_FAILED, &format!("cannot resolve --binary: {e}")).emit()
        }
    };
    upgrade_in(w, &default_dir(), Request::Upgrade { binary }, timeout).emit()
}

pub(super) fn upgrade_in(w: Which, dir: &Path, request: Request, timeout: Duration) -> Output {
    let run = || -> Result<Output, Output> {
        let (inst, _, r) = open(w, dir, request, "upgrade", timeout)?;
        let name = &inst.name;
        Ok(match r.answer {
            Answer::Upgraded { from, to, pid, generations } => {
                let s = if generations == 1 { "" } else { "s" };
                Output::done(format!(
                    "upgraded {name}: graceexec {from} → {to}, pid {pid}, {generations} generation{s} kept"
                ))
            }
            _ => refused(name, &r),
        })
    };
    run().unwrap_or_else(|o| o)
}

pub fn list(json: bool) -> i32 {
    list_in(&default_dir(), json).emit()
}

/// What a command prints and its exit code, so tests can look at it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Output {
    pub(super) code: i32,
    pub(super) out: Vec<String>,
    pub(super) err: Vec<String>,
}

impl Output {
    fn fail(code: i32, msg: &str) -> Output {
        Output { code, out: Vec::new(), err: vec![format!("graceexec: {msg}")] }
    }

    fn done(line: String) -> Output {
        Output { out: vec![line], ..Output::default() }
    }

    pub(super) fn emit(self) -> i32 {
        for l in &self.out {
            say(&mut std::io::stdout(), l);
        }
        for l in &self.err {
            say(&mut std::io::stderr(), l);
        }
        self.code
    }
}

/// Write errors are ignored: `graceexec status | head -1` must not panic.
fn say(w: &mut dyn Write, line: &str) {
    let _ = writeln!(w, "{line}");
}

fn refused(name: &str, r: &Reply) -> Output {
    let why = match &r.answer {
        Answer::Error { error } => error.clone(),
        other => format!("unexpected answer {other:?}"),
    };
    Output::fail(EXIT_FAILED, &format!("{name}: {why}"))
}

pub(super) fn reload_in(w: Which, dir: &Path, timeout: Duration, request: Request) -> Output {
    let run = || -> Result<Output, Output> {
        let (inst, _, r) = open(w, dir, request, "reload", timeout)?;
        Ok(reload_output(&inst.name, &r))
    };
    run().unwrap_or_else(|o| o)
}

pub(super) fn decide_in(w: Which, dir: &Path, request: Request) -> Output {
    let what = if request == Request::Promote { "promote" } else { "rollback" };
    let run = || -> Result<Output, Output> {
        let (inst, _, r) = open(w, dir, request, what, STATUS_TIMEOUT)?;
        let name = &inst.name;
        Ok(match r.answer {
            Answer::Promoted { generation, from } => Output::done(format!(
                "promoted {name}: generation {generation} gets every new connection; generation {from} stops"
            )),
            Answer::RolledBack { generation, from } => Output::done(format!(
                "rolled back {name}: generation {generation} gets every new connection; generation {from} stops"
            )),
            _ => refused(name, &r),
        })
    };
    run().unwrap_or_else(|o| o)
}

pub(super) fn reload_output(name: &str, r: &Reply) -> Output {
    match reload_text(name, r) {
        (Some(line), _) => Output::done(line),
        (None, err) => Output { code: EXIT_FAILED, out: Vec::new(), err },
    }
}

pub(super) fn status_in(w: Which, dir: &Path, format: Format) -> Output {
    let run = || -> Result<Output, Output> {
        let (inst, _, r) = open(w, dir, Request::Status, "status", STATUS_TIMEOUT)?;
        Ok(match (&r.answer, format) {
            (Answer::Status(_), Format::Json) => Output::done(r.line().trim_end().to_string()),
            (Answer::Status(s), Format::Text) => {
                Output { out: status_text(&inst.name, s), ..Output::default() }
            }
            (Answer::Status(s), Format::Prometheus) => {
                let text = crate::metrics::render(&inst.name, s, true);
                Output { out: text.lines().map(String::from).collect(), ..Output::default() }
            }
            _ => refused(&inst.name, &r),
        })
    };
    run().unwrap_or_else(|o| o)
}

pub(super) fn stop_in(
    w: Which,
    dir: &Path,
    timeout: Duration,
    progress: &mut dyn FnMut(String),
) -> Output {
    let mut run = || -> Result<Output, Output> {
        let (inst, mut s, r) = open(w, dir, Request::Stop, "stop", timeout)?;
        let Answer::Stopping { pid } = r.answer else {
            return Ok(refused(&inst.name, &r));
        };
        let who = format!("{} (pid {pid})", inst.name);
        progress(format!("stopping {who}"));
        loop {
            match s.next() {
                Ok(Some(Reply { answer: Answer::Exited { code }, .. })) => {
                    return Ok(Output::done(format!("{} stopped (exit status {code})", inst.name)))
                }
                Ok(Some(_)) => continue,
                // EOF: the control socket is close-on-exec, so graceexec is gone.
                Ok(None) => return Ok(Output::done(format!("{} stopped", inst.name))),
                Err(Fail::Timeout) => {
                    let msg = format!("{who} is still stopping after {}", human(timeout));
                    return Err(Output::fail(EXIT_TIMEOUT, &msg));
                }
                Err(f) => return Err(fail_output(&inst, f, "stop", timeout)),
            }
        }
    };
    run().unwrap_or_else(|o| o)
}

pub(super) fn list_in(dir: &Path, json: bool) -> Output {
    let mut found: Vec<(String, PathBuf, Reply)> = Vec::new();
    let mut o = Output::default();
    for (name, path) in instances(dir) {
        let inst = Instance { name, path };
        let deadline = Instant::now() + STATUS_TIMEOUT;
        let stream = match connect(&inst.path, deadline) {
            Ok(s) => s,
            Err(e) if gone(&e) => continue,
            Err(e) => {
                let e = connect_error(&inst, &e, STATUS_TIMEOUT);
                o.code = o.code.max(e.code);
                o.err.extend(e.err);
                continue;
            }
        };
        let answer = check_peer(&inst, &stream).and_then(|()| {
            ask(stream, Request::Status, deadline)
                .map_err(|f| fail_output(&inst, f, "status", STATUS_TIMEOUT))
        });
        // One instance that cannot be listed does not hide the others.
        match answer {
            Ok(r) if matches!(r.answer, Answer::Status(_)) => found.push((inst.name, inst.path, r)),
            Ok(r) => o.err.extend(refused(&inst.name, &r).err),
            Err(e) => {
                o.code = o.code.max(e.code);
                o.err.extend(e.err);
            }
        }
    }
    if found.is_empty() && o.err.is_empty() {
        // As `status` says it: exit 3, nothing to talk to.
        o.code = EXIT_UNREACHABLE;
        let msg = format!("no graceexec instance is running (looked in {})", dir.display());
        o.err.push(format!("graceexec: {msg}"));
    }
    if json {
        let all: Vec<serde_json::Value> = found
            .iter()
            .map(|(_, _, r)| serde_json::to_value(r).expect("a reply always serializes"))
            .collect();
        o.out.push(serde_json::Value::Array(all).to_string());
    } else if !found.is_empty() {
        let mut rows =
            vec![["NAME", "PID", "GEN", "STATE", "SOCKETS", "CONTROL"].map(String::from).to_vec()];
        for (name, path, r) in &found {
            if let Answer::Status(s) = &r.answer {
                rows.push(list_row(name, &path.display().to_string(), s));
            }
        }
        o.out.extend(table(&rows, ""));
    }
    o
}
