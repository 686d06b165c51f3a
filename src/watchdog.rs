//! The watchdog: what stops the generations' process groups when
//! graceexec itself is killed.
//!
//! PR_SET_PDEATHSIG gives each server the stop signal when graceexec dies,
//! but it is not inherited across fork: a worker or a `sleep` the server
//! started in its process group would be left running, re-parented to
//! init and holding the listening sockets. A SIGKILLed graceexec can do
//! nothing about that, so a helper process does it. graceexec forks it at
//! start-up and tells it, over a pipe, the pid of each generation it
//! starts (whose process group has that id) and of each whose group it
//! has killed. EOF on the pipe without a goodbye means graceexec died: then,
//! as graceexec would have (KillMode=mixed), the watchdog SIGKILLs each
//! group once its leader has exited, or at `--stop-timeout` if it has not.
//! The helper holds no socket, blocks the signals graceexec blocks (so a
//! terminal's Ctrl-C does not end it) and sits in read(2) until then.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use crate::{log, spawn};

/// graceexec is exiting of its own accord: nothing to do.
const BYE: i32 = i32::MIN;

pub struct Watchdog {
    pid: Pid,
    pipe: File,
}

impl Watchdog {
    pub fn start(stop_timeout: Duration) -> nix::Result<Watchdog> {
        let (read, write) = spawn::pipe_above_stdio()?;
        let keep = read.as_raw_fd();
        let pid = spawn::fork_helper(keep, move || watch(File::from(read), stop_timeout))?;
        Ok(Watchdog { pid, pipe: File::from(write) })
    }

    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// A generation started as `pid`, in its own process group.
    pub fn watch(&mut self, pid: i32) {
        self.send(pid);
    }

    /// The group of `pid` has been killed after its leader exited.
    pub fn forget(&mut self, pid: i32) {
        self.send(-pid);
    }

    fn send(&mut self, word: i32) {
        // 4 bytes, below PIPE_BUF: written whole or not at all. A watchdog
        // that is gone (someone killed it) only costs this protection.
        if let Err(e) = self.pipe.write_all(&word.to_ne_bytes()) {
            log::debug(&format!("cannot reach the watchdog: {e}"));
        }
    }

    /// graceexec exits normally: the watchdog exits too, and is reaped
    /// before graceexec is gone, so nothing of it outlives graceexec.
    pub fn finish(mut self) {
        self.send(BYE);
        drop(self.pipe);
        while let Err(Errno::EINTR) = waitpid(self.pid, None) {}
    }
}

/// The helper's side: returns its exit code.
fn watch(mut pipe: File, stop_timeout: Duration) -> i32 {
    let mut groups: Vec<i32> = Vec::new();
    let mut word = [0u8; 4];
    // read_exact retries EINTR; EOF, or a half word, is graceexec's death.
    while pipe.read_exact(&mut word).is_ok() {
        match i32::from_ne_bytes(word) {
            BYE => return 0,
            pid if pid > 0 => groups.push(pid),
            pid => groups.retain(|g| *g != -pid),
        }
    }
    let end = Instant::now() + stop_timeout;
    loop {
        let timed_out = Instant::now() >= end;
        groups.retain(|&pid| {
            if !timed_out && running(pid) {
                return true;
            }
            if killpg(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                log::warn(&format!(
                    "graceexec is gone: killed what was left of the process group of pid {pid}"
                ));
            }
            false
        });
        if groups.is_empty() {
            return 0;
        }
        // Polling, because these are not our children to wait for; this
        // runs only after graceexec has died, and at most `stop_timeout`.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` still runs. An exited leader may stay a zombie for a
/// while, or for good under an init that does not reap: that counts as
/// exited, as it would for graceexec's waitpid.
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which may hold ") ".
        Ok(stat) => !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => kill(Pid::from_raw(pid), None).is_ok(),
    }
}
