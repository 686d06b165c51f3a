//! The thin loop: gather events, hand them to the supervisor, carry out its
//! actions. No decision about generations is taken here.
//!
//! One thread waits in poll(2) on a signalfd, the control socket and its
//! connections, each generation's notify socket and output pipes, any probe
//! socket, the `--check` command's output, the `--watch` inotify fd, and the
//! supervisor's next deadline (wait.rs). Signals are blocked for the whole
//! process and read from the signalfd, so they are handled in exactly one
//! place and never interrupt anything (signalfd(2)). Idle, graceexec sleeps
//! in poll with no timeout.
//!
//! The loop maps pids to generations: the supervisor knows generations by
//! id only, and the loop tells it `Exited { gen }` before the main process
//! is reaped (reap.rs), so that the group is killed while its id cannot
//! have been reused.

mod diagnose;
mod drain;
mod events;
mod notified;
mod reap;
mod requests;
pub mod upgrade;
mod wait;

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::check::Check;
use crate::config::Config;
use crate::control::protocol::{Answer, Reply};
use crate::env::Env;
use crate::notify::{self, NotifySocket};
use crate::output::{self, Captured};
use crate::readiness::{Mode, Probe};
use crate::sockets::Slot;
use crate::startup::Started;
use crate::supervisor::{Action, Event, GenId, SdState, SdStatus, Supervisor, Verdict, Waiting};
use crate::sys::spawn::{self, SpawnError};
use crate::{log, sys};

/// How many finished generations' last output lines are kept for replies.
const KEEP_TAILS: usize = 8;

/// What the loop knows of a running generation.
struct GenIo {
    /// The pid it was started as, which is also its process group's id.
    leader: i32,
    /// Its main process: the leader, or the pid a MAINPID= named.
    main: i32,
    notify: NotifySocket,
    probe: Option<Probe>,
    /// The last STATUS= it sent.
    status: Option<String>,
    /// What the supervisor was last told it waits for.
    waiting: Option<Waiting>,
}

pub struct Runtime {
    cfg: Config,
    io: Started,
    sup: Supervisor,
    env: Env,
    started: Instant,
    gens: BTreeMap<GenId, GenIo>,
    /// Output pipes outlive their generation until EOF: a draining
    /// server's last lines, or its orphans', still get through.
    outputs: BTreeMap<GenId, Captured>,
    tails: VecDeque<(GenId, Vec<String>)>,
    queue: VecDeque<Event>,
    check: Option<Check>,
    /// A SIGCHLD came: reap after the other events of this round.
    reap_due: bool,
    drains: drain::Drains,
    /// What --watch saw change since the last reload it asked for.
    watched: Vec<String>,
    events: events::Events,
    /// When the last successful reload ended (Unix seconds), for the
    /// metrics' `*_last_reload_success_timestamp_seconds`.
    last_ok_reload: Option<f64>,
    /// `graceexec upgrade`'s dry run, while it runs.
    upgrade: Option<upgrade::Pending>,
    exit: Option<i32>,
}

/// Run until the supervisor says exit; returns the exit code.
pub fn run(cfg: Config, io: Started) -> i32 {
    let sup = Supervisor::new(cfg.policy.clone());
    Runtime::new(cfg, io, sup).run(true)
}

impl Runtime {
    fn new(cfg: Config, io: Started, sup: Supervisor) -> Runtime {
        let names = io.sockets.names();
        let env =
            Env::new(std::env::vars_os(), cfg.user_env.clone(), &cfg.env_remove, &cfg.workdir)
                .with_sockets(&names, cfg.server_starter.clone());
        Runtime {
            cfg,
            io,
            sup,
            env,
            started: Instant::now(),
            gens: BTreeMap::new(),
            outputs: BTreeMap::new(),
            tails: VecDeque::new(),
            queue: VecDeque::new(),
            check: None,
            reap_due: false,
            drains: drain::Drains::default(),
            watched: Vec::new(),
            events: events::Events::default(),
            last_ok_reload: None,
            upgrade: None,
            exit: None,
        }
    }

    /// `start`: a fresh instance; false for one an upgrade carried over.
    fn run(&mut self, start: bool) -> i32 {
        // Signals that came during start-up go first: a TERM then means
        // that nothing is started at all.
        self.read_signals();
        if start {
            self.queue.push_back(Event::Start);
        }
        loop {
            // Reaping queues events (a check's end, a probe's success), and
            // events may start processes: until both are done.
            self.drain_queue();
            while self.reap_due && self.exit.is_none() {
                self.reap_due = false;
                self.reap();
                self.drain_queue();
            }
            if let Some(code) = self.exit {
                return code;
            }
            self.wait();
            self.queue.push_back(Event::Tick);
        }
    }

