//! `graceexec events`: every note of the supervisor, and the starts and
//! share changes of the loop, as numbered event lines; the last few hundred
//! kept for `--since`, live ones streamed to each follower. A follower that
//! does not keep up is dropped (control/server/stream.rs); graceexec never
//! waits for one.
//!
//! Each event also rewrites the `--metrics-file`.

use std::collections::VecDeque;
use std::time::{Instant, SystemTime};

use super::Runtime;
use crate::control::protocol::{Answer, EventLine, Reply};
use crate::control::server::ConnId;
use crate::notify::monotonic_usec;
use crate::supervisor::{GenId, Note};
use crate::units::signal_name;
use crate::{log, metrics};

/// Events kept for `--since`.
const KEPT: usize = 512;

#[derive(Default)]
pub(super) struct Events {
    kept: VecDeque<EventLine>,
    next_seq: u64,
    followers: Vec<ConnId>,
}

impl Events {
    /// Across `graceexec upgrade`: the events kept, the next number, the
    /// followers' connections.
    pub(super) fn carry(&self) -> (Vec<EventLine>, u64, Vec<ConnId>) {
        (self.kept.iter().cloned().collect(), self.next_seq, self.followers.clone())
    }

    pub(super) fn adopt(kept: Vec<EventLine>, next_seq: u64, followers: Vec<ConnId>) -> Events {
        Events { kept: kept.into(), next_seq, followers }
    }
}

fn ms(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

impl Runtime {
    /// An event about generation `gen` (if any), filled in by `fill`.
    pub(super) fn event(
        &mut self,
        kind: &str,
        gen: Option<GenId>,
        fill: impl FnOnce(&mut EventLine),
    ) {
        let ev = &mut self.events;
        ev.next_seq += 1;
        let mut line = EventLine {
            seq: ev.next_seq,
            mono_ms: monotonic_usec() / 1000,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            event: kind.into(),
            generation: gen,
            pid: gen.and_then(|g| self.gens.get(&g)).map(|io| io.main),
            ..EventLine::default()
        };
        fill(&mut line);
        let now = Instant::now();
        let control = &mut self.io.control;
        ev.followers.retain(|id| {
            control.stream(*id, Reply::new(Answer::Event(Box::new(line.clone()))), now)
        });
        if ev.kept.len() == KEPT {
            ev.kept.pop_front();
        }
        ev.kept.push_back(line);
        self.write_metrics(true);
    }

    pub(super) fn on_note(&mut self, note: Note) {
        match note {
            Note::ReloadRequested { merged } => {
                let kind = if merged { "reload_merged" } else { "reload_requested" };
                self.event(kind, None, |_| {});
            }
            Note::ReloadStarted { gen } => self.event("reload_started", Some(gen), |_| {}),
            Note::ReloadReady { gen, took } => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                self.last_ok_reload = now.ok().map(|d| d.as_secs_f64());
                self.event("reload_ready", Some(gen), |e| e.took_ms = Some(ms(took)))
            }
            Note::ReloadFailed { gen, why } => {
                self.event("reload_failed", gen, |e| e.why = Some(why))
            }
            Note::Ready { gen, took } => {
                self.event("ready", Some(gen), |e| e.took_ms = Some(ms(took)))
            }
            Note::Stopping { gen, signal } => {
                self.event("stopping", Some(gen), |e| e.how = Some(signal_name(signal)))
            }
            Note::Drained { gen } => self.event("drained", Some(gen), |_| {}),
            Note::Exited { gen, pid, status } => self.event("exited", Some(gen), |e| {
                e.pid = Some(pid);
                e.how = Some(status.to_string());
                e.code = Some(status.exit_code());
            }),
            Note::RestartScheduled { delay } => {
                self.event("restart_scheduled", None, |e| e.delay_ms = Some(ms(delay)))
            }
            Note::Promoted { gen, from } => {
                self.event("promoted", Some(gen), |e| e.from = Some(from))
            }
            Note::RolledBack { gen, from } => {
                self.event("rolled_back", Some(gen), |e| e.from = Some(from))
            }
        }
    }

    /// A follower: the kept events after `since`, then every new one.
    pub(super) fn follow(&mut self, id: ConnId, since: Option<u64>) {
        let now = Instant::now();
        let from = since.unwrap_or(u64::MAX);
        for line in self.events.kept.iter().filter(|l| l.seq > from) {
            let reply = Reply::new(Answer::Event(Box::new(line.clone())));
            if !self.io.control.stream(id, reply, now) {
                return;
            }
        }
        self.events.followers.push(id);
    }

    /// Rewrite the `--metrics-file`; `up`: false as graceexec exits.
    pub(super) fn write_metrics(&mut self, up: bool) {
        let Some(path) = self.cfg.metrics_file.clone() else { return };
        let status = self.status(Instant::now(), false);
        let text = metrics::render(&self.cfg.name, &status, up);
        if let Err(e) = metrics::write_atomically(&path, &text) {
            log::warn(&format!("cannot write the metrics file {}: {e:#}", path.display()));
        }
    }
}
