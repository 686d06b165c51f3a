//! Hints for the mistakes everyone makes once, from what a generation did
//! before it exited: a server that binds its own port instead of taking the
//! one graceexec passes, and a wrapper script that runs the server as a
//! child instead of `exec`ing it.

use super::Runtime;
use crate::supervisor::{GenId, Role};
use crate::{log, procfs};

impl Runtime {
    /// Generation `gen`'s main process `pid` exited (not reaped yet).
    pub(super) fn diagnose_exit(&mut self, gen: GenId, pid: i32) {
        let view = self.sup.view(std::time::Instant::now());
        let role = view.gens.iter().find(|g| g.id == gen).map(|g| g.role);
        let starting = role == Some(Role::Starting);
        // A generation told to stop may leave its workers a moment behind.
        let unasked = matches!(role, Some(Role::Starting | Role::Ready | Role::Canary));
        let Some(leader) = self.gens.get(&gen).map(|io| io.leader) else { return };
        let tail = self.tail_of(gen).join("\n").to_ascii_lowercase();
        let left = if unasked { procfs::group_members(leader, pid).len() } else { 0 };
        for hint in hints(starting, &tail, left) {
            log::warn(&format!("generation {gen}: {hint}"));
        }
    }
}

/// `starting`: it exited before it was ready; `tail`: its last stderr
/// lines, lower-cased; `left`: its group's processes still running.
fn hints(starting: bool, tail: &str, left: usize) -> Vec<&'static str> {
    let mut out = Vec::new();
    if starting && (tail.contains("address already in use") || tail.contains("eaddrinuse")) {
        out.push(
            "it says 'Address already in use': it binds the port itself; make it take the \
             socket graceexec passes at fd 3 (LISTEN_FDS, LISTEN_PID)",
        );
    }
    if tail.contains("listen_pid") {
        out.push(
            "it mentions LISTEN_PID: if COMMAND is a wrapper script, end it with `exec server ...` \
             so that the server is the process graceexec started",
        );
    }
    if left > 0 {
        out.push(
            "its main process exited while its process group still runs: if COMMAND is a \
             wrapper script, end it with `exec server ...` (graceexec now stops the rest)",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::hints;

    #[test]
    fn each_mistake_gets_its_hint() {
        assert!(hints(true, "bind: address already in use", 0)[0].contains("fd 3"));
        assert!(hints(false, "bind: address already in use", 0).is_empty(), "serving: not this");
        assert!(hints(true, "listen_pid=12 is not my pid", 0)[0].contains("exec"));
        assert!(hints(false, "", 2)[0].contains("process group still runs"));
        assert!(hints(true, "panic: config", 0).is_empty());
    }
}
