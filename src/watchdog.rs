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
//!
//! Neither side ever blocks on a write. graceexec's end of the pipe is
//! O_NONBLOCK (the pipe is its own), and words the pipe has no room for
//! wait in order until the event loop sees it writable. The watchdog
//! kills first and tells after, through outbox.rs: a stalled stderr
//! (which it shares with graceexec) loses lines, never a kill.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{self, Pid};

use crate::log;
use crate::outbox::{self, Stream};
use crate::sys::spawn;

/// argv[1] of the watchdog mode, checked before the command line is
/// parsed; not a subcommand, so it is in no help text or completion.
pub const MODE: &str = "__watchdog";
const TIMEOUT_FLAG: &str = "--stop-timeout-ms";
/// Where `spawn` puts the pipe's read end.
const PIPE_FD: i32 = 3;

/// graceexec is exiting of its own accord: nothing to do.
const BYE: i32 = i32::MIN;
/// Words waiting beyond this many make room by dropping forgets (see
/// `send`). Watches are never dropped; a forget cancels its own watch
/// while both wait, so watches waiting are about as many as live groups.
const MAX_PENDING: usize = 1024;
/// pipe(7): a write of at most this many bytes is atomic, all or EAGAIN,
/// so never half a word.
const PIPE_BUF: usize = 4096;
/// How long `finish` waits for the goodbye to go through and the
/// watchdog to exit.
const FINISH_WAIT: Duration = Duration::from_millis(500);

pub struct Watchdog {
    pid: Pid,
    /// The write end, O_NONBLOCK.
    pipe: OwnedFd,
    /// Words the pipe had no room for yet, oldest first.
    pending: VecDeque<i32>,
}

impl Watchdog {
    pub fn start(stop_timeout: Duration) -> Result<Watchdog, String> {
        let (read, write) = spawn::pipe_above_stdio().map_err(|e| format!("pipe: {e}"))?;
        // Only graceexec has this description of the write end: the flag
        // is no one else's concern. The watchdog's read end stays blocking.
        fcntl(&write, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(|e| format!("pipe: {e}"))?;
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
            // graceexec's own non-blocking descriptions where it has them:
            // the watchdog may be unable to reopen the streams itself.
            stdout: outbox::helper_fd(Stream::Stdout),
            stderr: outbox::helper_fd(Stream::Stderr),
            parent_death_signal: None,
            dir: None,
        })
        .map_err(|e| e.message)?;
        Ok(Watchdog { pid, pipe: write, pending: VecDeque::new() })
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

    /// Queue `word` behind those waiting, and write what the pipe takes.
    /// A lost watch would leave a group unkilled after graceexec's death;
    /// a lost forget only lets the watchdog look at a pid that has gone
    /// (`leader` tells it apart), so only forgets are ever dropped.
    fn send(&mut self, word: i32) {
        if word != BYE && word < 0 {
            // Its watch still waiting: the watchdog never heard of it.
            let last = self.pending.iter().rposition(|&w| w == word || w == -word);
            if let Some(i) = last.filter(|&i| self.pending[i] == -word) {
                self.pending.remove(i);
                return;
            }
        }
        self.pending.push_back(word);
        if self.pending.len() > MAX_PENDING {
            if let Some(i) = self.pending.iter().position(|&w| w < 0 && w != BYE) {
                self.pending.remove(i);
                log::debug("the watchdog's pipe is full: dropped a forget");
            }
        }
        self.on_writable();
    }

    /// The pipe, to poll for POLLOUT while words wait.
    pub fn poll_fd(&self) -> Option<(BorrowedFd<'_>, PollFlags)> {
        (!self.pending.is_empty()).then(|| (self.pipe.as_fd(), PollFlags::POLLOUT))
    }

