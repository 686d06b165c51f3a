//! `graceexec upgrade`: graceexec re-executes itself in place, as the same
//! pid, with every socket, generation, pipe and connection carried over.
//!
//! 1. Only a settled instance is carried: serving, with any generations
//!    draining or kept, and no reload, check or probe under way (their
//!    waiters and timers would each need a handover, for a state that
//!    lasts seconds). Otherwise the request is refused with what to wait
//!    for, and nothing changes.
//! 2. The new binary runs once as a dry run (`graceexec __upgrade-check`,
//!    the document at fd 3): it must read the document and answer
//!    `ok VERSION TOKEN`, the token being a random number in the document
//!    (a program that only prints `ok` would pass otherwise, and end the
//!    instance once executed). A binary that is missing, not executable, for another
//!    architecture, that cannot read this document version, or crashes,
//!    is refused with its reason. The dry run is a child like any other:
//!    the loop goes on while it runs, and reaps it.
//! 3. The document is written again (the state may have moved during the
//!    dry run) to a memfd; the fds it names lose FD_CLOEXEC; execve. If
//!    execve fails, the flags are set back and this image carries on.
//! 4. The new image (resume.rs) takes everything back and answers the
//!    client. If it cannot, it goes back to the previous binary through an
//!    fd opened before the exec, which takes everything back in turn and
//!    answers with the reason.
//!
//! Signals stay blocked across execve (the mask is kept, and what is
//! pending stays pending for the new image's signalfd); children that
//! exit meanwhile stay zombies until it reaps them. Generations never
//! notice: their parent, its pid and their PR_SET_PDEATHSIG are unchanged
//! (prctl(2): the death signal is for the parent's exit, not its exec),
//! and the watchdog's pipe never sees EOF.

mod doc;
mod out;
mod resume;

use std::ffi::{CString, OsStr, OsString};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{open, OFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;

pub use doc::{CHECK_MODE, RESUME_FD};
pub use resume::{check_main, resume};

use super::Runtime;
use crate::carry::{self, Handed};
use crate::config::Config;
use crate::control::protocol::{Answer, Reply};
use crate::control::server::ConnId;
use crate::log;
use crate::outbox::{self, Stream};
use crate::output::{self, Captured};
use crate::supervisor::Status;
use crate::sys::spawn;

/// How long the dry run has to answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// A dry run under way.
pub(super) struct Pending {
    requester: ConnId,
    binary: PathBuf,
    pid: i32,
    /// What it must say back to show that it read the document.
    token: u64,
    out: Captured,
    deadline: Instant,
}

impl Pending {
    pub(super) fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.out.poll_fds().into_iter().next()
    }

    pub(super) fn read_available(&mut self) {
        self.out.read_available();
    }

    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    pub(super) fn pid(&self) -> i32 {
        self.pid
    }
}

/// The binary graceexec runs from, by its path: the file now there after
/// a deploy replaced it (readlink gives the old inode's path with
/// " (deleted)" appended once it was replaced by a rename).
fn own_binary() -> PathBuf {
    let link = std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| "/proc/self/exe".into());
    let bytes = link.as_os_str().as_bytes();
    match bytes.strip_suffix(b" (deleted)") {
        Some(b) => PathBuf::from(OsStr::from_bytes(b)),
        None => link,
    }
}

/// graceexec's own environment, without what an upgrade adds to it.
fn own_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os().filter(|(k, _)| k != doc::RESUME_FD && k != doc::FAILED).collect()
}

impl Runtime {
    /// Why nothing can be carried over now, if so.
    fn carriable(&self) -> Result<(), String> {
        self.sup.carriable()?;
        if self.check.is_some() {
            return Err("a --check is running: upgrade once it is over".into());
        }
        if self.gens.values().any(|io| io.probe.is_some()) {
            return Err("a readiness probe is running: upgrade once it is over".into());
        }
        Ok(())
    }