    /// Handle every queued event; actions may queue more.
    fn drain_queue(&mut self) {
        while self.exit.is_none() {
            let Some(ev) = self.queue.pop_front() else { return };
            self.dispatch(ev);
        }
    }

    fn dispatch(&mut self, event: Event) {
        for action in self.sup.handle(Instant::now(), event) {
            self.act(action);
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Spawn { gen } => {
                if let Err(e) = self.spawn(gen) {
                    let (code, message) = (e.code, e.message);
                    self.queue.push_back(Event::SpawnFailed { gen, code, message });
                }
            }
            Action::StartProbe { gen } => self.start_probe(gen),
            Action::StopProbe { gen } => {
                if let Some(io) = self.gens.get_mut(&gen) {
                    io.probe = None;
                }
                self.io.sockets.unroute_probes_of(gen);
            }
            Action::Steer { shares } => {
                self.io.sockets.set_shares(&shares);
                let pct = |s: &u32| f64::from(*s) / 10_000.0;
                let line: Vec<String> =
                    shares.iter().map(|(g, s)| format!("generation {g} {}%", pct(s))).collect();
                log::info(&format!("new connections: {}", line.join(", ")));
                let shares: Vec<(u32, f64)> = shares.iter().map(|(g, s)| (*g, pct(s))).collect();
                self.event("shares", None, |e| e.shares = Some(shares));
            }
            Action::WatchDrain { gen } => self.drains.watch(gen, Instant::now()),
            Action::Signal { gen, signal } => {
                if let Some(io) = self.gens.get(&gen) {
                    match sys::kill(io.main, signal) {
                        Ok(()) | Err(Errno::ESRCH) => {}
                        Err(e) => log::warn(&format!("cannot signal pid {}: {e}", io.main)),
                    }
                }
            }
            Action::KillGroup { gen } => {
                if let Some(io) = self.gens.get(&gen) {
                    let _ = killpg(Pid::from_raw(io.leader), Signal::SIGKILL);
                }
            }
            Action::Finish { gen } => self.finish(gen),
            Action::Log { level, msg } => log::log(level, &msg),
            Action::RunCheck { gen } => self.run_check(gen),
            Action::CancelCheck { why } => {
                // Dropping the check kills its process group; what it
                // wrote so far goes into the reload's reply.
                if let Some(mut c) = self.check.take() {
                    c.read_available();
                    let output = c.tail();
                    self.queue.push_back(Event::CheckDone { ok: false, why, output });
                }
            }
            Action::Note(note) => self.on_note(note),
            Action::Answer { waiter, verdict } => {
                let answer = match verdict {
                    Verdict::Promoted { gen, from } => Answer::Promoted { generation: gen, from },
                    Verdict::RolledBack { gen, from } => {
                        Answer::RolledBack { generation: gen, from }
                    }
                    Verdict::Refused { why } => Answer::Error { error: why },
                };
                self.io.control.reply(waiter, Reply::new(answer), true);
            }
            Action::Report { waiters, outcome } => {
                let reply = self.outcome_reply(&outcome);
                // A client that gave up (its --timeout) is gone, and a
                // reply to it goes nowhere.
                for w in waiters {
                    self.io.control.reply(w, reply.clone(), true);
                }
            }
            Action::Systemd { state, status } => {
                if state == Some(SdState::Stopping) {
                    // Under systemd's store, what comes now waits for the
                    // next start (fdstore.rs).
                    self.io.sockets.park(self.sup.stopped_while_serving());
                }
                self.tell_systemd(state, &status)
            }
            Action::Exit { code, waiters } => {
                self.write_metrics(false);
                self.abandon_upgrade(code);
                for w in waiters {
                    self.io.control.reply(w, Reply::new(Answer::Exited { code }), true);
                }
                if let Some(w) = self.io.watchdog.take() {
                    w.finish();
                }
                self.exit = Some(code);
            }
        }
    }

    fn spawn(&mut self, gen: GenId) -> Result<(), SpawnError> {
        let program = self.cfg.resolve_command()?;
        let io_error = |e: anyhow::Error| SpawnError { code: 1, message: format!("{e:#}") };
        let notify = self.io.notify_dir.socket(gen).map_err(io_error)?;
        let prefix = self.cfg.log_prefix;
        let (ends, mut captured) = output::pipes(prefix, prefix).map_err(io_error)?;
        let slot = match self.io.sockets.assign(gen, self.gens.is_empty()) {
            Slot::Own(s) | Slot::Shared(s) => s,
            Slot::None => 0,
        };
        let sockets: Vec<BorrowedFd<'_>> = self.io.sockets.fds(slot);
        let child = spawn::Child {
            program: &program,
            args: &self.cfg.command,
            env: self.env.generation(gen, &notify.path),
            fds: &sockets,
            listen_pid: true,
            parent_death_signal: Some(self.cfg.policy.stop_signal),
            stdout: ends.stdout.as_ref().map(|f| f.as_fd()),
            stderr: Some(ends.stderr.as_fd()),
            dir: self.cfg.workdir.path(),
        };
        let result = spawn::spawn(child);
        // The child has its copies now; ours must go, or the pipes never
        // see EOF.
        drop(ends);
        let pid = match result {
            Ok(pid) => pid.as_raw(),
            Err(e) => {
                self.io.sockets.release(gen);
                return Err(e);
            }
        };
        if let Some(w) = self.io.watchdog.as_mut() {
            w.watch(pid);
        }
        log::info(&format!("generation {gen} started as pid {pid}"));
        self.event("started", Some(gen), |e| e.pid = Some(pid));
        captured.set_label(gen, pid);
        self.outputs.insert(gen, captured);
        let io = GenIo { leader: pid, main: pid, notify, probe: None, status: None, waiting: None };
        self.gens.insert(gen, io);
        Ok(())
    }

