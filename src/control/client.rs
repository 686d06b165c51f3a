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

use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::geteuid;
use serde_json::Value;

use super::paths::{self, default_dir, instances, socket_path};
use super::{ask, connect, human, num, ok, opt, status_text, table, text, Fail, Request, Session};

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_UNREACHABLE: i32 = 3;
pub const EXIT_TIMEOUT: i32 = 4;

/// `status` and `list` have no --timeout; an instance answers them at once.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Which instance a client subcommand talks to.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Name of the instance (default: the only one running)
    #[arg(long, value_name = "NAME", value_parser = super::paths::parse_name)]
    pub name: Option<String>,
    /// Path of its control socket, instead of --name
    #[arg(long, value_name = "PATH", conflicts_with = "name")]
    pub control: Option<PathBuf>,
}

pub fn reload(t: &Target, timeout: Duration, wait: bool) -> i32 {
    reload_in(t, &default_dir(), timeout, wait).emit()
}

pub fn status(t: &Target, json: bool) -> i32 {
    status_in(t, &default_dir(), json).emit()
}

pub fn stop(t: &Target, timeout: Duration) -> i32 {
    stop_in(t, &default_dir(), timeout, &mut |line| say(&mut std::io::stdout(), &line)).emit()
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

    fn emit(self) -> i32 {
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

struct Instance {
    /// For messages: the instance name, or the --control path.
    name: String,
    path: PathBuf,
}

fn resolve(t: &Target, dir: &Path, deadline: Instant) -> Result<Instance, Output> {
    if let Some(path) = &t.control {
        let stem = path.file_name().and_then(|f| f.to_str()).and_then(|f| f.strip_suffix(".sock"));
        let name = match stem.map(paths::parse_name) {
            Some(Ok(n)) => n,
            _ => path.display().to_string(),
        };
        return Ok(Instance { name, path: path.clone() });
    }
    if let Some(name) = &t.name {
        return Ok(Instance { name: name.clone(), path: socket_path(dir, name) });
    }
    let live: Vec<(String, PathBuf)> =
        instances(dir).into_iter().filter(|(_, p)| connect(p, deadline).is_ok()).collect();
    match live.len() {
        0 => Err(Output::fail(
            EXIT_UNREACHABLE,
            &format!("no graceexec instance is running (looked in {})", dir.display()),
        )),
        1 => {
            let (name, path) = live.into_iter().next().unwrap();
            Ok(Instance { name, path })
        }
        _ => {
            let names: Vec<&str> = live.iter().map(|(n, _)| n.as_str()).collect();
            Err(Output::fail(
                EXIT_UNREACHABLE,
                &format!(
                    "several instances are running: {}; pick one with --name",
                    names.join(", ")
                ),
            ))
        }
    }
}

/// The instance must run as us or root (or anyone, when we are root):
/// a socket someone else serves could answer with lies.
fn check_peer(inst: &Instance, stream: &UnixStream) -> Result<(), Output> {
    let me = geteuid();
    let cred = getsockopt(stream, sockopt::PeerCredentials).map_err(|e| {
        Output::fail(
            EXIT_UNREACHABLE,
            &format!("cannot check who serves {}: {e}", inst.path.display()),
        )
    })?;
    if me.is_root() || cred.uid() == me.as_raw() || cred.uid() == 0 {
        return Ok(());
    }
    Err(Output::fail(
        EXIT_UNREACHABLE,
        &format!("{} is served by uid {}, not by you or root", inst.path.display(), cred.uid()),
    ))
}

/// Whether a connect error means nothing is running there.
fn gone(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(nix::libc::ENOENT | nix::libc::ECONNREFUSED))
}

fn connect_error(inst: &Instance, e: &std::io::Error, timeout: Duration) -> Output {
    let path = inst.path.display();
    let name = &inst.name;
    let (code, msg) = match e.raw_os_error() {
        Some(nix::libc::ENOENT) => (
            EXIT_UNREACHABLE,
            format!("no instance named {name} is running (no control socket at {path})"),
        ),
        Some(nix::libc::ECONNREFUSED) => (
            EXIT_UNREACHABLE,
            format!("no instance named {name} is running (nothing answers on {path})"),
        ),
        Some(nix::libc::EACCES) => (
            EXIT_UNREACHABLE,
            format!("cannot connect to {path}: permission denied; it belongs to another user"),
        ),
        // EAGAIN: SO_SNDTIMEO ran out while its accept queue was full.
        _ if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            (EXIT_TIMEOUT, format!("{name} did not accept a connection within {}", human(timeout)))
        }
        _ => (EXIT_UNREACHABLE, format!("cannot connect to {path}: {e}")),
    };
    Output::fail(code, &msg)
}

