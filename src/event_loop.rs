//! The thin loop: gather events, hand them to the supervisor, carry out its
//! actions.
//!
//! One thread waits in poll(2) on a signalfd, each generation's notify
//! socket, any probe socket, and the supervisor's next deadline. Signals are
//! blocked for the whole process and read from the signalfd, so they are
//! handled in exactly one place and never interrupt anything (signalfd(2)).
//! Idle, graceexec sleeps in poll with no timeout.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::listen::Listener;
use crate::log;
use crate::notify::{NotifyDir, NotifySocket};
use crate::readiness::{Mode, Probe};
use crate::spawn::{self, SpawnError};
use crate::supervisor::{Action, Event, GenId, ReadySource, Status, Supervisor};

const RELOAD: [Signal; 2] = [Signal::SIGHUP, Signal::SIGUSR2];
const SHUTDOWN: [Signal; 2] = [Signal::SIGTERM, Signal::SIGINT];
/// Passed on to the serving generation as they are.
pub const FORWARD: [Signal; 5] =
    [Signal::SIGUSR1, Signal::SIGWINCH, Signal::SIGQUIT, Signal::SIGTTIN, Signal::SIGTTOU];

/// Variables graceexec sets for each child; any inherited value is dropped.
const OWN_VARS: [&str; 5] =
    ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "GRACEEXEC_GENERATION"];

/// Block every signal graceexec handles. Called first thing, so a signal
/// sent during start-up waits for the loop; `spawn::signalfd` reads them.
pub fn block_signals() -> nix::Result<SigSet> {
    let mut handled: Vec<Signal> =
        RELOAD.iter().chain(&SHUTDOWN).chain(&FORWARD).copied().collect();
    handled.push(Signal::SIGCHLD);
    spawn::block(&handled)
}

/// Find COMMAND the way a shell would, anew at every start.
pub fn resolve(command: &OsString) -> Result<PathBuf, SpawnError> {
    let shown = command.to_string_lossy();
    match which::which(command) {
        Ok(p) => Ok(p),
        Err(_) => {
            let p = PathBuf::from(command);
            let has_slash = shown.contains('/');
            match std::fs::metadata(&p) {
                Ok(m) if has_slash && (m.is_dir() || m.permissions().mode() & 0o111 == 0) => {
                    Err(SpawnError {
                        code: 126,
                        message: format!(
                            "cannot execute {shown}: Permission denied (not an executable file)"
                        ),
                    })
                }
                _ => Err(SpawnError {
                    code: 127,
                    message: if has_slash {
                        format!("command not found: {shown}: No such file")
                    } else {
                        format!("command not found: {shown} (not in PATH)")
                    },
                }),
            }
        }
    }
}

pub struct Runtime {
    pub sup: Supervisor,
    pub signals: SignalFd,
    pub listeners: Vec<Listener>,
    pub command: Vec<OsString>,
    pub ready: Option<Mode>,
    pub stop_signal: Signal,
    pub notify_dir: NotifyDir,
    pub verbose: bool,
}

struct GenIo {
    pid: i32,
    notify: NotifySocket,
    probe: Option<Probe>,
}

enum Source {
    Signals,
    Notify(GenId),
    Probe(GenId),
}

impl Runtime {
    /// Run until the supervisor says exit; returns the exit code.
    pub fn run(mut self) -> i32 {
        let base_env: Vec<(OsString, OsString)> =
            std::env::vars_os().filter(|(k, _)| !OWN_VARS.iter().any(|o| k == o)).collect();
        let mut gens: BTreeMap<GenId, GenIo> = BTreeMap::new();
        let mut queue: VecDeque<Event> = VecDeque::new();
        let mut pending = self.sup.start(Instant::now());
        loop {
            // Carry out actions; some produce events that are handled at once.
            while !pending.is_empty() || !queue.is_empty() {
                for action in std::mem::take(&mut pending) {
                    if let Some(code) = self.act(action, &base_env, &mut gens, &mut queue) {
                        return code;
                    }
                }
                if let Some(ev) = queue.pop_front() {
                    pending = self.sup.handle(Instant::now(), ev);
                }
            }
            self.wait(&mut gens, &mut queue);
            queue.push_back(Event::Tick);
        }
    }

