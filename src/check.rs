//! `--check COMMAND`: a configuration test (`nginx -t`) before each reload.
//!
//! The command runs as `/bin/sh -c COMMAND`; exit 0 lets the reload go on,
//! anything else fails it with the command's last lines of output, and no
//! generation is started. Like an exec probe, the check is a child whose
//! exit reaches the event loop's waitpid(-1); nothing here waits for it.
//!
//! It is started by `shell::spawn`, which gives it a clean signal mask.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::Result;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::env::Vars;
use crate::output::{self, Captured};
use crate::shell;

pub struct Check {
    cmd: String,
    pid: Pid,
    /// Its stdout and stderr, one pipe, passed on to graceexec's stderr
    /// like a generation's, with the last lines kept.
    out: Captured,
    running: bool,
}

pub struct CheckOutcome {
    pub ok: bool,
    /// e.g. "the check `nginx -t` exited with status 1"
    pub summary: String,
    /// The last lines of output, in order.
    pub output: Vec<String>,
}

impl Check {
    /// Start `/bin/sh -c cmd` in its own process group, stdin /dev/null,
    /// stdout and stderr into one pipe (so they interleave in order).
    /// `env` is `Env::check`'s: the generations' environment with
    /// GRACEEXEC_GENERATION set to the generation the reload would start.
    pub fn start(cmd: &str, env: &Vars, dir: Option<&Path>) -> Result<Check> {
        let (ends, out) = output::pipes(false, false)?;
        let to = shell::Out::To(ends.stderr.as_fd());
        let pid =
            shell::spawn(cmd, env, dir, to, to).map_err(|e| anyhow::anyhow!("--check: {e:#}"))?;
        // `ends` goes here: our copy of the write end must not keep the
        // read end from seeing EOF.
        Ok(Check { cmd: cmd.to_string(), pid, out, running: true })
    }

    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// The output pipe while it is open, to poll.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.out.poll_fds().into_iter().next()
    }

    /// Pass on what is there without blocking.
    pub fn read_available(&mut self) {
        self.out.read_available();
    }

    /// The last lines it wrote so far.
    pub fn tail(&self) -> Vec<String> {
        self.out.tail()
    }

    /// Call once the event loop's waitpid(-1) has reaped `pid()`. Takes what
    /// output is there, without waiting for processes the check left
    /// behind that may still hold the pipe.
    pub fn finished(&mut self, exit_ok: bool, status_text: &str) -> CheckOutcome {
        self.running = false;
        self.out.read_available();
        let cmd = &self.cmd;
        let summary = if exit_ok {
            format!("the check `{cmd}` passed")
        } else if status_text.starts_with("signal") {
            format!("the check `{cmd}` was killed by {status_text}")
        } else {
            format!("the check `{cmd}` exited with {status_text}")
        };
        CheckOutcome { ok: exit_ok, summary, output: self.tail() }
    }
}

impl Drop for Check {
    /// A check still running when its reload is abandoned (a shutdown) is
    /// killed with its whole group; the loop's waitpid(-1) reaps it.
    fn drop(&mut self) {
        if self.running {
            let _ = killpg(self.pid, Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};

    fn run(cmd: &str) -> (Check, WaitStatus) {
        let mut check =
            Check::start(cmd, &vec![("GRACEEXEC_GENERATION".into(), "7".into())], None).unwrap();
        check.out.silence();
        // Nothing reaps for us in a unit test; the event loop does in graceexec.
        let status = waitpid(Pid::from_raw(check.pid()), None).unwrap();
        check.read_available();
        (check, status)
    }

    #[test]
    fn a_failed_check_reports_its_output_in_order() {
        let cmd = "echo hi; echo err >&2; echo gen=$GRACEEXEC_GENERATION; exit 3";
        let (mut check, status) = run(cmd);
        assert!(matches!(status, WaitStatus::Exited(_, 3)));
        let out = check.finished(false, "status 3");
        assert!(!out.ok);
        assert_eq!(out.summary, format!("the check `{cmd}` exited with status 3"));
        assert_eq!(out.output, ["hi", "err", "gen=7"]);
        // EOF once no copy of the write end is left: a process another
        // test forks at the same moment holds one until its exec.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while check.fd().is_some() && std::time::Instant::now() < end {
            let fd = check.fd().expect("open");
            let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
            check.read_available();
        }
        assert!(check.fd().is_none(), "pipe closed");
    }

    #[test]
    fn keeps_the_last_lines_and_resets_the_signal_mask() {
        // The child must not inherit blocked signals (graceexec blocks them
        // for its signalfd; here only the test thread does). This catches a
        // regression only where /bin/sh is bash, which keeps the mask it is
        // given: dash clears its mask itself.
        let mut mask = nix::sys::signal::SigSet::empty();
        mask.add(Signal::SIGHUP);
        mask.thread_block().unwrap();
        let (mut check, _) = run("seq 1 5000; exec grep SigBlk /proc/self/status");
        mask.thread_unblock().unwrap();
        let out = check.finished(true, "status 0");
        assert_eq!(
            out.summary,
            "the check `seq 1 5000; exec grep SigBlk /proc/self/status` passed"
        );
        assert_eq!(out.output.len(), output::TAIL_LINES);
        assert_eq!(out.output[0], "4982");
        assert_eq!(out.output[19], "SigBlk:\t0000000000000000");
    }

    #[test]
    fn a_missing_shell_command_fails_like_any_check() {
        let (mut check, status) = run("no-such-command-for-graceexec");
        assert!(matches!(status, WaitStatus::Exited(_, 127)));
        let out = check.finished(false, "status 127");
        assert!(out.output[0].contains("no-such-command-for-graceexec"), "{:?}", out.output);
    }
}