fn fail_output(inst: &Instance, f: Fail, what: &str, timeout: Duration) -> Output {
    let name = &inst.name;
    match f {
        Fail::Timeout => Output::fail(
            EXIT_TIMEOUT,
            &format!(
                "no answer from {name} within {}; the {what} may still complete",
                human(timeout)
            ),
        ),
        Fail::Eof => Output::fail(
            EXIT_FAILED,
            &format!("{name} closed the connection without answering; see its log"),
        ),
        Fail::Io(e) => Output::fail(EXIT_FAILED, &format!("lost the connection to {name}: {e}")),
        Fail::Bad(l) => Output::fail(
            EXIT_FAILED,
            &format!("{name} answered something that is not graceexec protocol 1: {l}"),
        ),
    }
}

/// Resolve, connect, check the peer, send `request`.
fn open(
    t: &Target,
    dir: &Path,
    request: Request,
    what: &str,
    timeout: Duration,
) -> Result<(Instance, Session), Output> {
    let deadline = Instant::now() + timeout;
    let inst = resolve(t, dir, deadline)?;
    let stream = connect(&inst.path, deadline).map_err(|e| connect_error(&inst, &e, timeout))?;
    check_peer(&inst, &stream)?;
    let session = Session::send(stream, request, deadline)
        .map_err(|f| fail_output(&inst, f, what, timeout))?;
    Ok((inst, session))
}

/// The first reply line, or what to print when there is none. The reply
/// names the instance, which `--control PATH` alone does not: from then on
/// messages use that name.
fn first(
    inst: &mut Instance,
    s: &mut Session,
    what: &str,
    timeout: Duration,
) -> Result<Value, Output> {
    let v = s
        .next()
        .and_then(|v| v.ok_or(Fail::Eof))
        .map_err(|f| fail_output(inst, f, what, timeout))?;
    if let Some(name) = v.get("name").and_then(Value::as_str) {
        inst.name = name.to_string();
    }
    Ok(v)
}

pub(super) fn reload_in(t: &Target, dir: &Path, timeout: Duration, wait: bool) -> Output {
    let run = || -> Result<Output, Output> {
        let (mut inst, mut s) = open(t, dir, Request::Reload { wait }, "reload", timeout)?;
        let v = first(&mut inst, &mut s, "reload", timeout)?;
        Ok(reload_output(&inst.name, &v))
    };
    run().unwrap_or_else(|o| o)
}

pub(super) fn status_in(t: &Target, dir: &Path, json: bool) -> Output {
    let run = || -> Result<Output, Output> {
        let (mut inst, mut s) = open(t, dir, Request::Status, "status", STATUS_TIMEOUT)?;
        let v = first(&mut inst, &mut s, "status", STATUS_TIMEOUT)?;
        Ok(match (ok(&v), json) {
            (false, _) => refused(&inst.name, &v),
            (true, true) => Output::done(v.to_string()),
            (true, false) => Output { out: status_text(&v), ..Output::default() },
        })
    };
    run().unwrap_or_else(|o| o)
}

