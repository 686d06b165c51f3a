//! What generations say over sd_notify, and who may say it.
//!
//! Each generation has its own notify socket, under a name nobody can
//! guess, in a 0700 directory. A datagram counts only if the kernel's
//! SCM_CREDENTIALS name a sender that is one of the generation's own
//! processes: in its process group, or a descendant of its main process
//! (a worker that called setsid()). A sender that has already exited when
//! graceexec reads the datagram (`systemd-notify --ready` from a wrapper
//! script) cannot be looked up; it is accepted, since only the generation's
//! environment holds the socket's name. Anything else, a draining
//! generation or a stray process that found the socket, is refused with a
//! line naming the sender.
//!
//! `MAINPID=N` hands the generation over to process N, which must be alive
//! and in the generation's process group: from then on N gets the stop
//! signal and N's exit ends the generation (a daemon whose parent forks
//! the real server and exits). Outside the group it is refused.

use super::Runtime;
use crate::log;
use crate::notify::Sender;
use crate::procfs;
use crate::supervisor::{Event, GenId, ReadySource};

/// Whether `sender` may speak for the generation led by `leader`.
fn admitted(sender: Option<&Sender>, leader: i32, main: i32) -> Result<(), String> {
    let Some(s) = sender else {
        return Err("a sender without credentials".into());
    };
    if s.pid <= 0 {
        return Err(format!("pid {} (outside graceexec's pid namespace)", s.pid));
    }
    // The group is the leader's; descendants count from the leader, and
    // after a MAINPID hand-off from the main process too.
    let ours = match procfs::in_group_or_descendant(s.pid, leader, leader) {
        Some(false) if main != leader => procfs::in_group_or_descendant(s.pid, leader, main),
        other => other,
    };
    match ours {
        Some(true) => Ok(()),
        // Gone already: it knew the socket's name.
        None => Ok(()),
        Some(false) => Err(format!("pid {}, which is not one of its processes", s.pid)),
    }
}

impl Runtime {
    /// Read what generation `gen` sent; READY=1 becomes an event, STATUS=
    /// and MAINPID= are kept.
    pub(super) fn read_notify(&mut self, gen: GenId) {
        let Some(io) = self.gens.get_mut(&gen) else { return };
        for r in io.notify.drain() {
            let m = r.message;
            if let Err(who) = admitted(r.sender.as_ref(), io.leader, io.main) {
                let what = if m.ready { "READY=1" } else { "a notify message" };
                log::warn(&format!("generation {gen}: ignored {what} from {who}"));
                continue;
            }
            for bad in &m.refused {
                log::warn(&format!("generation {gen}: ignored {bad}: not a process id"));
            }
            if let Some(pid) = m.main_pid.filter(|p| *p != io.main) {
                match procfs::stat(pid) {
                    Some(st) if st.pgrp == io.leader && !st.zombie() => {
                        log::info(&format!(
                            "generation {gen}: its main process is now pid {pid} (MAINPID)"
                        ));
                        io.main = pid;
                    }
                    Some(_) => log::warn(&format!(
                        "generation {gen}: ignored MAINPID={pid}: not a live process of its process group {}",
                        io.leader
                    )),
                    None => log::warn(&format!(
                        "generation {gen}: ignored MAINPID={pid}: no such process"
                    )),
                }
            }
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
}