    fn act(
        &mut self,
        action: Action,
        base_env: &[(OsString, OsString)],
        gens: &mut BTreeMap<GenId, GenIo>,
        queue: &mut VecDeque<Event>,
    ) -> Option<i32> {
        match action {
            // First in line: the supervisor must learn the pid before any
            // other event, or a stop decided meanwhile has no pid to go to.
            Action::Spawn { gen } => queue.push_front(self.spawn(gen, base_env, gens)),
            Action::StartProbe { gen, pid } => {
                if let (Some(io), Some(mode)) = (gens.get_mut(&gen), self.ready.clone()) {
                    io.probe = Some(Probe::new(mode, gen, pid, Instant::now(), self.verbose));
                }
            }
            Action::StopProbe { gen } => {
                if let Some(io) = gens.get_mut(&gen) {
                    io.probe = None;
                }
            }
            Action::Signal { pid, signal } => match kill(Pid::from_raw(pid), signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => log::warn(&format!("cannot send {} to pid {pid}: {e}", signal.as_str())),
            },
            Action::KillGroup { pid } => {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            Action::Release { gen } => {
                gens.remove(&gen);
            }
            Action::Log { level, msg } => log::log(level, &msg),
            Action::RunCheck { .. } | Action::CancelCheck => {}
            Action::Report { .. } | Action::Systemd { .. } => {}
            Action::Exit { code } => return Some(code),
        }
        None
    }

    fn spawn(
        &mut self,
        gen: GenId,
        base_env: &[(OsString, OsString)],
        gens: &mut BTreeMap<GenId, GenIo>,
    ) -> Event {
        let failed = |e: SpawnError| Event::SpawnFailed { gen, code: e.code, message: e.message };
        let program = match resolve(&self.command[0]) {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        let notify = match self.notify_dir.socket(gen) {
            Ok(n) => n,
            Err(e) => return failed(SpawnError { code: 1, message: format!("{e:#}") }),
        };
        let names: Vec<&str> = self.listeners.iter().map(|l| l.name.as_str()).collect();
        let mut env = base_env.to_vec();
        env.push(("LISTEN_FDS".into(), self.listeners.len().to_string().into()));
        env.push(("LISTEN_FDNAMES".into(), names.join(":").into()));
        env.push(("NOTIFY_SOCKET".into(), notify.path.clone().into_os_string()));
        env.push(("GRACEEXEC_GENERATION".into(), gen.to_string().into()));
        let sockets: Vec<BorrowedFd<'_>> = self.listeners.iter().map(|l| l.fd.as_fd()).collect();
        let child = spawn::Child {
            program: &program,
            args: &self.command,
            env,
            sockets: &sockets,
            stdout: None,
            stderr: None,
            parent_death_signal: self.stop_signal,
        };
        match spawn::spawn(child) {
            Ok(pid) => {
                gens.insert(gen, GenIo { pid: pid.as_raw(), notify, probe: None });
                Event::Spawned { gen, pid: pid.as_raw() }
            }
            Err(e) => failed(e),
        }
    }

    /// Sleep in poll until something happens or a deadline passes; turn
    /// what happened into events.
    fn wait(&mut self, gens: &mut BTreeMap<GenId, GenIo>, queue: &mut VecDeque<Event>) {
        let mut deadline = self.sup.next_deadline();
        for io in gens.values() {
            if let Some(t) = io.probe.as_ref().and_then(Probe::wake_at) {
                deadline = Some(deadline.map_or(t, |d| d.min(t)));
            }
        }
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                // Round up: waking a hair early would spin until the instant.
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut sources = vec![Source::Signals];
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        for (gen, io) in gens.iter() {
            sources.push(Source::Notify(*gen));
            fds.push(PollFd::new(io.notify.sock.as_fd(), PollFlags::POLLIN));
            if let Some((fd, ev)) = io.probe.as_ref().and_then(Probe::poll_fd) {
                sources.push(Source::Probe(*gen));
                fds.push(PollFd::new(fd, ev));
            }
        }
        if let Err(e) = poll(&mut fds, timeout) {
            if e != Errno::EINTR {
                log::error(&format!("poll failed: {e}"));
            }
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
        drop(fds);
        let now = Instant::now();
        let mut probe_hits = Vec::new();
        for (source, hit) in sources.into_iter().zip(ready) {
            match source {
                Source::Signals if hit => self.read_signals(gens, queue),
                Source::Notify(gen) if hit => {
                    if let Some(io) = gens.get(&gen) {
                        for m in io.notify.drain() {
                            if let Some(s) = &m.status {
                                log::info(&format!("generation {gen} status: {s}"));
                            }
                            for other in &m.other {
                                log::debug(&format!("generation {gen} notify: {other}"));
                            }
                            if m.ready {
                                queue.push_back(Event::Ready { gen, by: ReadySource::Notify });
                            }
                        }
                    }
                }
                Source::Probe(gen) if hit => probe_hits.push(gen),
                _ => {}
            }
        }
        // Probes advance on their fd or their timer, whichever came.
        for (gen, io) in gens.iter_mut() {
            if let Some(p) = io.probe.as_mut() {
                if p.advance(now, probe_hits.contains(gen)) {
                    io.probe = None;
                    queue.push_back(Event::Ready { gen: *gen, by: ReadySource::Probe });
                }
            }
        }
    }

    fn read_signals(&mut self, gens: &mut BTreeMap<GenId, GenIo>, queue: &mut VecDeque<Event>) {
        let mut batch = Vec::new();
        while let Ok(Some(info)) = self.signals.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                batch.push(sig);
            }
        }
        // A signalfd hands pending signals over lowest number first, not in
        // the order they came (HUP=1 before TERM=15): when a stop request is
        // in the batch, reloads from it would only start a doomed candidate.
        let stopping = batch.iter().any(|s| SHUTDOWN.contains(s));
        for sig in batch {
            if RELOAD.contains(&sig) {
                log::debug(&format!("received {}", sig.as_str()));
                if !stopping {
                    queue.push_back(Event::Reload { waiter: None });
                }
            } else if SHUTDOWN.contains(&sig) {
                log::info(&format!("received {}", sig.as_str()));
                queue.push_back(Event::Shutdown);
            } else if sig == Signal::SIGCHLD {
                reap(gens, queue);
            } else {
                queue.push_back(Event::Forward(sig));
            }
        }
    }
}

/// Reap every child that has exited (waitpid(-1) until none is left), so
/// graceexec can be PID 1 or a subreaper without collecting zombies.
fn reap(gens: &mut BTreeMap<GenId, GenIo>, queue: &mut VecDeque<Event>) {
    loop {
        let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Status::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), Status::Signal(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        };
        // Only a generation's exit concerns the supervisor; an exec probe's
        // decides readiness; anything else is an orphan we adopted.
        if gens.values().any(|io| io.pid == pid) {
            queue.push_back(Event::Exited { pid, status });
            continue;
        }
        let probe = gens.iter_mut().find_map(|(gen, io)| {
            io.probe.as_mut().filter(|p| p.running_pid() == Some(pid)).map(|p| (*gen, p))
        });
        match probe {
            Some((gen, p)) => {
                if p.exec_finished(Instant::now(), status == Status::Code(0)) {
                    gens.get_mut(&gen).unwrap().probe = None;
                    queue.push_back(Event::Ready { gen, by: ReadySource::Probe });
                }
            }
            None => log::debug(&format!("reaped pid {pid} ({status})")),
        }
    }
}
