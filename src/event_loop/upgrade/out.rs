//! The event loop's part of the upgrade document, written out.

use std::time::Instant;

use super::doc::{GenOut, LoopOut};
use super::Runtime;
use crate::carry::Handed;
use crate::pidfile::PidFile;

impl Runtime {
    pub(super) fn carry_loop(&self, now: Instant, handed: &mut Handed) -> LoopOut {
        let (events, next_seq, followers) = self.events.carry();
        let gens = self
            .gens
            .iter()
            .map(|(id, io)| GenOut {
                id: *id,
                leader: io.leader,
                main: io.main,
                notify: io.notify.carry(handed),
                status: io.status.clone(),
            })
            .collect();
        LoopOut {
            uptime: now.saturating_duration_since(self.started),
            gens,
            outputs: self.outputs.iter().map(|(g, c)| (*g, c.carry(handed))).collect(),
            tails: self.tails.iter().cloned().collect(),
            watched: self.watched.clone(),
            last_ok_reload: self.last_ok_reload,
            watch: self.io.watch.as_ref().map(|w| w.carry(now, handed)),
            events,
            next_seq,
            followers,
            sockets: self.io.sockets.carry(handed),
            control: self.io.control.carry(now, handed),
            notify_dir: self.io.notify_dir.path().to_path_buf(),
            watchdog: self.io.watchdog.as_ref().map(|w| w.carry(handed)),
            pid_file: self.io._pid_file.as_ref().map(PidFile::carry),
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }
}
