//! Control requests in, JSON replies out (the protocol is in control/mod.rs
//! and the README).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Runtime;
use crate::control::server::ConnId;
use crate::control::Request;
use crate::log;
use crate::supervisor::{Event, Outcome};

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Runtime {
    pub(super) fn on_request(&mut self, id: ConnId, req: Request) {
        match req {
            Request::Reload { wait: true } => {
                log::debug(&format!("control: reload (connection {id} waits)"));
                self.queue.push_back(Event::Reload { waiter: Some(id) });
            }
            Request::Reload { wait: false } => {
                log::debug("control: reload (no wait)");
                let reply = json!({"graceexec": 1, "ok": true, "accepted": true});
                self.s.control.reply(id, &reply, true);
                self.queue.push_back(Event::Reload { waiter: None });
            }
            Request::Status => {
                let reply = self.status_reply(Instant::now());
                self.s.control.reply(id, &reply, true);
            }
            Request::Stop => {
                let pid = std::process::id();
                let reply = json!({"graceexec": 1, "ok": true, "stopping": true, "pid": pid});
                self.s.control.reply(id, &reply, false);
                self.stop_conns.push(id);
                // Unlike a second SIGTERM, a second `graceexec stop` does not
                // escalate to SIGKILL: it just waits for the same exit.
                if !self.s.sup.shutting_down() {
                    log::info("stop requested through the control socket");
                    self.queue.push_back(Event::Shutdown);
                }
            }
        }
    }

    pub(super) fn report_reply(&mut self, outcome: &Outcome) -> Value {
        match outcome {
            Outcome::Ready { gen, pid, took } => json!({
                "graceexec": 1, "ok": true, "generation": gen, "pid": pid, "ready_ms": ms(*took),
            }),
            Outcome::Failed { gen, why, serving } => {
                let lines = match gen {
                    Some(g) => self.tail_of(*g),
                    None if self.s.sup.shutting_down() => Vec::new(),
                    None => self.check_output.clone(),
                };
                json!({
                    "graceexec": 1, "ok": false, "error": why, "generation": gen,
                    "serving": serving, "stderr": lines,
                })
            }
        }
    }

    pub(super) fn status_reply(&self, now: Instant) -> Value {
        let v = self.s.sup.view(now);
        let sockets: Vec<Value> =
            self.s.listeners.iter().map(|l| json!({"name": l.name, "address": l.shown})).collect();
        let gens: Vec<Value> = v
            .gens
            .iter()
            .map(|g| {
                let status = self.gens.get(&g.id).and_then(|io| io.status.clone());
                json!({
                    "generation": g.id, "pid": g.pid, "state": g.state, "age_ms": ms(g.age),
                    "ready_ms": g.ready_after.map(ms), "status": status,
                })
            })
            .collect();
        let last_reload = match &v.last_reload {
            None => Value::Null,
            Some((Outcome::Ready { gen, pid, took }, ago)) => json!({
                "ok": true, "generation": gen, "pid": pid, "ready_ms": ms(*took), "ago_ms": ms(*ago),
            }),
            Some((Outcome::Failed { gen, why, .. }, ago)) => json!({
                "ok": false, "generation": gen, "error": why, "ago_ms": ms(*ago),
            }),
        };
        let command: Vec<String> =
            self.s.command.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        json!({
            "graceexec": 1,
            "ok": true,
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_ms": ms(now.saturating_duration_since(self.started)),
            "state": v.state,
            "command": command,
            "sockets": sockets,
            "generations": gens,
            "last_reload": last_reload,
            "restarts": v.restarts,
        })
    }
}
