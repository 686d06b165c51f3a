//! A small harness: run the built graceexec against the example server, a
//! temp dir per test, and `wait_until(condition, deadline)` instead of
//! sleeps.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Generous: these are bounds for a stuck test, not expectations.
pub const LONG: Duration = Duration::from_secs(30);

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_graceexec"))
}

/// The example server, which `cargo test` builds next to the test binary.
pub fn server() -> PathBuf {
    let mut dir = std::env::current_exe().unwrap();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join("server");
    assert!(path.exists(), "{} is missing: run the tests with `cargo test`", path.display());
    path
}

/// Poll `cond` with a short backoff until it holds (true) or `deadline`
/// passes (false). The one place the tests sleep: a poll interval.
pub fn poll_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(1);
    while !cond() {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(pause); // poll interval, bounded by the deadline
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    true
}

/// Poll `cond` until it holds; panic with `what` at the deadline.
pub fn wait_until(what: &str, deadline: Duration, cond: impl FnMut() -> bool) {
    assert!(poll_until(deadline, cond), "timed out after {deadline:?} waiting for {what}");
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let n = NEXT_DIR.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("ge-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running graceexec with its stderr (and its children's) captured.
pub struct Ge {
    child: Child,
    log: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
    /// How `graceexec status` reaches it: its --control or --name, and
    /// the XDG_RUNTIME_DIR it was started with.
    control: Option<PathBuf>,
    name: Option<String>,
    runtime: PathBuf,
}

thread_local! {
    /// Each test runs on its own thread and gets its own XDG_RUNTIME_DIR,
    /// so instances of parallel tests never see each other's control
    /// sockets, while the instances and clients of one test do.
    static RUNTIME_DIR: TempDir = TempDir::new();
}

/// This test's XDG_RUNTIME_DIR.
pub fn runtime_dir() -> PathBuf {
    RUNTIME_DIR.with(|d| d.0.clone())
}

pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.env("XDG_RUNTIME_DIR", runtime_dir());
    c
}

/// Run a client command (`reload`, `status`, ...): (exit code, stdout,
/// stderr).
pub fn ctl(args: &[&str]) -> (i32, String, String) {
    ctl_in(&runtime_dir(), args)
}

/// `ctl` from another thread, with the test's runtime directory.
pub fn ctl_in(runtime_dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut c = command(args);
    c.env("XDG_RUNTIME_DIR", runtime_dir);
    let out = c.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// Run graceexec to completion: (exit code, stderr).
pub fn run_to_end(mut c: Command) -> (i32, String) {
    let out = c.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

impl Ge {
    /// `graceexec ARGS -- server` with `env` set.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Ge {
        let server = server();
        let mut full: Vec<&str> = args.to_vec();
        full.push("--");
        full.push(server.to_str().unwrap());
        Ge::spawn(command(&full), env)
    }

    pub fn spawn(c: Command, env: &[(&str, &str)]) -> Ge {
        Ge::spawn_with(c, env, |_| {})
    }

    /// `spawn`, running `first` on graceexec's pid the moment
    /// `Command::spawn` returns.
    pub fn spawn_with(mut c: Command, env: &[(&str, &str)], first: impl FnOnce(i32)) -> Ge {
        for (k, v) in env {
            c.env(k, v);
        }
        let args: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let after = |flag: &str| {
            let cut = args.iter().position(|a| a == "--").unwrap_or(args.len());
            args[..cut].windows(2).find(|w| w[0] == flag).map(|w| w[1].clone())
        };
        let control = after("--control").map(PathBuf::from);
        let name = after("--name");
        let runtime = c
            .get_envs()
            .find(|(k, _)| *k == "XDG_RUNTIME_DIR")
            .and_then(|(_, v)| v.map(PathBuf::from))
            .unwrap_or_else(runtime_dir);
        let mut child = c.spawn().unwrap();
        first(child.id() as i32);
        let log = Arc::new(Mutex::new(String::new()));
        for stream in [
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        Ge { child, log, status: None, control, name, runtime }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_log(&self, needle: &str) {
        if !poll_until(LONG, || self.log().contains(needle)) {
            panic!("timed out waiting for {needle:?} in the log:\n{}", self.log());
        }
    }

    /// `graceexec status --json` of this instance; None while it does not
    /// answer (not up yet, or gone).
    pub fn status(&self) -> Option<Value> {
        let mut args = vec!["status".to_string(), "--json".to_string()];
        match (&self.control, &self.name) {
            (Some(c), _) => args.extend(["--control".into(), c.display().to_string()]),
            (None, Some(n)) => args.extend(["--name".into(), n.clone()]),
            (None, None) => args[0] = "list".into(),
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, _) = ctl_in(&self.runtime, &args);
        if code != 0 {
            return None;
        }
        let v: Value = serde_json::from_str(&out).ok()?;
        match v {
            // `list`: this instance's entry, by pid.
            Value::Array(all) => all.into_iter().find(|s| s["pid"] == self.pid()),
            one => Some(one),
        }
    }

    /// Poll `status` until `cond` holds; the status that satisfied it.
    pub fn wait_status(&self, what: &str, mut cond: impl FnMut(&Value) -> bool) -> Value {
        let mut last = None;
        let found = poll_until(LONG, || {
            last = self.status();
            last.as_ref().is_some_and(&mut cond)
        });
        match (found, last) {
            (true, Some(v)) => v,
            (_, last) => {
                panic!("timed out waiting for {what}; last status: {last:?}; log:\n{}", self.log())
            }
        }
    }

    /// Wait until generation `gen`, or a later one, serves.
    pub fn wait_ready(&self, gen: u64) {
        self.wait_status(&format!("generation {gen} to be ready"), |s| {
            generations(s).any(|g| g["generation"].as_u64() >= Some(gen) && g["state"] == "ready")
        });
    }

    /// The main pid of generation `gen`, running or exited.
    pub fn gen_pid(&self, gen: u32) -> i32 {
        let gen = u64::from(gen);
        let s = self.wait_status(&format!("generation {gen} to have a pid"), |s| {
            let seen = |g: &Value| g["generation"].as_u64() == Some(gen) && g["pid"].is_i64();
            generations(s).any(seen) || exits(s).any(seen)
        });
        let seen = |g: &&Value| g["generation"].as_u64() == Some(gen) && g["pid"].is_i64();
        let g = generations(&s).find(seen).or_else(|| exits(&s).find(seen)).unwrap();
        g["pid"].as_i64().unwrap() as i32
    }

    /// The pid graceexec started generation `gen` as (its process group),
    /// which is not its main process after a MAINPID= hand-off.
    pub fn leader_pid(&self, gen: u32) -> i32 {
        let gen = u64::from(gen);
        let s = self.wait_status(&format!("generation {gen} to run"), |s| {
            generations(s).any(|g| g["generation"].as_u64() == Some(gen) && g["leader"].is_i64())
        });
        let g = generations(&s).find(|g| g["generation"].as_u64() == Some(gen)).unwrap();
        g["leader"].as_i64().unwrap() as i32
    }

    /// Wait until generation `gen` has exited: how ("status 0", "signal
    /// SIGKILL"...), as `status` reports it.
    pub fn wait_exited(&self, gen: u32) -> String {
        let gen = u64::from(gen);
        let s = self.wait_status(&format!("generation {gen} to exit"), |s| {
            exits(s).any(|g| g["generation"].as_u64() == Some(gen))
        });
        let e = exits(&s).find(|g| g["generation"].as_u64() == Some(gen)).unwrap();
        e["how"].as_str().unwrap().to_string()
    }

    /// Wait until generation `gen` has been sent the stop signal (it
    /// drains, or has exited already).
    pub fn wait_stopping(&self, gen: u32) {
        let gen = u64::from(gen);
        self.wait_status(&format!("generation {gen} to be stopped"), |s| {
            generations(s)
                .any(|g| g["generation"].as_u64() == Some(gen) && g["state"] == "draining")
                || exits(s).any(|g| g["generation"].as_u64() == Some(gen))
        });
    }

    /// How many generations have been started so far (running or exited,
    /// as far as `status` remembers).
    pub fn started(&self) -> u64 {
        let s = self.wait_status("an answer to status", |_| true);
        generations(&s).chain(exits(&s)).filter_map(|g| g["generation"].as_u64()).max().unwrap_or(0)
    }

    /// The watchdog's pid, from graceexec's `-v` log.
    pub fn watchdog_pid(&self) -> i32 {
        let needle = format!("graceexec[{}]: watchdog is pid ", self.pid());
        self.wait_log(&needle);
        let log = self.log();
        let rest = &log[log.find(&needle).unwrap() + needle.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// The first TCP address graceexec reports as bound.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.wait_log("bound ");
        let log = self.log();
        for line in log.lines() {
            if let Some(rest) = line.split("bound ").nth(1) {
                if let Ok(a) = rest.split_whitespace().next().unwrap().parse() {
                    return a;
                }
            }
        }
        panic!("no TCP address in the log:\n{log}");
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).unwrap();
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    /// Wait for graceexec to exit; its exit code.
    pub fn wait_exit(&mut self) -> i32 {
        wait_until("graceexec to exit", LONG, || self.try_status().is_some());
        let code = self.status.unwrap().code().expect("graceexec was killed by a signal");
        // Let the reader threads take the last lines.
        wait_until("the log to close", LONG, || Arc::strong_count(&self.log) == 1);
        code
    }
}

impl Drop for Ge {
    fn drop(&mut self) {
        // A graceful stop first, so that nested instances clean up after
        // themselves; then a second stop request (SIGKILL to every
        // generation); then SIGKILL. Two signals sent back to back may merge.
        let steps =
            [(Signal::SIGTERM, Duration::from_secs(10)), (Signal::SIGTERM, Duration::from_secs(5))];
        for (sig, grace) in steps {
            if self.try_status().is_some() {
                return;
            }
            let _ = kill(Pid::from_raw(self.pid()), sig);
            poll_until(grace, || self.try_status().is_some());
        }
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn generations(s: &Value) -> impl Iterator<Item = &Value> {
    s["generations"].as_array().into_iter().flatten()
}

fn exits(s: &Value) -> impl Iterator<Item = &Value> {
    s["exited"].as_array().into_iter().flatten()
}

pub fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Whether `pid` is a live process (not gone, not a zombie awaiting reaping
/// by whoever inherited it).
pub fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

mod extra;
mod load;
pub use extra::*;
pub use load::*;
mod fdstore;
pub use fdstore::*;
