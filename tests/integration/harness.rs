//! A small harness: run the built graceexec against the example server, a
//! temp dir per test, and `wait_until(condition, deadline)` instead of
//! sleeps.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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

    pub fn spawn(mut c: Command, env: &[(&str, &str)]) -> Ge {
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
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
        Ge { child, log, status: None }
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

    /// The pid in `generation K started as pid P`.
    pub fn gen_pid(&self, gen: u32) -> i32 {
        // This instance's line: a nested graceexec logs to the same stderr.
        let needle = format!("graceexec[{}]: generation {gen} started as pid ", self.pid());
        self.wait_log(&needle);
        let log = self.log();
        let rest = &log[log.find(&needle).unwrap() + needle.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
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

pub fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

fn exchange<S: Read + Write>(mut s: S, path: &str) -> std::io::Result<String> {
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(std::io::Error::other(format!("bad response: {resp:?}"))),
    }
}

/// One request on a new connection; the body of a 200 answer.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    exchange(s, path)
}

pub fn get_unix(path: &Path, url: &str) -> std::io::Result<String> {
    let s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    exchange(s, url)
}

/// The example server's `/info` as key=value pairs.
pub fn info(addr: SocketAddr) -> HashMap<String, String> {
    parse_info(&get(addr, "/info").unwrap())
}

pub fn parse_info(body: &str) -> HashMap<String, String> {
    body.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The pid in a `pid=P gen=G` body.
pub fn pid_of(body: &str) -> i32 {
    parse_info(&body.replace(' ', "\n"))["pid"].parse().unwrap()
}

/// Clients that each open a new connection per request, until stopped or
/// bounded by count and time.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    pids: Arc<Mutex<BTreeSet<i32>>>,
    threads: Vec<JoinHandle<()>>,
}

pub struct LoadResult {
    pub ok: u64,
    pub failed: Vec<String>,
    pub pids: BTreeSet<i32>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        const MAX_PER_CLIENT: u64 = 200_000;
        const MAX_TIME: Duration = Duration::from_secs(120);
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let pids = Arc::new(Mutex::new(BTreeSet::new()));
        let end = Instant::now() + MAX_TIME;
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed, pids) =
                    (stop.clone(), ok.clone(), failed.clone(), pids.clone());
                std::thread::spawn(move || {
                    for _ in 0..MAX_PER_CLIENT {
                        if stop.load(Ordering::SeqCst) || Instant::now() > end {
                            break;
                        }
                        match get(addr, "/") {
                            Ok(body) => {
                                ok.fetch_add(1, Ordering::SeqCst);
                                pids.lock().unwrap().insert(pid_of(&body));
                            }
                            Err(e) => failed.lock().unwrap().push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load { stop, ok, failed, pids, threads }
    }

    pub fn served(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Wait until `n` more requests have been served.
    pub fn wait_more(&self, n: u64) {
        let target = self.served() + n;
        wait_until("load to make progress", LONG, || self.served() >= target);
    }

    pub fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        let pids = self.pids.lock().unwrap().clone();
        LoadResult { ok: self.ok.load(Ordering::SeqCst), failed, pids }
    }
}

impl LoadResult {
    /// No request failed, and some were served.
    pub fn assert_clean(&self) {
        assert!(
            self.failed.is_empty(),
            "{} of {} requests failed: {:?}",
            self.failed.len(),
            self.failed.len() as u64 + self.ok,
            &self.failed[..self.failed.len().min(5)]
        );
        assert!(self.ok > 0, "no request was served");
    }
}

/// Whether `pid` is a live process (not gone, not a zombie awaiting reaping
/// by whoever inherited it).
pub fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

// ---- Added for issue 9's tests (signals, notify_auth, probe_env, chdir) ----
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
    pub fn spawn_then(mut c: Command, first: impl FnOnce(i32)) -> Ge {
        let mut child = c.spawn().unwrap();
        first(child.id() as i32);
        let log = Arc::new(Mutex::new(String::new()));
        let streams = [
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        for stream in streams.into_iter().flatten() {
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
        Ge { child, log, status: None }
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