    fn start_probe(&mut self, gen: GenId) {
        let Some(io) = self.gens.get_mut(&gen) else { return };
        // Without --ready, the supervisor asks only where steering can see
        // a connection accepted.
        let mode = self.cfg.ready.clone().unwrap_or(Mode::Accept);
        let env = self.env.probe(gen, io.main);
        let dir = self.cfg.workdir.path().map(|p| p.to_path_buf());
        let (now, verbose) = (Instant::now(), self.cfg.verbose);
        io.probe = Some(Probe::new(mode, gen, now, verbose, (env, dir), &self.io.sockets));
    }

    /// The generation's main process has exited: SIGKILL what is left of
    /// its group (the leader is not reaped yet, so the group id is still
    /// its), forget it, and let the watchdog forget it.
    fn finish(&mut self, gen: GenId) {
        let Some(io) = self.gens.remove(&gen) else { return };
        let _ = killpg(Pid::from_raw(io.leader), Signal::SIGKILL);
        self.io.sockets.unroute_probes_of(gen);
        self.io.sockets.release(gen);
        self.drains.gone(gen, Instant::now());
        if let Some(w) = self.io.watchdog.as_mut() {
            w.forget(io.leader);
        }
        self.read_output(gen);
    }

    /// Pass on what generation `gen` wrote; once its pipes are closed and
    /// it is gone, keep only its last lines.
    fn read_output(&mut self, gen: GenId) {
        let Some(out) = self.outputs.get_mut(&gen) else { return };
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
        let cmd = self.cfg.check.clone().unwrap_or_default();
        log::info(&format!("running the check `{cmd}` before generation {gen}"));
        match Check::start(&cmd, &self.env.check(gen), self.cfg.workdir.path()) {
            Ok(check) => self.check = Some(check),
            Err(e) => {
                let why = format!("cannot run the check `{cmd}`: {e:#}");
                self.queue.push_back(Event::CheckDone { ok: false, why, output: Vec::new() });
            }
        }
    }

    fn tell_systemd(&self, state: Option<SdState>, status: &SdStatus) {
        let Some(sd) = &self.io.sd else { return };
        let mut msg = match state {
            Some(SdState::Ready) => "READY=1\n".to_string(),
            Some(SdState::Reloading) => {
                format!("RELOADING=1\nMONOTONIC_USEC={}\n", notify::monotonic_usec())
            }
            Some(SdState::Stopping) => "STOPPING=1\n".to_string(),
            None => String::new(),
        };
        let pid = |gen: &GenId| {
            self.gens.get(gen).map_or(String::new(), |io| format!(" (pid {})", io.main))
        };
        let line = match status {
            SdStatus::Serving { gen, failed } => {
                let mut l = format!("serving: generation {gen}{}", pid(gen));
                if let Some(why) = failed {
                    l.push_str(&format!("; reload failed: {why}"));
                }
                l
            }
            SdStatus::Split { old, new, share } => {
                let pct = f64::from(*share) / 10_000.0;
                format!(
                    "serving: generation {old}{} ({:.1}%), generation {new}{} ({pct:.1}%)",
                    pid(old),
                    100.0 - pct,
                    pid(new)
                )
            }
            SdStatus::NotServing { failed: Some(why) } => {
                format!("not serving; reload failed: {why}")
            }
            SdStatus::NotServing { failed: None } => "not serving".into(),
            SdStatus::Reloading { gen } => format!("reloading: starting generation {gen}"),
            SdStatus::Crashed { gen, status } => {
                format!("generation {gen} exited unexpectedly with {status}")
            }
            SdStatus::Stopping => "stopping".into(),
        };
        msg.push_str(&format!("STATUS={line}"));
        if let Err(e) = sd.send(&msg) {
            log::warn(&format!("cannot notify systemd at {}: {e}", sd.shown()));
        }
    }
}
