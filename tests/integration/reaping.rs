//! Kill before reap: when a generation's main process exits, its process
//! group gets SIGKILL while the exited leader is still a zombie, so the
//! group id cannot have gone to another process group yet; only then is
//! the leader reaped (process-wrap's order). Seen from outside with strace,
//! which records graceexec's own system calls in order.

use std::process::Command;

use crate::harness::*;

fn strace() -> Option<std::path::PathBuf> {
    ["/usr/bin/strace", "/bin/strace"]
        .map(std::path::PathBuf::from)
        .into_iter()
        .find(|p| p.exists())
}

#[test]
#[ignore = "needs strace (scripts/setup.sh installs it): run with --ignored"]
fn an_exited_generations_group_is_killed_before_its_leader_is_reaped() {
    let strace = strace().expect("strace is missing: run scripts/setup.sh");
    let dir = TempDir::new();
    let trace = dir.path("trace");
    let server = server();
    // Not -f: only graceexec's own calls, in the order it made them.
    let mut c = Command::new(strace);
    c.args(["-qq", "-e", "trace=kill,waitid,wait4", "-o"]).arg(&trace);
    c.arg(bin())
        .args(["--name", "reaped", "-l", "127.0.0.1:0", "--ready", "notify", "--"])
        .arg(&server);
    c.env("XDG_RUNTIME_DIR", runtime_dir());
    let ge = Ge::spawn(c, &[]);
    // Ge stops strace, which would leave the traced graceexec running.
    let _stop = Stop("reaped");
    ge.wait_ready(1);
    let leader = ge.gen_pid(1);
    // The generation exits on its own: the restart path reaps it.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(leader), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    ge.wait_ready(2);
    let lines = std::fs::read_to_string(&trace).unwrap();
    let at = |needle: &str| lines.lines().position(|l| l.contains(needle));
    let killed = at(&format!("kill(-{leader}, SIGKILL)")).expect("the group is killed");
    let reaped = lines
        .lines()
        .position(|l| l.starts_with(&format!("wait4({leader},")) && !l.contains("= 0"))
        .unwrap_or_else(|| panic!("the leader is reaped:\n{lines}"));
    assert!(killed < reaped, "reaped before its group was killed:\n{lines}");
}

/// Stops the instance of this name when dropped, however the test ends.
struct Stop(&'static str);

impl Drop for Stop {
    fn drop(&mut self) {
        ctl(&["stop", "--name", self.0, "--timeout", "20s"]);
    }
}
