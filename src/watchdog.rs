//! The watchdog: what stops the generations' process groups when
//! graceexec itself is killed.
//!
//! PR_SET_PDEATHSIG gives each server the stop signal when graceexec dies,
//! but it is not inherited across fork: a worker or a `sleep` the server
//! started in its process group would be left running, re-parented to
//! init and holding the listening sockets. A SIGKILLed graceexec can do
//! nothing about that, so a helper process does it.
//!
//! graceexec starts it at start-up as a fresh image of itself: `spawn`
//! forks and execs /proc/self/exe (the running binary, even if a deploy
//! has replaced or deleted its file since) as `graceexec __watchdog
//! --stop-timeout-ms N`, so nothing but async-signal-safe calls runs
//! between the fork and the exec. It gets the read end of a pipe at fd 3
//! and no other fd above 2, graceexec's stdout and stderr, its own process
//! group (a terminal's Ctrl-C to graceexec's group does not reach it), no
//! PR_SET_PDEATHSIG (it must outlive graceexec), and neither LISTEN_* nor
//! NOTIFY_SOCKET. It blocks the signals that would end it, so that only
//! SIGKILL or the pipe does.
//!
//! Over the pipe graceexec sends the pid of each generation it starts
//! (whose process group has that id) and of each whose group it has
//! killed. EOF without a goodbye means graceexec died: then, as graceexec
//! would have (KillMode=mixed), the watchdog SIGKILLs each group once its
//! leader has exited, or at `--stop-timeout` if it has not; a leader whose
//! pid has meanwhile gone to another process (told apart by its start
//! time) had an empty group, and nothing is killed for it. Until then it
//! sits in read(2).

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use crate::log;
use crate::sys::spawn;

/// argv[1] of the watchdog mode, checked before the command line is
/// parsed; not a subcommand, so it is in no help text or completion.
pub const MODE: &str = "__watchdog";
const TIMEOUT_FLAG: &str = "--stop-timeout-ms";
/// Where `spawn` puts the pipe's read end.
const PIPE_FD: i32 = 3;

/// graceexec is exiting of its own accord: nothing to do.
const BYE: i32 = i32::MIN;

pub struct Watchdog {
    pid: Pid,
    pipe: File,
}

