//! Reaching an instance: which socket a command means, connecting with
//! a deadline, checking who serves it (SO_PEERCRED), sending the request
//! and reading the first reply line; and what to print when any of that
//! fails.

use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::geteuid;

use super::super::paths::{self, instances, socket_path};
use super::super::protocol::{Reply, Request};
use super::super::render::human;
use super::super::{connect, Fail, Session};
use super::{Output, Which, EXIT_FAILED, EXIT_TIMEOUT, EXIT_UNREACHABLE};

pub(super) struct Instance {
    /// For messages: the instance name, or the --control path.
    pub(super) name: String,
    pub(super) path: PathBuf,
}

pub(super) fn resolve(w: Which, dir: &Path, deadline: Instant) -> Result<Instance, Output> {
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
pub(super) fn check_peer(inst: &Instance, stream: &UnixStream) -> Result<(), Output> {
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
pub(super) fn gone(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(nix::libc::ENOENT | nix::libc::ECONNREFUSED))
}

pub(super) fn connect_error(inst: &Instance, e: &std::io::Error, timeout: Duration) -> Output {
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

pub(super) fn fail_output(inst: &Instance, f: Fail, what: &str, timeout: Duration) -> Output {
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
pub(super) fn open(
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
pub(in crate::control) struct Opened {
    pub(in crate::control) session: Session,
    /// The first reply line, already read.
    pub(in crate::control) pending: Option<Reply>,
}

/// `open`, for a command that reads on (`events`); on failure what it
/// prints is printed, and the exit code returned.
pub(in crate::control) fn open_session(
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