    pub(super) fn on_upgrade(&mut self, id: ConnId, binary: Option<String>) {
        if self.upgrade.is_some() {
            return self.refuse_upgrade(id, "an upgrade is already under way".into());
        }
        if let Err(why) = self.carriable() {
            return self.refuse_upgrade(id, why);
        }
        let binary = binary.map_or_else(own_binary, PathBuf::from);
        let mut doc = match self.export(id, None) {
            Ok((doc, _)) => doc,
            Err(why) => return self.refuse_upgrade(id, why),
        };
        doc.token = doc::token();
        let token = doc.token;
        let started = (|| -> anyhow::Result<(i32, Captured)> {
            let memfd = memfd_with(&doc.to_json(), MFdFlags::MFD_CLOEXEC)?;
            let (ends, mut out) = output::pipes(false, false)?;
            out.silence();
            let args = [OsString::from("graceexec"), OsString::from(CHECK_MODE)];
            let env = own_env()
                .into_iter()
                .filter(|(k, _)| !k.as_bytes().starts_with(b"LISTEN_") && k != "NOTIFY_SOCKET")
                .collect();
            let pid = spawn::spawn(spawn::Child {
                program: &binary,
                args: &args,
                env,
                fds: &[memfd.as_fd()],
                listen_pid: false,
                stdout: Some(ends.stderr.as_fd()),
                stderr: Some(ends.stderr.as_fd()),
                parent_death_signal: Some(nix::libc::SIGKILL),
                dir: None,
            })
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            Ok((pid.as_raw(), out))
        })();
        match started {
            Ok((pid, out)) => {
                log::info(&format!("upgrade: trying {} (dry run, pid {pid})", binary.display()));
                // Its group is killed if graceexec dies meanwhile.
                if let Some(w) = self.io.watchdog.as_mut() {
                    w.watch(pid);
                }
                let deadline = Instant::now() + CHECK_TIMEOUT;
                self.upgrade = Some(Pending { requester: id, binary, pid, token, out, deadline });
            }
            Err(e) => {
                let why = format!("cannot run {}: {e:#}", binary.display());
                self.refuse_upgrade(id, why);
            }
        }
    }

    /// `pid` has exited and is about to be reaped: if it is the dry run,
    /// what it left in its group goes with it.
    pub(super) fn before_reaping(&mut self, pid: i32) {
        if self.upgrade.as_ref().is_some_and(|p| p.pid == pid) {
            self.end_dry_run_group(pid);
        }
    }

