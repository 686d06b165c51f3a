//! Waiting: one poll(2) over every fd graceexec watches, turned into events.

use std::os::fd::AsFd;
use std::time::Instant;

use nix::errno::Errno;
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::Runtime;
use crate::control::server::Key;
use crate::log;
use crate::outbox;
use crate::readiness::Probe;
use crate::supervisor::{Event, GenId};

enum Source {
    Signals,
    Notify(GenId),
    Probe(GenId),
    Output(GenId),
    Control(Key),
    Watch,
    Check,
    Upgrade,
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
        let mut deadline = self.sup.next_deadline();
        for io in self.gens.values() {
            deadline = earliest(deadline, io.probe.as_ref().and_then(Probe::wake_at));
        }
        deadline = earliest(deadline, self.io.control.wake_at());
        deadline = earliest(deadline, self.drains.wake_at());
        deadline = earliest(deadline, self.io.watch.as_ref().and_then(|w| w.wake_at()));
        deadline = earliest(deadline, self.upgrade.as_ref().map(|p| p.deadline()));
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
        let mut fds = vec![PollFd::new(self.io.signals.as_fd(), PollFlags::POLLIN)];
        for (gen, io) in self.gens.iter() {
            sources.push(Source::Notify(*gen));
            fds.push(PollFd::new(io.notify.sock.as_fd(), PollFlags::POLLIN));
            for (fd, ev) in io.probe.as_ref().map(Probe::poll_fds).unwrap_or_default() {
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
        for (key, fd, ev) in self.io.control.poll_fds() {
            sources.push(Source::Control(key));
            fds.push(PollFd::new(fd, ev));
        }
        if let Some(w) = &self.io.watch {
            sources.push(Source::Watch);
            fds.push(PollFd::new(w.fd(), PollFlags::POLLIN));
        }
        if let Some(fd) = self.check.as_ref().and_then(|c| c.fd()) {
            sources.push(Source::Check);
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        if let Some(fd) = self.upgrade.as_ref().and_then(|p| p.fd()) {
            sources.push(Source::Upgrade);
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        // Output waiting for a stalled reader, and words for the watchdog
        // when its pipe was full. (The children's pipes are left out of
        // the set while our output is backed up: output::Captured::poll_fds.)
        for (fd, ev) in outbox::poll_fds() {
            sources.push(Source::Outbox);
            fds.push(PollFd::new(fd, ev));
        }
        if let Some((fd, ev)) = self.io.watchdog.as_ref().and_then(|w| w.poll_fd()) {
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
                    if let Some(w) = self.io.watch.as_mut() {
                        for name in w.read(now) {
                            log::debug(&format!("--watch: {name} changed"));
                            if !self.watched.contains(&name) {
                                self.watched.push(name);
                            }
                        }
                    }
                }
                Source::Check => {
                    if let Some(c) = self.check.as_mut() {
                        c.read_available();
                    }
                }
                Source::Upgrade => {
                    if let Some(p) = self.upgrade.as_mut() {
                        p.read_available();
                    }
                }
                Source::Outbox => outbox::on_writable(),
                Source::Watchdog => {
                    if let Some(w) = self.io.watchdog.as_mut() {
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
        let sockets = &mut self.io.sockets;
        for (gen, io) in self.gens.iter_mut() {
            let Some(p) = io.probe.as_mut() else { continue };
            if p.advance(now, probe_hits.contains(gen), sockets) {
                let by = p.source();
                io.probe = None;
                sockets.unroute_probes_of(*gen);
                self.queue.push_back(Event::Ready { gen: *gen, by });
                continue;
            }
            p.look(now, io.leader, io.main);
            if let Some(why) = p.last_failure().filter(|w| io.waiting.as_ref() != Some(w)) {
                io.waiting = Some(why.clone());
                self.queue.push_back(Event::Waiting { gen: *gen, why });
            }
        }
        self.check_drains(now);
        self.upgrade_timed_out(now);
        // Timeouts of half-sent requests are handled even when no fd fired.
        let (requests, warnings) = self.io.control.service(&control_keys, now);
        for w in warnings {
            log::warn(&w);
        }
        for (id, req) in requests {
            self.on_request(id, req);
        }
        if self.io.watch.as_mut().is_some_and(|w| w.take_due(now)) {
            let what = match self.watched.len() {
                0 => "a watched file changed".to_string(),
                1..=3 => format!("{} changed", self.watched.join(", ")),
                n => format!("{} and {} more changed", self.watched[..2].join(", "), n - 2),
            };
            self.watched.clear();
            log::info(&format!("{what}: reloading"));
            self.queue.push_back(Event::Reload { waiter: None, canary: None });
        }
    }

    /// One batch of signals for the supervisor; SIGCHLD is the loop's.
    pub(super) fn read_signals(&mut self) {
        let mut batch = Vec::new();
        while let Ok(Some(info)) = self.io.signals.read_signal() {
            match info.ssi_signo as i32 {
                libc::SIGCHLD => self.reap_due = true,
                sig => batch.push(sig),
            }
        }
        if !batch.is_empty() {
            self.queue.push_back(Event::Signals(batch));
        }
    }
}