pub(super) fn stop_in(
    t: &Target,
    dir: &Path,
    timeout: Duration,
    progress: &mut dyn FnMut(String),
) -> Output {
    let mut run = || -> Result<Output, Output> {
        let (mut inst, mut s) = open(t, dir, Request::Stop, "stop", timeout)?;
        let v = first(&mut inst, &mut s, "stop", timeout)?;
        if !ok(&v) {
            return Ok(refused(&inst.name, &v));
        }
        let who = match num(&v, "pid") {
            Some(pid) => format!("{} (pid {pid})", inst.name),
            None => inst.name.clone(),
        };
        progress(format!("stopping {who}"));
        loop {
            match s.next() {
                Ok(Some(v)) if v.get("exited").is_some() => {
                    let status =
                        num(&v, "code").map(|c| format!(" (exit status {c})")).unwrap_or_default();
                    return Ok(Output::done(format!("{} stopped{status}", inst.name)));
                }
                Ok(Some(_)) => continue,
                // EOF: the control socket is close-on-exec, so graceexec is gone.
                Ok(None) => return Ok(Output::done(format!("{} stopped", inst.name))),
                Err(Fail::Timeout) => {
                    return Err(Output::fail(
                        EXIT_TIMEOUT,
                        &format!("{who} is still stopping after {}", human(timeout)),
                    ))
                }
                Err(f) => return Err(fail_output(&inst, f, "stop", timeout)),
            }
        }
    };
    run().unwrap_or_else(|o| o)
}

pub(super) fn list_in(dir: &Path, json: bool) -> Output {
    let mut found: Vec<(String, PathBuf, Value)> = Vec::new();
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
        match answer.and_then(|v| if ok(&v) { Ok(v) } else { Err(refused(&inst.name, &v)) }) {
            Ok(v) => found.push((inst.name, inst.path, v)),
            Err(e) => {
                o.code = o.code.max(e.code);
                o.err.extend(e.err);
            }
        }
    }
    if json {
        o.out.push(Value::Array(found.into_iter().map(|(_, _, v)| v).collect()).to_string());
    } else if !found.is_empty() {
        let mut rows =
            vec![["NAME", "PID", "GEN", "STATE", "SOCKETS", "CONTROL"].map(String::from).to_vec()];
        for (name, path, v) in &found {
            let gen = v["generations"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|g| text(g, "state") == Some("ready"))
                .filter_map(|g| num(g, "generation"))
                .max();
            let sockets: Vec<&str> = v["sockets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| text(s, "address"))
                .collect();
            rows.push(vec![
                name.clone(),
                opt(num(v, "pid")),
                opt(gen),
                text(v, "state").unwrap_or("-").to_string(),
                if sockets.is_empty() { "-".into() } else { sockets.join(",") },
                path.display().to_string(),
            ]);
        }
        o.out.extend(table(&rows, ""));
    }
    o
}

/// An error reply to status or stop.
fn refused(name: &str, v: &Value) -> Output {
    Output::fail(EXIT_FAILED, &format!("{name}: {}", text(v, "error").unwrap_or("request failed")))
}

pub(super) fn reload_output(name: &str, v: &Value) -> Output {
    if ok(v) && v.get("accepted").is_some() {
        return Output::done(format!("reload of {name} requested"));
    }
    if ok(v) {
        let line = format!(
            "reloaded {name}: generation {} (pid {}) ready after {} ms",
            opt(num(v, "generation")),
            opt(num(v, "pid")),
            opt(num(v, "ready_ms"))
        );
        return Output::done(line);
    }
    let mut msg =
        format!("reload of {name} failed: {}", text(v, "error").unwrap_or("unknown error"));
    if let Some(g) = num(v, "serving") {
        msg.push_str(&format!("; generation {g} keeps serving"));
    }
    let mut o = Output::fail(EXIT_FAILED, &msg);
    let lines: Vec<&str> =
        v["stderr"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !lines.is_empty() {
        o.err.push("graceexec: last lines of its output:".into());
        o.err.extend(lines.iter().map(|l| format!("  | {l}")));
    }
    o
}