    /// The dry run's leader has exited or is to be killed, and is not
    /// reaped yet, so its group id is still its (a group id is only ever
    /// reused once the group is empty and its leader reaped): end the whole
    /// group. A wrapper script that forked rather than exec'd leaves
    /// children that would otherwise run on for good.
    fn end_dry_run_group(&mut self, pid: i32) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        if let Some(w) = self.io.watchdog.as_mut() {
            w.forget(pid);
        }
    }

    /// graceexec exits while the dry run runs: the client hears why,
    /// rather than see its connection closed without an answer.
    pub(super) fn abandon_upgrade(&mut self, code: i32) {
        if let Some(p) = self.upgrade.take() {
            self.end_dry_run_group(p.pid);
            let why =
                format!("graceexec is stopping (exit status {code}) before the dry run answered");
            self.refuse_upgrade(p.requester, why);
        }
    }

    /// The dry run has not answered in time.
    pub(super) fn upgrade_timed_out(&mut self, now: Instant) {
        if self.upgrade.as_ref().is_some_and(|p| now >= p.deadline) {
            let p = self.upgrade.take().expect("present");
            self.end_dry_run_group(p.pid);
            let why = format!(
                "{} did not answer its dry run within {}s",
                p.binary.display(),
                CHECK_TIMEOUT.as_secs()
            );
            self.refuse_upgrade(p.requester, why);
        }
    }

    /// The dry run exited with `status`: go on, or refuse.
    pub(super) fn upgrade_checked(&mut self, status: Status) {
        let Some(mut p) = self.upgrade.take() else { return };
        p.out.read_available();
        let lines = p.out.tail();
        let answer = lines.iter().rev().find_map(|l| doc::answered(l, p.token)).map(str::to_string);
        let binary = p.binary.display().to_string();
        let said = lines.last().map(|l| format!(": {l}")).unwrap_or_default();
        match answer {
            Some(version) if status == Status::Code(0) => self.exec_upgrade(p, &version),
            // It exited with 0 but did not say the token back: whatever it
            // is, it is no graceexec that read the document, and executed
            // for real it would not take over.
            None if status == Status::Code(0) => {
                let why = format!(
                    "{binary} did not read the upgrade document (its dry run exited with {status} \
                     without the document's token{said}): is it a graceexec binary?"
                );
                self.refuse_upgrade(p.requester, why);
            }
            _ => {
                let why =
                    format!("{binary} cannot take over (its dry run exited with {status}{said})");
                self.refuse_upgrade(p.requester, why);
            }
        }
    }

    fn exec_upgrade(&mut self, p: Pending, version: &str) {
        if let Err(why) = self.carriable() {
            return self.refuse_upgrade(p.requester, why);
        }
        log::info(&format!(
            "upgrade: graceexec {} → {version}, executing {}",
            env!("CARGO_PKG_VERSION"),
            p.binary.display()
        ));
        // Opened now, so that the new image can go back to this very file
        // even once a deploy has replaced or removed it.
        let previous = open("/proc/self/exe", OFlag::O_RDONLY, Mode::empty()).ok();
        let (mut doc, handed) = match self.export(p.requester, previous.as_ref()) {
            Ok(x) => x,
            Err(why) => return self.refuse_upgrade(p.requester, why),
        };
        // Taken last: from here to the exec nothing is written, and a
        // refusal before this point must not lose what waits.
        let queued = [outbox::take_queued(Stream::Stdout), outbox::take_queued(Stream::Stderr)];
        [doc.rt.stdout, doc.rt.stderr] = queued.clone();
        let failed = (|| -> anyhow::Result<()> {
            let memfd = memfd_with(&doc.to_json(), MFdFlags::empty())?;
            let mut env = own_env();
            env.push((doc::RESUME_FD.into(), memfd.as_raw_fd().to_string().into()));
            carry::inheritable(handed.fds(), true)?;
            let err = exec(&p.binary, &env);
            // Still here: the exec failed, and this image carries on.
            carry::inheritable(handed.fds(), false)?;
            Err(err)
        })();
        outbox::requeue(Stream::Stdout, &queued[0]);
        outbox::requeue(Stream::Stderr, &queued[1]);
        let e = failed.expect_err("exec returns only on failure");
        self.refuse_upgrade(p.requester, format!("cannot execute {}: {e:#}", p.binary.display()));
    }

    fn refuse_upgrade(&mut self, id: ConnId, why: String) {
        log::warn(&format!("upgrade refused: {why}"));
        self.event("upgrade_refused", None, |e| e.why = Some(why.clone()));
        let error = format!("upgrade refused: {why}");
        self.io.control.reply(id, Reply::new(Answer::Error { error }), true);
    }

    /// The document as things stand, and the fds it hands over.
    fn export(
        &self,
        requester: ConnId,
        previous: Option<&OwnedFd>,
    ) -> Result<(doc::Doc, Handed), String> {
        let now = Instant::now();
        let sup = self.sup.export(now)?;
        let mut handed = Handed::default();
        let prev = previous.map(|f| handed.fd(f.as_fd()));
        let rt = self.carry_loop(now, &mut handed);
        let doc = doc::Doc {
            version: doc::VERSION,
            writer: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            requester,
            token: 0,
            previous: prev,
            log_level: log::level(),
            cfg: Config::clone(&self.cfg),
            sup,
            rt,
        };
        Ok((doc, handed))
    }
}

/// A memfd holding `bytes`, its offset back at 0.
fn memfd_with(bytes: &[u8], flags: MFdFlags) -> anyhow::Result<OwnedFd> {
    let fd = memfd_create("graceexec-upgrade", flags)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    std::io::Seek::rewind(&mut file)?;
    Ok(OwnedFd::from(file))
}

/// execve `binary` with graceexec's own argv and `env`: returns only on
/// failure.
fn exec(binary: &Path, env: &[(OsString, OsString)]) -> anyhow::Error {
    let c = |b: &[u8]| CString::new(b).map_err(|_| anyhow::anyhow!("a NUL byte in an argument"));
    let built = (|| -> anyhow::Result<(CString, Vec<CString>, Vec<CString>)> {
        let path = c(binary.as_os_str().as_bytes())?;
        let args = std::env::args_os().map(|a| c(a.as_bytes())).collect::<Result<_, _>>()?;
        let env = env
            .iter()
            .map(|(k, v)| c(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<Result<_, _>>()?;
        Ok((path, args, env))
    })();
    match built {
        Ok((path, args, env)) => match nix::unistd::execve(&path, &args, &env) {
            Err(e) => anyhow::anyhow!("{}", e.desc()),
            Ok(never) => match never {},
        },
        Err(e) => e,
    }
}
