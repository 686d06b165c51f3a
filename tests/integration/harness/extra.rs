//! What the tests of the hardening issue need beyond the basics: status by
//! name, /proc readers, real-time signals, and graceexec held at a known
//! point of its start.

use std::collections::HashMap;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use super::*;

// Additive only: nothing above this line was changed for them.

/// `status --json --name NAME` against the instances of `runtime_dir`;
/// None when no instance answers (not up yet, or gone).
pub fn status_json_in(runtime_dir: &Path, name: &str) -> Option<serde_json::Value> {
    let (code, out, _) = ctl_in(runtime_dir, &["status", "--json", "--name", name]);
    match code {
        0 => Some(serde_json::from_str(&out).expect("status --json prints JSON")),
        _ => None,
    }
}

/// `status_json_in` with this test's runtime directory.
pub fn status_json(name: &str) -> Option<serde_json::Value> {
    status_json_in(&runtime_dir(), name)
}

/// Generation `gen` of a status reply: (pid, state).
pub fn gen_in_status(status: &serde_json::Value, gen: u64) -> Option<(i32, String)> {
    let g = status["generations"].as_array()?.iter().find(|g| g["generation"] == gen)?;
    Some((g["pid"].as_i64()? as i32, g["state"].as_str()?.to_string()))
}

/// The generation numbers a status reply lists, in its order.
pub fn gens_in_status(status: &serde_json::Value) -> Vec<u64> {
    let gens = status["generations"].as_array().cloned().unwrap_or_default();
    gens.iter().filter_map(|g| g["generation"].as_u64()).collect()
}

/// The first address a status reply lists, as a TCP address.
pub fn addr_in_status(status: &serde_json::Value) -> SocketAddr {
    let shown = status["sockets"][0]["address"].as_str().expect("a socket in the status");
    shown.parse().unwrap_or_else(|e| panic!("{shown:?} is not a TCP address: {e}"))
}

/// Wait until `status` shows generation `gen` ready; its pid. Fails at
/// once if graceexec exits or is stopped meanwhile, with its log.
pub fn wait_ready_in(ge: &mut Ge, runtime_dir: &Path, name: &str, gen: u64) -> i32 {
    let mut pid = None;
    let ok = poll_until(LONG, || {
        ge.assert_up(&format!("generation {gen} to be ready"));
        let s = status_json_in(runtime_dir, name);
        pid = s.as_ref().and_then(|s| gen_in_status(s, gen)).filter(|(_, st)| st == "ready");
        pid.is_some()
    });
    assert!(ok, "generation {gen} of {name} was never ready; log:\n{}", ge.log());
    pid.unwrap().0
}

/// `wait_ready_in` with this test's runtime directory.
pub fn wait_ready(ge: &mut Ge, name: &str, gen: u64) -> i32 {
    wait_ready_in(ge, &runtime_dir(), name, gen)
}

/// A process's state letter in /proc/PID/stat (R, S, T, Z...); None if gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// Send signal number `signo` (any, including SIGRTMIN+n, which nix's
/// `Signal` cannot name).
pub fn send_signal(pid: i32, signo: i32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { nix::libc::kill(pid, signo) };
    assert_eq!(rc, 0, "kill({pid}, {signo}): {}", std::io::Error::last_os_error());
}

/// A process's environment, from /proc/PID/environ.
pub fn proc_environ(pid: i32) -> HashMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `KEY=VALUE` lines (the output of `env`) as a map.
pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Ge {
    /// Like `spawn`, but runs `first` on graceexec's pid the moment
    /// `Command::spawn` returns: std returns only once the exec has
    /// happened (it waits on a close-on-exec pipe for an exec error), so
    /// `first` acts on graceexec's own image at its very beginning.
    pub fn spawn_then(c: Command, first: impl FnOnce(i32)) -> Ge {
        Ge::spawn_with(c, &[], first)
    }

    /// Panics, with the log, if graceexec has exited or is stopped
    /// (SIGTSTP and the like): the fast failure while waiting for `what`.
    pub fn assert_up(&mut self, what: &str) {
        if let Some(st) = self.try_status() {
            // Its last lines, unless something it started holds the pipe.
            poll_until(Duration::from_secs(5), || Arc::strong_count(&self.log) == 1);
            panic!("graceexec ended ({st}) while waiting for {what}; log:\n{}", self.log());
        }
        if proc_state(self.pid()) == Some('T') {
            panic!("graceexec is stopped while waiting for {what}; log:\n{}", self.log());
        }
    }

    /// Wait for one of graceexec's own lines (`graceexec[PID]: ...`)
    /// containing `needle`; fails at once if graceexec exits or stops.
    pub fn wait_own_line(&mut self, needle: &str) -> String {
        let prefix = format!("graceexec[{}]: ", self.pid());
        let mut found = None;
        let ok = poll_until(LONG, || {
            let log = self.log();
            found = log
                .lines()
                .find(|l| l.starts_with(&prefix) && l.contains(needle))
                .map(String::from);
            if found.is_none() {
                self.assert_up(&format!("a line with {needle:?}"));
            }
            found.is_some()
        });
        assert!(ok, "timed out waiting for a line with {needle:?}; log:\n{}", self.log());
        found.unwrap()
    }
}
