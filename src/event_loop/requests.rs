//! Control requests in, replies out (the protocol is control/protocol.rs).
//! Requests become supervisor events; acknowledgements of receipt and
//! `status` are answered here, outcomes come from the supervisor.

use std::time::{Duration, Instant};

use super::Runtime;
use crate::control::protocol::{
    Answer, ExitedStatus, GenStatus, LastReload, Reply, Request, SocketStatus, Status,
};
use crate::control::server::ConnId;
use crate::log;
use crate::readiness::Mode;
use crate::steer::conns::Scanner;
use crate::supervisor::{Event, Outcome, View};
use crate::units::human;

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Runtime {
    pub(super) fn on_request(&mut self, id: ConnId, req: Request) {
        match req {
            Request::Reload { wait, canary } => {
                let canary = canary.map(|pct| (pct * 10_000.0).round() as u32);
                let waiter = if wait {
                    log::debug(&format!("control: reload (connection {id} waits)"));
                    Some(id)
                } else {
                    log::debug("control: reload (no wait)");
                    self.io.control.reply(id, Reply::new(Answer::ReloadAccepted), true);
                    None
                };
                self.queue.push_back(Event::Reload { waiter, canary });
            }
            Request::Promote => self.queue.push_back(Event::Promote { waiter: Some(id) }),
            Request::Events { since } => self.follow(id, since),
            Request::Rollback => self.queue.push_back(Event::Rollback { waiter: Some(id) }),
            Request::Status => {
                let status = self.status(Instant::now(), true);
                self.io.control.reply(id, Reply::new(Answer::Status(Box::new(status))), true);
            }
            Request::Upgrade { binary } => self.on_upgrade(id, binary),
            Request::Stop => {
                let pid = std::process::id();
                self.io.control.reply(id, Reply::new(Answer::Stopping { pid }), false);
                self.queue.push_back(Event::Stop { waiter: id });
            }
        }
    }

    /// The reply for a reload's outcome, with what only the loop knows:
    /// the new generation's pid, the failed one's last lines.
    pub(super) fn outcome_reply(&mut self, outcome: &Outcome) -> Reply {
        match outcome {
            Outcome::Ready { gen, took, share } => Reply::new(Answer::Reloaded {
                generation: *gen,
                pid: self.gens.get(gen).map(|io| io.main),
                ready_ms: ms(*took),
                share: share.map(|s| f64::from(s) / 10_000.0),
            }),
            Outcome::Failed { gen, why, serving, output } => {
                let stderr = match gen {
                    Some(g) => self.tail_of(*g),
                    None => output.clone(),
                };
                Reply::new(Answer::ReloadFailed {
                    error: why.clone(),
                    generation: *gen,
                    serving: *serving,
                    stderr,
                })
            }
        }
    }

    /// `connections`: count each generation's open connections (a walk of
    /// the kernel's table per generation: for `status`, not the metrics).
    pub(super) fn status(&self, now: Instant, connections: bool) -> Status {
        let mut status = Status::from(self.sup.view(now));
        for g in &mut status.generations {
            if let Some(io) = self.gens.get(&g.generation) {
                g.pid = Some(io.main);
                g.leader = Some(io.leader);
                let sockets = &self.io.sockets;
                if let Some(slot) = sockets.slot_of(g.generation) {
                    g.socket = Some(slot);
                    g.share = Some(f64::from(sockets.share_of(g.generation)) / 10_000.0);
                    g.queued = Some(sockets.queued(slot));
                    let ports = sockets.steered_ports();
                    if connections {
                        g.connections = Scanner::new().count(io.leader, &ports).ok();
                    }
                }
                g.status.clone_from(&io.status);
                if g.state == "starting" {
                    g.waiting = Some(match io.probe.as_ref().and_then(|p| p.last_failure()) {
                        Some(why) => why.to_string(),
                        None if io.probe.is_some() => "probing".into(),
                        None => match &self.cfg.ready {
                            Some(Mode::Delay(d)) => format!("the {} delay", human(*d)),
                            _ => "no READY=1 yet".into(),
                        },
                    });
                }
            }
        }
        status.pid = std::process::id();
        status.last_reload_unix = status.last_reload.as_ref().map(|r| {
            let at = std::time::SystemTime::now() - Duration::from_millis(r.ago_ms);
            at.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
        });
        status.last_reload_ok_unix = self.last_ok_reload;
        status.version = env!("CARGO_PKG_VERSION").into();
        status.uptime_ms = ms(now.saturating_duration_since(self.started));
        status.command = self.cfg.command.iter().map(|a| a.to_string_lossy().into()).collect();
        status.sockets = self
            .io
            .sockets
            .describe()
            .into_iter()
            .map(|(name, address, steered)| SocketStatus {
                name: name.into(),
                address: address.into(),
                steered,
            })
            .collect();
        status
    }
}

impl From<View> for Status {
    fn from(v: View) -> Status {
        let generations = v
            .gens
            .iter()
            .map(|g| GenStatus {
                generation: g.id,
                pid: g.pid,
                leader: None,
                state: g.role.as_str().into(),
                phase: g.role.phase().into(),
                age_ms: ms(g.age),
                ready_ms: g.ready_after.map(ms),
                status: None,
                waiting: None,
                socket: None,
                share: None,
                queued: None,
                connections: None,
            })
            .collect();
        let last_reload = v.last_reload.map(|(o, ago)| match o {
            Outcome::Ready { gen, took, .. } => LastReload {
                ok: true,
                generation: Some(gen),
                ready_ms: Some(ms(took)),
                error: None,
                ago_ms: ms(ago),
            },
            Outcome::Failed { gen, why, .. } => LastReload {
                ok: false,
                generation: gen,
                ready_ms: None,
                error: Some(why),
                ago_ms: ms(ago),
            },
        });
        let exited = v
            .exited
            .iter()
            .map(|(e, ago)| ExitedStatus {
                generation: e.id,
                pid: e.pid,
                how: e.status.to_string(),
                code: e.status.exit_code(),
                ago_ms: ms(*ago),
            })
            .collect();
        Status {
            state: v.state.into(),
            generations,
            last_reload,
            restarts: v.restarts,
            reloads_ok: v.reloads.0,
            reloads_failed: v.reloads.1,
            exited,
            restart_in_ms: v.restart_in.map(ms),
            kept_for_ms: v.kept_for.map(ms),
            ..Status::default()
        }
    }
}
