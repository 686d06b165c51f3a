//! Waiting: one poll(2) over every fd graceexec watches, turned into events.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use super::Runtime;
use crate::control::server::Key;
use crate::log;
use crate::outbox;
use crate::readiness::Probe;
use crate::spawn::{self, SpawnError};
use crate::supervisor::{Event, GenId, ReadySource, Status};

const RELOAD: [Signal; 2] = [Signal::SIGHUP, Signal::SIGUSR2];
const SHUTDOWN: [Signal; 2] = [Signal::SIGTERM, Signal::SIGINT];
/// Passed on to the serving generation as they are.
const FORWARD: [Signal; 5] =
    [Signal::SIGUSR1, Signal::SIGWINCH, Signal::SIGQUIT, Signal::SIGTTIN, Signal::SIGTTOU];

/// Block every signal graceexec handles. Called first thing, so a signal
/// sent during start-up waits for the loop; `spawn::signalfd` reads them.
/// Under systemd's Type=notify-reload this is what makes the reload signal
/// safe to send from the moment READY=1 goes out.
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

enum Source {
    Signals,
    Notify(GenId),
    Probe(GenId),
    Output(GenId),
    Control(Key),
    Watch,
    Check,
    Outbox,
    Watchdog,
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl Runtime {
    /// Sleep in poll until something happens or a deadline passes; turn
    /// what happened into events.
    pub(super) fn wait(&mut self) {
        let mut deadline = self.s.sup.next_deadline();
        for io in self.gens.values() {
            deadline = earliest(deadline, io.probe.as_ref().and_then(Probe::wake_at));
        }
        deadline = earliest(deadline, self.s.control.wake_at());
        deadline = earliest(deadline, self.s.watch.as_ref().and_then(|w| w.wake_at()));
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
        let mut fds = vec![PollFd::new(self.s.signals.as_fd(), PollFlags::POLLIN)];
        for (gen, io) in self.gens.iter() {
            sources.push(Source::Notify(*gen));
            fds.push(PollFd::new(io.notify.sock.as_fd(), PollFlags::POLLIN));
            if let Some((fd, ev)) = io.probe.as_ref().and_then(Probe::poll_fd) {
                sources.push(Source::Probe(*gen));
                fds.push(PollFd::new(fd, ev));
            }
        }
        for (gen, out) in self.outputs.iter() {
            for fd in out.poll_fds() {
                sources.push(Source::Output(*gen));
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
        }
        for (key, fd, ev) in self.s.control.poll_fds() {
            sources.push(Source::Control(key));
            fds.push(PollFd::new(fd, ev));
        }
        if let Some(w) = &self.s.watch {
            sources.push(Source::Watch);
            fds.push(PollFd::new(w.fd(), PollFlags::POLLIN));
        }
        if let Some(fd) = self.check.as_ref().and_then(|c| c.fd()) {
            sources.push(Source::Check);
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        // Output waiting for a stalled reader, and words for the watchdog
        // when its pipe was full. (The children's pipes are left out of
        // the set while our output is backed up: output::Captured::poll_fds.)
        for (fd, ev) in outbox::poll_fds() {
            sources.push(Source::Outbox);
            fds.push(PollFd::new(fd, ev));
        }
        if let Some((fd, ev)) = self.s.watchdog.as_ref().and_then(|w| w.poll_fd()) {
            sources.push(Source::Watchdog);
            fds.push(PollFd::new(fd, ev));
        }
        if let Err(e) = poll(&mut fds, timeout) {
            if e != Errno::EINTR {
                log::error(&format!("poll failed: {e}"));
            }
        }
        // Any revents counts: a closed pipe reports POLLHUP alone.
        let ready: Vec<bool> =
            fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        let now = Instant::now();
        let mut probe_hits = Vec::new();
        let mut control_keys = Vec::new();
        let mut output_hits = Vec::new();
        for (source, hit) in sources.into_iter().zip(ready) {
            match source {
                _ if !hit => {}
                Source::Signals => self.read_signals(),
                Source::Notify(gen) => self.read_notify(gen),
                Source::Probe(gen) => probe_hits.push(gen),
                Source::Output(gen) => output_hits.push(gen),
                Source::Control(key) => control_keys.push(key),
                Source::Watch => {
                    if let Some(w) = self.s.watch.as_mut() {
                        for name in w.read(now) {
                            log::debug(&format!("--watch: {name} changed"));
                        }
                    }
                }
                Source::Check => {
                    if let Some(c) = self.check.as_mut() {
                        c.read_available();
                    }
                }
                Source::Outbox => outbox::on_writable(),
                Source::Watchdog => {
                    if let Some(w) = self.s.watchdog.as_mut() {
                        w.on_writable();
                    }
                }
            }
        }
        output_hits.dedup();
        for gen in output_hits {
            self.read_output(gen);
        }
        // Probes advance on their fd or their timer, whichever came.
        for (gen, io) in self.gens.iter_mut() {
            if let Some(p) = io.probe.as_mut() {
                if p.advance(now, probe_hits.contains(gen)) {
                    io.probe = None;
                    self.queue.push_back(Event::Ready { gen: *gen, by: ReadySource::Probe });
                }
            }
        }
        // Timeouts of half-sent requests are handled even when no fd fired.
        let (requests, warnings) = self.s.control.service(&control_keys, now);
        for w in warnings {
            log::warn(&w);
        }
        for (id, req) in requests {
            self.on_request(id, req);
        }
        if self.s.watch.as_mut().is_some_and(|w| w.take_due(now)) {
            log::info("a watched file changed: reloading");
            self.queue.push_back(Event::Reload { waiter: None });
        }
    }

    fn read_notify(&mut self, gen: GenId) {
        let Some(io) = self.gens.get_mut(&gen) else {
            return;
        };
        for m in io.notify.drain() {
            if let Some(s) = &m.status {
                log::info(&format!("generation {gen} status: {s}"));
                io.status = Some(s.clone());
            }
            for other in &m.other {
                log::debug(&format!("generation {gen} notify: {other}"));
            }
            if m.ready {
                self.queue.push_back(Event::Ready { gen, by: ReadySource::Notify });
            }
        }
    }

    fn read_signals(&mut self) {
        let mut batch = Vec::new();
        while let Ok(Some(info)) = self.s.signals.read_signal() {
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
                    self.queue.push_back(Event::Reload { waiter: None });
                }
            } else if SHUTDOWN.contains(&sig) {
                log::info(&format!("received {}", sig.as_str()));
                self.queue.push_back(Event::Shutdown);
            } else if sig == Signal::SIGCHLD {
                self.reap();
            } else {
                self.queue.push_back(Event::Forward(sig));
            }
        }
    }

    /// Reap every child that has exited (waitpid(-1) until none is left), so
    /// graceexec can be PID 1 or a subreaper without collecting zombies.
    fn reap(&mut self) {
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Status::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), Status::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            // A generation's exit concerns the supervisor; the watchdog's
            // only this loop; an exec probe's decides readiness; the
            // check's decides a reload; anything else is an orphan we
            // adopted.
            if self.gens.values().any(|io| io.pid == pid) {
                self.queue.push_back(Event::Exited { pid, status });
                continue;
            }
            // Before graceexec's exit, only if someone killed it: it is not
            // waited for again, and its pipe is closed.
            if self.s.watchdog.as_ref().is_some_and(|w| w.pid() == pid) {
                self.s.watchdog = None;
                log::warn(&format!(
                    "the watchdog (pid {pid}) exited with {status}; if graceexec is killed, processes the servers started may be left running"
                ));
                continue;
            }
            if self.check.as_ref().is_some_and(|c| c.pid() == pid) {
                let mut c = self.check.take().expect("present");
                // Its output has gone to graceexec's stderr as it came.
                let outcome = c.finished(status == Status::Code(0), &status.to_string());
                self.check_output = outcome.output;
                self.queue.push_back(Event::CheckDone { ok: outcome.ok, why: outcome.summary });
                continue;
            }
            let probe = self.gens.iter_mut().find_map(|(gen, io)| {
                io.probe.as_mut().filter(|p| p.running_pid() == Some(pid)).map(|p| (*gen, p))
            });
            match probe {
                Some((gen, p)) => {
                    if p.exec_finished(Instant::now(), status == Status::Code(0)) {
                        self.gens.get_mut(&gen).expect("present").probe = None;
                        self.queue.push_back(Event::Ready { gen, by: ReadySource::Probe });
                    }
                }
                None => log::debug(&format!("reaped pid {pid} ({status})")),
            }
        }
    }
}
