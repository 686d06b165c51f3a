//! The thin loop: gather events, hand them to the supervisor, carry out its
//! actions.
//!
//! One thread waits in poll(2) on a signalfd, the control socket and its
//! connections, each generation's notify socket and output pipes, any probe
//! socket, the `--check` command's output, the `--watch` inotify fd, and the
//! supervisor's next deadline. Signals are blocked for the whole process and
//! read from the signalfd, so they are handled in exactly one place and
//! never interrupt anything (signalfd(2)). Idle, graceexec sleeps in poll
//! with no timeout.

mod requests;
mod wait;

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;

use crate::check::Check;
use crate::control::server::{ConnId, Server};
use crate::listen::Listener;
use crate::log;
use crate::notify::{self, NotifyDir, NotifySocket, SdNotify};
use crate::output::{self, Captured};
use crate::readiness::{Mode, Probe};
use crate::spawn::{self, SpawnError};
use crate::supervisor::{Action, Event, GenId, SdState, Supervisor};
use crate::watch::Watch;
use crate::watchdog::Watchdog;

pub use wait::{block_signals, resolve};

/// Variables graceexec sets for each child; any inherited value is dropped.
const OWN_VARS: [&str; 7] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "GRACEEXEC_GENERATION",
    "SERVER_STARTER_PORT",
    "SERVER_STARTER_GENERATION",
];

/// How many finished generations' last output lines are kept for replies.
const KEEP_TAILS: usize = 8;

/// Everything `main` sets up before the loop starts.
pub struct Setup {
    pub sup: Supervisor,
    pub signals: SignalFd,
    pub listeners: Vec<Listener>,
    pub command: Vec<OsString>,
    pub ready: Option<Mode>,
    pub stop_signal: Signal,
    pub notify_dir: NotifyDir,
    pub verbose: bool,
    pub control: Server,
    pub sd: Option<SdNotify>,
    pub log_prefix: bool,
    /// Set for every generation, overriding inherited values (`--user`).
    pub extra_env: Vec<(OsString, OsString)>,
    /// SERVER_STARTER_PORT's value under `--compat server-starter`.
    pub server_starter: Option<String>,
    pub check: Option<String>,
    pub watch: Option<Watch>,
    /// Kills the generations' groups if graceexec is killed.
    pub watchdog: Option<Watchdog>,
}

struct GenIo {
    pid: i32,
    notify: NotifySocket,
    probe: Option<Probe>,
    /// The last STATUS= it sent.
    status: Option<String>,
}

struct Runtime {
    s: Setup,
    started: Instant,
    base_env: Vec<(OsString, OsString)>,
    gens: BTreeMap<GenId, GenIo>,
    /// Output pipes outlive their generation until EOF: a draining
    /// server's last lines, or its orphans', still get through.
    outputs: BTreeMap<GenId, Captured>,
    tails: VecDeque<(GenId, Vec<String>)>,
    queue: VecDeque<Event>,
    check: Option<Check>,
    /// The output of the last failed check, for the reload's reply.
    check_output: Vec<String>,
    /// Control connections waiting for graceexec to exit.
    stop_conns: Vec<ConnId>,
}

/// Run until the supervisor says exit; returns the exit code.
pub fn run(setup: Setup) -> i32 {
    let mut base_env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !OWN_VARS.iter().any(|o| k == o))
        .filter(|(k, _)| !setup.extra_env.iter().any(|(e, _)| e == k))
        .collect();
    base_env.extend(setup.extra_env.iter().cloned());
    let mut rt = Runtime {
        s: setup,
        started: Instant::now(),
        base_env,
        gens: BTreeMap::new(),
        outputs: BTreeMap::new(),
        tails: VecDeque::new(),
        queue: VecDeque::new(),
        check: None,
        check_output: Vec::new(),
        stop_conns: Vec::new(),
    };
    rt.run()
}

impl Runtime {
    fn run(&mut self) -> i32 {
        let mut pending = self.s.sup.start(Instant::now());
        loop {
            // Carry out actions; some produce events that are handled at once.
            while !pending.is_empty() || !self.queue.is_empty() {
                for action in std::mem::take(&mut pending) {
                    if let Some(code) = self.act(action) {
                        return code;
                    }
                }
                if let Some(ev) = self.queue.pop_front() {
                    pending = self.s.sup.handle(Instant::now(), ev);
                }
            }
            self.wait();
            self.queue.push_back(Event::Tick);
        }
    }

    fn act(&mut self, action: Action) -> Option<i32> {
        match action {
            // First in line: the supervisor must learn the pid before any
            // other event, or a stop decided meanwhile has no pid to go to.
            Action::Spawn { gen } => {
                let ev = self.spawn(gen);
                self.queue.push_front(ev);
            }
            Action::StartProbe { gen, pid } => {
                if let (Some(io), Some(mode)) = (self.gens.get_mut(&gen), self.s.ready.clone()) {
                    io.probe = Some(Probe::new(mode, gen, pid, Instant::now(), self.s.verbose));
                }
            }
            Action::StopProbe { gen } => {
                if let Some(io) = self.gens.get_mut(&gen) {
                    io.probe = None;
                }
            }
            Action::Signal { pid, signal } => match kill(Pid::from_raw(pid), signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => log::warn(&format!("cannot send {} to pid {pid}: {e}", signal.as_str())),
            },
            Action::KillGroup { pid } => {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                // Once the leader is reaped (its generation released), this
                // was the group's last kill: the watchdog lets go of it.
                if !self.gens.values().any(|io| io.pid == pid) {
                    if let Some(w) = self.s.watchdog.as_mut() {
                        w.forget(pid);
                    }
                }
            }
            Action::Release { gen } => {
                self.gens.remove(&gen);
                self.read_output(gen);
            }
            Action::Log { level, msg } => log::log(level, &msg),
            Action::RunCheck { gen } => self.run_check(gen),
            // Dropping the check kills its process group; what it wrote so
            // far goes into the reply of a check that timed out.
            Action::CancelCheck => {
                if let Some(mut c) = self.check.take() {
                    c.read_available();
                    self.check_output = c.tail();
                }
            }
            Action::Report { waiters, outcome } => {
                let reply = self.report_reply(&outcome);
                // A client that gave up (its --timeout) is gone, and a
                // reply to it goes nowhere.
                for w in waiters {
                    self.s.control.reply(w, &reply, true);
                }
            }
            Action::Systemd { state, status } => self.tell_systemd(state, &status),
            Action::Exit { code } => {
                let bye =
                    serde_json::json!({"graceexec": 1, "ok": true, "exited": true, "code": code});
                for id in std::mem::take(&mut self.stop_conns) {
                    self.s.control.reply(id, &bye, true);
                }
                if let Some(w) = self.s.watchdog.take() {
                    w.finish();
                }
                return Some(code);
            }
        }
        None
    }