    /// Write the words waiting, as many as the pipe takes now.
    pub fn on_writable(&mut self) {
        while !self.pending.is_empty() {
            let n = self.pending.len().min(PIPE_BUF / 4);
            let bytes: Vec<u8> =
                self.pending.iter().take(n).flat_map(|w| w.to_ne_bytes()).collect();
            match unistd::write(&self.pipe, &bytes) {
                Ok(k) => {
                    self.pending.drain(..k / 4);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                // A watchdog that is gone (someone killed it) only costs
                // this protection; the loop reaps it and says so.
                Err(e) => {
                    log::debug(&format!("cannot reach the watchdog: {e}"));
                    self.pending.clear();
                    return;
                }
            }
        }
    }

    /// graceexec exits normally: the watchdog exits too, and is reaped
    /// before graceexec is gone, so nothing of it outlives graceexec.
    /// (Not called for a watchdog the event loop has already reaped.)
    /// Bounded by `FINISH_WAIT`: a watchdog that is stopped, or a pipe
    /// that stays full, must not hold graceexec's exit. A goodbye that did
    /// not get through leaves it EOF, to which it answers as to graceexec's
    /// death: the groups it knows of are empty by now, or ought to go.
    pub fn finish(mut self) {
        let deadline = Instant::now() + FINISH_WAIT;
        self.send(BYE);
        while let Some((fd, ev)) = self.poll_fd() {
            let Some(ms) = ms_until(deadline) else { break };
            let _ = poll(&mut [PollFd::new(fd, ev)], ms);
            self.on_writable();
        }
        drop(self.pipe);
        // Not the loop's signalfd any more, and no pidfd in nix: a short
        // poll of waitpid, bounded.
        loop {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
                _ => return,
            }
            if ms_until(deadline).is_none() {
                log::debug("the watchdog has not exited: leaving it behind");
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The poll timeout until `deadline`, rounded up; None once it passed.
fn ms_until(deadline: Instant) -> Option<PollTimeout> {
    let left = deadline.saturating_duration_since(Instant::now());
    let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    (ms > 0).then(|| PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX))
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
    // The pipe first: outbox opens fds, which must not take fd 3 when it
    // is missing (`graceexec __watchdog` run by hand).
    let pipe = crate::sys::claim_fd(PIPE_FD, |b| {
        let stat = nix::sys::stat::fstat(b)?;
        if stat.st_mode & nix::libc::S_IFMT != nix::libc::S_IFIFO {
            anyhow::bail!("fd {PIPE_FD} is not a pipe");
        }
        nix::fcntl::fcntl(b, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
        Ok(())
    });
    outbox::init(true);
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
        // Every kill of the round first, then the lines about them, which
        // never block: a backed-up stderr drops them (outbox.rs).
        for (pid, what) in sweep(&mut groups, Instant::now() >= end) {
            match what {
                Swept::Killed => log::warn(&format!(
                    "graceexec is gone: killed what was left of the process group of pid {pid}"
                )),
                Swept::Gone => log::debug(&format!(
                    "watchdog: pid {pid} is another process now; its group is gone"
                )),
            }
        }
        outbox::on_writable();
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

enum Swept {
    Killed,
    /// Its leader's pid names another process: nothing to kill.
    Gone,
}

/// Kill the groups whose leader has exited, or all at the stop timeout;
/// keep the others. Returns what it did, to be told once all is done.
fn sweep(groups: &mut Vec<Group>, timed_out: bool) -> Vec<(i32, Swept)> {
    let mut done = Vec::new();
    groups.retain(|g| {
        let pid = g.pid;
        match leader(g) {
            // A pid number stays taken while any process has it as its
            // group id, so if it was free to be given to another process,
            // the group was empty: nothing to kill, and a killpg could hit
            // a group that new process leads.
            Leader::Replaced => {
                done.push((pid, Swept::Gone));
                return false;
            }
            Leader::Running if !timed_out => return true,
            Leader::Running | Leader::Exited => {}
        }
        if killpg(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            done.push((pid, Swept::Killed));
        }
        false
    });
    done
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

/// The watchdog across `graceexec upgrade`: it stays graceexec's child,
/// and its pipe never sees EOF, so it never notices.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct WatchdogOut {
    pid: i32,
    pipe: i32,
    pending: Vec<i32>,
}

impl Watchdog {
    pub fn carry(&self, handed: &mut crate::carry::Handed) -> WatchdogOut {
        WatchdogOut {
            pid: self.pid.as_raw(),
            pipe: handed.fd(self.pipe.as_fd()),
            pending: self.pending.iter().copied().collect(),
        }
    }

    pub fn carried_fd(w: &WatchdogOut) -> i32 {
        w.pipe
    }

    pub fn adopt(w: WatchdogOut) -> anyhow::Result<Watchdog> {
        let pipe = crate::carry::take_pipe(w.pipe, "the watchdog's pipe")?;
        Ok(Watchdog { pid: Pid::from_raw(w.pid), pipe, pending: w.pending.into() })
    }
}

#[cfg(test)]
mod tests;
