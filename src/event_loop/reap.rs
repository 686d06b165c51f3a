//! Children that exit, and what generations say over sd_notify.
//!
//! Reaping follows process-wrap: waitid(WNOWAIT) sees an exit without
//! reaping it; the supervisor is told, and its `Finish` SIGKILLs the
//! generation's process group while the exited leader, a zombie, still
//! holds the group's id (a pid is not reused while a zombie or a group has
//! it); only then is the leader reaped. Killing after the reap could hit a
//! new group that got the same number.
//!
//! graceexec reaps every child, orphans it adopted as a subreaper included,
//! so it can be PID 1 without collecting zombies.

use std::time::Instant;

use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::Runtime;
use crate::log;
use crate::procfs;
use crate::supervisor::{Event, GenId, ReadySource, Status};

impl Runtime {
    /// Every exited child, one at a time, until none is left.
    pub(super) fn reap(&mut self) {
        let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        while self.exit.is_none() {
            let (pid, status) = match waitid(Id::All, peek) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Status::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), Status::Signal(sig as i32)),
                // StillAlive, or ECHILD: nothing (more) to reap.
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(other) => {
                    // Not asked for (WEXITED only); reap it so as not to spin.
                    if let Some(pid) = other.pid() {
                        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                    }
                    continue;
                }
            };
            let mut ended = false;
            if let Some(gen) = self.gen_of_main(pid) {
                // What it said before it exited counts first: a READY=1,
                // or a MAINPID= that hands the generation to another
                // process, which makes this exit not the generation's end.
                self.drain_queue();
                self.read_notify(gen);
                self.drain_queue();
                if self.gen_of_main(pid) == Some(gen) {
                    self.diagnose_exit(gen, pid);
                    self.dispatch(Event::Exited { gen, pid, status });
                    ended = true;
                    // The supervisor finishes every generation it knows;
                    // one it did not is cleaned up all the same.
                    self.finish(gen);
                }
            }
            self.before_reaping(pid);
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
            if !ended {
                self.reaped(pid, status);
            }
        }
    }

    fn gen_of_main(&self, pid: i32) -> Option<GenId> {
        self.gens.iter().find(|(_, io)| io.main == pid).map(|(gen, _)| *gen)
    }

    /// A reaped child that was not (or no longer) a generation's main
    /// process: the leader of a hand-off, the watchdog, the check, an exec
    /// probe, or an orphan graceexec adopted.
    fn reaped(&mut self, pid: i32, status: Status) {
        if let Some((gen, main)) = self
            .gens
            .iter()
            .find(|(_, io)| io.leader == pid && io.main != pid)
            .map(|(g, io)| (*g, io.main))
        {
            // The leader of a MAINPID hand-off. If the main process has
            // already gone with it (the leader reaped it: it was its
            // child), the generation has ended, with the leader's status.
            if !procfs::stat(main).is_some_and(|s| !s.zombie()) {
                self.dispatch(Event::Exited { gen, pid: main, status });
            }
            return;
        }
        if self.io.watchdog.as_ref().is_some_and(|w| w.pid() == pid) {
            // Before graceexec's exit, only if someone killed it: it is not
            // waited for again, and its pipe is closed.
            self.io.watchdog = None;
            log::warn(&format!(
                "the watchdog (pid {pid}) exited with {status}; if graceexec is killed, processes the servers started may be left running"
            ));
            return;
        }
        if self.check.as_ref().is_some_and(|c| c.pid() == pid) {
            let mut c = self.check.take().expect("present");
            // Its output has gone to graceexec's stderr as it came.
            let outcome = c.finished(status == Status::Code(0), &status.to_string());
            let (ok, why, output) = (outcome.ok, outcome.summary, outcome.output);
            self.queue.push_back(Event::CheckDone { ok, why, output });
            return;
        }
        if self.upgrade.as_ref().is_some_and(|p| p.pid() == pid) {
            self.upgrade_checked(status);
            return;
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