    fn spawn(&mut self, gen: GenId) -> Event {
        let failed = |e: SpawnError| Event::SpawnFailed { gen, code: e.code, message: e.message };
        let program = match resolve(&self.s.command[0]) {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        let io_error = |e: anyhow::Error| failed(SpawnError { code: 1, message: format!("{e:#}") });
        let notify = match self.s.notify_dir.socket(gen) {
            Ok(n) => n,
            Err(e) => return io_error(e),
        };
        let (ends, mut captured) = match output::pipes(self.s.log_prefix, self.s.log_prefix) {
            Ok(p) => p,
            Err(e) => return io_error(e),
        };
        let names: Vec<&str> = self.s.listeners.iter().map(|l| l.name.as_str()).collect();
        let mut env = self.base_env.clone();
        env.push(("LISTEN_FDS".into(), self.s.listeners.len().to_string().into()));
        env.push(("LISTEN_FDNAMES".into(), names.join(":").into()));
        env.push(("NOTIFY_SOCKET".into(), notify.path.clone().into_os_string()));
        env.push(("GRACEEXEC_GENERATION".into(), gen.to_string().into()));
        if let Some(ports) = &self.s.server_starter {
            env.push(("SERVER_STARTER_PORT".into(), ports.into()));
            env.push(("SERVER_STARTER_GENERATION".into(), gen.to_string().into()));
        }
        let sockets: Vec<BorrowedFd<'_>> = self.s.listeners.iter().map(|l| l.fd.as_fd()).collect();
        let child = spawn::Child {
            program: &program,
            args: &self.s.command,
            env,
            fds: &sockets,
            listen_pid: true,
            parent_death_signal: Some(self.s.stop_signal),
            stdout: ends.stdout.as_ref().map(|f| f.as_fd()),
            stderr: Some(ends.stderr.as_fd()),
        };
        let result = spawn::spawn(child);
        // The child has its copies now; ours must go, or the pipes never
        // see EOF.
        drop(ends);
        match result {
            Ok(pid) => {
                let pid = pid.as_raw();
                if let Some(w) = self.s.watchdog.as_mut() {
                    w.watch(pid);
                }
                captured.set_label(gen, pid);
                self.outputs.insert(gen, captured);
                self.gens.insert(gen, GenIo { pid, notify, probe: None, status: None });
                Event::Spawned { gen, pid }
            }
            Err(e) => failed(e),
        }
    }

    /// Pass on what generation `gen` wrote; once its pipes are closed and
    /// it is gone, keep only its last lines.
    fn read_output(&mut self, gen: GenId) {
        let Some(out) = self.outputs.get_mut(&gen) else {
            return;
        };
        let closed = out.read_available();
        if closed && !self.gens.contains_key(&gen) {
            let out = self.outputs.remove(&gen).expect("present");
            self.tails.push_back((gen, out.tail()));
            if self.tails.len() > KEEP_TAILS {
                self.tails.pop_front();
            }
        }
    }

    /// The last lines generation `gen` wrote to stderr.
    fn tail_of(&mut self, gen: GenId) -> Vec<String> {
        self.read_output(gen);
        if let Some(out) = self.outputs.get(&gen) {
            return out.tail();
        }
        self.tails.iter().rev().find(|(g, _)| *g == gen).map(|(_, t)| t.clone()).unwrap_or_default()
    }

    fn run_check(&mut self, gen: GenId) {
        let cmd = self.s.check.clone().unwrap_or_default();
        log::info(&format!("running the check `{cmd}` before generation {gen}"));
        match Check::start(&cmd, gen, &self.base_env) {
            Ok(check) => self.check = Some(check),
            Err(e) => {
                self.check_output.clear();
                let why = format!("cannot run the check `{cmd}`: {e:#}");
                self.queue.push_back(Event::CheckDone { ok: false, why });
            }
        }
    }

    fn tell_systemd(&self, state: Option<SdState>, status: &str) {
        let Some(sd) = &self.s.sd else {
            return;
        };
        let mut msg = match state {
            Some(SdState::Ready) => "READY=1\n".to_string(),
            Some(SdState::Reloading) => {
                format!("RELOADING=1\nMONOTONIC_USEC={}\n", notify::monotonic_usec())
            }
            Some(SdState::Stopping) => "STOPPING=1\n".to_string(),
            None => String::new(),
        };
        msg.push_str(&format!("STATUS={status}"));
        if let Err(e) = sd.send(&msg) {
            log::warn(&format!("cannot notify systemd at {}: {e}", sd.shown()));
        }
    }
}
