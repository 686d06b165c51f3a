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

use super::paths::{self, default_dir, instances, socket_path};
use super::protocol::{Answer, Reply, Request};
use super::render::{human, list_row, reload_text, status_text, table};
use super::{ask, connect, Fail, Session};

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

struct Instance {
    /// For messages: the instance name, or the --control path.
    name: String,
    path: PathBuf,
}

fn resolve(w: Which, dir: &Path, deadline: Instant) -> Result<Instance, Output> {
    match w {
        Which::Control(path) => {
            let stem =
                path.file_name().and_then(|f| f.to_str()).and_then(|f| f.strip_suffix(".sock"));
            let name = match stem.map(paths::parse_name) {
                Some(Ok(n)) => n,
                _ => path.display().to_string(),
            };
            Ok(Instance { name, path: path.to_path_buf() })
        }
        Which::Name(name) => Ok(Instance { name: name.into(), path: socket_path(dir, name) }),
        Which::Only => {
            let live: Vec<(String, PathBuf)> =
                instances(dir).into_iter().filter(|(_, p)| connect(p, deadline).is_ok()).collect();
            match live.len() {
                0 => Err(Output::fail(
                    EXIT_UNREACHABLE,
                    &format!("no graceexec instance is running (looked in {})", dir.display()),
                )),
                1 => {
                    let (name, path) = live.into_iter().next().expect("one");
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
    }
}

/// The instance must run as us or root (or anyone, when we are root):
/// a socket someone else serves could answer with lies.
fn check_peer(inst: &Instance, stream: &UnixStream) -> Result<(), Output> {
    let me = geteuid();
    let cred = getsockopt(stream, sockopt::PeerCredentials).map_err(|e| {
        let path = inst.path.display();
        Output::fail(EXIT_UNREACHABLE, &format!("cannot check who serves {path}: {e}"))
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
    let msg = match f {
        Fail::Timeout => {
            let t = human(timeout);
            let msg = format!("no answer from {name} within {t}; the {what} may still complete");
            return Output::fail(EXIT_TIMEOUT, &msg);
        }
        Fail::Eof => format!("{name} closed the connection without answering; see its log"),
        Fail::Io(e) => format!("lost the connection to {name}: {e}"),
        Fail::Bad(l) => format!("{name} answered something that is not graceexec protocol 1: {l}"),
    };
    Output::fail(EXIT_FAILED, &msg)
}

/// Resolve, connect, check the peer, send `request`, read the first reply
/// line. The reply names the instance, which `--control PATH` alone does
/// not: from then on messages use that name.
fn open(
    w: Which,
    dir: &Path,
    request: Request,
    what: &str,
    timeout: Duration,
) -> Result<(Instance, Session, Reply), Output> {
    let deadline = Instant::now() + timeout;
    let mut inst = resolve(w, dir, deadline)?;
    let stream = connect(&inst.path, deadline).map_err(|e| connect_error(&inst, &e, timeout))?;
    check_peer(&inst, &stream)?;
    let mut s = Session::send(stream, request, deadline)
        .map_err(|f| fail_output(&inst, f, what, timeout))?;
    let first = s
        .next()
        .and_then(|v| v.ok_or(Fail::Eof))
        .map_err(|f| fail_output(&inst, f, what, timeout))?;
    if let Some(name) = &first.name {
        inst.name.clone_from(name);
    }
    Ok((inst, s, first))
}

/// A request whose answer is read line by line by the caller.
pub(super) struct Opened {
    pub(super) session: Session,
    /// The first reply line, already read.
    pub(super) pending: Option<Reply>,
}

/// `open`, for a command that reads on (`events`); on failure what it
/// prints is printed, and the exit code returned.
pub(super) fn open_session(
    w: Which,
    dir: &Path,
    request: Request,
    timeout: Duration,
) -> Result<(String, Opened), i32> {
    match open(w, dir, request, "request", timeout) {
        Ok((inst, session, first)) => Ok((inst.name, Opened { session, pending: Some(first) })),
        Err(o) => Err(o.emit()),
    }
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
