//! `--check COMMAND`: a configuration test (`nginx -t`) before each reload.
//!
//! The command runs as `/bin/sh -c COMMAND`; exit 0 lets the reload go on,
//! anything else fails it with the command's last lines of output, and no
//! generation is started. Like an exec probe, the check is a child whose
//! exit reaches the event loop's waitpid(-1); nothing here waits for it.
//!
//! It is started by `spawn::shell`, which gives it a clean signal mask.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{pipe2, Pid};

use crate::spawn;

const MAX_LINES: usize = 20;
const MAX_BYTES: usize = 8192;

pub struct Check {
    cmd: String,
    pid: Pid,
    /// stdout and stderr of the check, until end of file.
    out: Option<File>,
    /// The last MAX_BYTES of output; `cut` once older bytes were dropped.
    tail: VecDeque<u8>,
    cut: bool,
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
    /// `env` is the environment the generations get; GRACEEXEC_GENERATION
    /// is set to `next_gen`, the generation the reload would start.
    pub fn start(cmd: &str, next_gen: u32, env: &[(OsString, OsString)]) -> Result<Check> {
        let mut envp: Vec<(OsString, OsString)> =
            env.iter().filter(|(k, _)| k != "GRACEEXEC_GENERATION").cloned().collect();
        envp.push(("GRACEEXEC_GENERATION".into(), next_gen.to_string().into()));

        let failed = |what: &str| format!("--check: cannot {what}");
        // Both ends close-on-exec: the child gets the write end only through
        // the dup2 in spawn::shell, which clears the flag on the copy. Only
        // the read end is nonblocking: a check whose write got EAGAIN would
        // fail.
        let (read, write) = pipe2(OFlag::O_CLOEXEC).with_context(|| failed("create a pipe"))?;
        fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).with_context(|| failed("set up"))?;
        let to = spawn::Out::To(write.as_fd());
        let pid =
            spawn::shell(cmd, &envp, to, to).map_err(|e| anyhow::anyhow!("--check: {e:#}"))?;
        // Our copy of the write end must go, or the read end never sees EOF.
        drop(write);
        Ok(Check {
            cmd: cmd.to_string(),
            pid,
            out: Some(File::from(read)),
            tail: VecDeque::new(),
            cut: false,
            running: true,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// The output pipe while it is open, to poll for POLLIN.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.out.as_ref().map(|f| f.as_fd())
    }

    /// Read what is there without blocking; the pipe is closed at EOF.
    pub fn read_available(&mut self) {
        self.pump();
    }

    /// Read at most 64 KiB, so that a check flooding its output cannot hold
    /// the event loop (poll reports the rest). True if more may be there.
    fn pump(&mut self) -> bool {
        let Some(out) = self.out.as_mut() else { return false };
        let mut chunk = [0u8; 4096];
        for _ in 0..16 {
            match out.read(&mut chunk) {
                Ok(0) => {
                    self.out = None;
                    return false;
                }
                Ok(n) => {
                    self.tail.extend(&chunk[..n]);
                    if self.tail.len() > MAX_BYTES {
                        self.tail.drain(..self.tail.len() - MAX_BYTES);
                        self.cut = true;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.out = None;
                    return false;
                }
            }
        }
        true
    }

    /// Call once the event loop's waitpid(-1) has reaped `pid()`. Takes what
    /// output is left (without waiting for processes the check left behind
    /// that still hold the pipe) and closes the pipe.
    pub fn finished(&mut self, exit_ok: bool, status_text: &str) -> CheckOutcome {
        self.running = false;
        // Bounded too (4 MiB): a process the check left behind could keep
        // writing into the pipe for ever.
        for _ in 0..64 {
            if !self.pump() {
                break;
            }
        }
        self.out = None;
        let text = String::from_utf8_lossy(self.tail.make_contiguous()).into_owned();
        let mut lines: Vec<&str> = text.lines().collect();
        if self.cut && !lines.is_empty() {
            lines.remove(0); // the first line lost its beginning
        }
        let start = lines.len().saturating_sub(MAX_LINES);
        let output = lines[start..].iter().map(|l| l.trim_end_matches('\r').to_string()).collect();
        let cmd = &self.cmd;
        let summary = if exit_ok {
            format!("the check `{cmd}` passed")
        } else if status_text.starts_with("signal") {
            format!("the check `{cmd}` was killed by {status_text}")
        } else {
            format!("the check `{cmd}` exited with {status_text}")
        };
        CheckOutcome { ok: exit_ok, summary, output }
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
            Check::start(cmd, 7, &[("GRACEEXEC_GENERATION".into(), "1".into())]).unwrap();
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
        assert_eq!(out.output.len(), MAX_LINES);
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