impl Watchdog {
    pub fn start(stop_timeout: Duration) -> Result<Watchdog, String> {
        let (read, write) = spawn::pipe_above_stdio().map_err(|e| format!("pipe: {e}"))?;
        let ms = stop_timeout.as_micros().div_ceil(1000).min(u64::MAX as u128);
        let args: Vec<OsString> =
            ["graceexec", MODE, TIMEOUT_FLAG, &ms.to_string()].map(OsString::from).into();
        // Its own variables are for the generations only.
        let env = std::env::vars_os()
            .filter(|(k, _)| !k.as_bytes().starts_with(b"LISTEN_") && k != "NOTIFY_SOCKET")
            .collect();
        let pid = spawn::spawn(spawn::Child {
            program: Path::new("/proc/self/exe"),
            args: &args,
            env,
            fds: &[read.as_fd()],
            listen_pid: false,
            stdout: None,
            stderr: None,
            parent_death_signal: None,
            dir: None,
        })
        .map_err(|e| e.message)?;
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
    /// (Not called for a watchdog the event loop has already reaped.)
    pub fn finish(mut self) {
        self.send(BYE);
        drop(self.pipe);
        while let Err(Errno::EINTR) = waitpid(self.pid, None) {}
    }
}

/// `graceexec __watchdog ARGS`: the watchdog's own `main`; returns its exit
/// code.
pub fn main(args: &[OsString]) -> i32 {
    let usage = |why: &str| {
        log::error(&format!("{MODE} is internal to graceexec ({why})"));
        2
    };
    let stop_timeout = match args {
        [flag, ms] if flag == TIMEOUT_FLAG => ms.to_str().and_then(|m| m.parse().ok()),
        _ => None,
    };
    let Some(ms) = stop_timeout else {
        return usage(&format!("expected {TIMEOUT_FLAG} MILLISECONDS"));
    };
    // Only SIGKILL or the pipe ends it: main blocked every signal but the
    // synchronous faults before it came here, so a signal meant for
    // graceexec (a `kill` of every graceexec, a hang-up) waits here,
    // pending, forever; SIGTTOU too, so that its one warning line is
    // written even from a background group of a terminal with `stty
    // tostop`.
    let pipe = crate::sys::claim_fd(PIPE_FD, |b| {
        let stat = nix::sys::stat::fstat(b)?;
        if stat.st_mode & nix::libc::S_IFMT != nix::libc::S_IFIFO {
            anyhow::bail!("fd {PIPE_FD} is not a pipe");
        }
        nix::fcntl::fcntl(b, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
        Ok(())
    });
    match pipe {
        Ok(fd) => watch(File::from(fd), Duration::from_millis(ms)),
        Err(e) => usage(&format!("{e:#}")),
    }
}

/// The watchdog's work: returns its exit code.
fn watch(mut pipe: File, stop_timeout: Duration) -> i32 {
    let mut groups: Vec<Group> = Vec::new();
    let mut word = [0u8; 4];
    // read_exact retries EINTR; EOF, or a half word, is graceexec's death.
    while pipe.read_exact(&mut word).is_ok() {
        match i32::from_ne_bytes(word) {
            BYE => return 0,
            pid if pid > 0 => groups.push(Group::named(pid)),
            pid => groups.retain(|g| g.pid != -pid),
        }
    }
    let end = Instant::now() + stop_timeout;
    loop {
        sweep(&mut groups, Instant::now() >= end);
        if groups.is_empty() {
            return 0;
        }
        // Polling, because these are not our children to wait for; this
        // runs only after graceexec has died, and at most `stop_timeout`.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A generation's process group, named by its leader's pid.
struct Group {
    pid: i32,
    /// The leader's start time when graceexec named it (None if it was
    /// already reaped by then, or /proc cannot tell): what tells the
    /// leader from a later process that got the same pid.
    started: Option<u64>,
}

impl Group {
    fn named(pid: i32) -> Group {
        Group { pid, started: stat(pid).map(|s| s.started) }
    }
}

/// Kill the groups whose leader has exited, or all at the stop timeout;
/// keep the others.
fn sweep(groups: &mut Vec<Group>, timed_out: bool) {
    groups.retain(|g| {
        let pid = g.pid;
        match leader(g) {
            // A pid number stays taken while any process has it as its
            // group id, so if it was free to be given to another process,
            // the group was empty: nothing to kill, and a killpg could hit
            // a group that new process leads.
            Leader::Replaced => {
                log::debug(&format!(
                    "watchdog: pid {pid} is another process now; its group is gone"
                ));
                return false;
            }
            Leader::Running if !timed_out => return true,
            Leader::Running | Leader::Exited => {}
        }
        if killpg(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            log::warn(&format!(
                "graceexec is gone: killed what was left of the process group of pid {pid}"
            ));
        }
        false
    });
}

enum Leader {
    Running,
    /// Gone, or a zombie: an exited leader may stay one for a while, or
    /// for good under an init that does not reap, and counts as exited,
    /// as it would for graceexec's waitpid.
    Exited,
    /// The leader exited and was reaped, and its pid now names another
    /// process.
    Replaced,
}

fn leader(g: &Group) -> Leader {
    match stat(g.pid) {
        Some(now) if g.started != Some(now.started) => Leader::Replaced,
        Some(now) if now.zombie => Leader::Exited,
        Some(_) => Leader::Running,
        // No /proc to tell: whether anything has the pid.
        None if g.started.is_none() && kill(Pid::from_raw(g.pid), None).is_ok() => Leader::Running,
        None => Leader::Exited,
    }
}

struct Stat {
    zombie: bool,
    /// Clock ticks after boot (field 22 of /proc/PID/stat).
    started: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which may hold ") ", from the
    // state (field 3) on.
    let (_, rest) = stat.rsplit_once(") ")?;
    let mut fields = rest.split_whitespace();
    let zombie = fields.next()? == "Z";
    let started = fields.nth(22 - 4)?.parse().ok()?;
    Some(Stat { zombie, started })
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::Command;

    use super::*;

    fn sleeper() -> std::process::Child {
        Command::new("sleep").arg("1000").process_group(0).spawn().unwrap()
    }

    #[test]
    fn a_pid_reused_by_another_process_is_not_killed() {
        // Regression: the watchdog killed the group of whatever process
        // had the pid by then, such as a later session leader that was
        // given the number of a generation reaped by init.
        let mut other = sleeper();
        let pid = other.id() as i32;
        let started = Group::named(pid).started;
        assert!(started.is_some());
        let before_it = started.map(|s| s - 1);
        // A leader named when it ran (then reaped, its pid reused), and
        // one already reaped when it was named.
        let mut groups = vec![Group { pid, started: before_it }, Group { pid, started: None }];
        sweep(&mut groups, true);
        assert!(groups.is_empty());
        // A SIGKILL sent by the sweep would be what it dies of, whatever
        // comes after it.
        kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
        let status = other.wait().unwrap();
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "killed the pid's new owner");
    }

    #[test]
    fn a_running_leader_keeps_its_group_alive_until_the_stop_timeout() {
        let mut server = sleeper();
        let mut groups = vec![Group::named(server.id() as i32)];
        sweep(&mut groups, false);
        assert_eq!(groups.len(), 1);
        sweep(&mut groups, true);
        assert!(groups.is_empty());
        assert_eq!(server.wait().unwrap().signal(), Some(Signal::SIGKILL as i32));
    }
}
