//! The fault matrix: servers that crash, hang or never get ready while
//! clients keep coming, and a thousand reloads. Other rows of the matrix
//! live in watchdog.rs (a SIGKILLed graceexec), reload.rs and control.rs
//! (see CONTRIBUTING.md).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::events::restart_delays;
use crate::harness::*;

/// A wrapper that runs `before` in the generation's shell, then execs the
/// example server (so LISTEN_PID still names the server).
pub(crate) fn wrapper(dir: &TempDir, before: &str) -> PathBuf {
    let script = dir.path("srv.sh");
    std::fs::write(&script, format!("#!/bin/sh\n{before}\nexec {}\n", server().display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

/// A line for `wrapper`: a `sleep` in the generation's process group that
/// outlives nothing on its own, its pid in DIR/grandchild-GEN.
pub(crate) fn grandchild(dir: &TempDir) -> String {
    let file = dir.path("grandchild-");
    format!(
        "sleep 1000 </dev/null >/dev/null 2>&1 &\necho $! > {}$GRACEEXEC_GENERATION.tmp && mv {0}$GRACEEXEC_GENERATION.tmp {0}$GRACEEXEC_GENERATION",
        file.display()
    )
}

pub(crate) fn grandchild_pid(dir: &TempDir, gen: u32) -> i32 {
    let file = dir.path(&format!("grandchild-{gen}"));
    wait_until("the grandchild's pid", LONG, || file.exists());
    std::fs::read_to_string(&file).unwrap().trim().parse().unwrap()
}

pub(crate) fn run_wrapper(script: &Path, args: &[&str], env: &[(&str, &str)]) -> Ge {
    let mut full = args.to_vec();
    full.push("--");
    full.push(script.to_str().unwrap());
    Ge::spawn(command(&full), env)
}

#[test]
fn a_candidate_that_crashes_right_after_ready_is_replaced_and_no_request_fails() {
    let dir = TempDir::new();
    let crash = dir.path("crash");
    let env = [("EXAMPLE_CRASH_GEN", "2"), ("EXAMPLE_CRASH_FILE", crash.to_str().unwrap())];
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify", "--name", "crash2"], &env);
    ge.wait_ready(1);
    let load = Load::start(ge.tcp_addr(), 4);
    load.wait_more(20);
    ge.signal(Signal::SIGHUP);
    // Generation 2 said READY=1, so generation 1 was told to stop...
    ge.wait_ready(2);
    ge.wait_stopping(1);
    std::fs::write(&crash, b"").unwrap();
    // ...and its crash leaves no serving generation: the sockets stay open,
    // clients wait in the accept queue, and a restart takes over.
    let crashed = ge.gen_pid(2);
    assert_eq!(ge.wait_exited(2), "status 4");
    ge.wait_log(&format!("generation 2 (pid {crashed}) exited unexpectedly with status 4"));
    assert_eq!(restart_delays("crash2", 1), [100]);
    ge.wait_ready(3);
    load.wait_more(20);
    let result = load.finish();
    result.assert_clean();
    assert!(result.pids.contains(&ge.gen_pid(3)), "generation 3 served");
    assert!(!result.pids.contains(&crashed), "the crashed generation never served");
}

#[test]
fn a_stuck_drain_is_killed_with_its_whole_process_group_after_the_stop_timeout() {
    let dir = TempDir::new();
    let script = wrapper(&dir, &grandchild(&dir));
    let ge = run_wrapper(
        &script,
        &["-l", "127.0.0.1:0", "--ready", "notify", "--stop-timeout", "300ms"],
        &[("EXAMPLE_TERM_HANG", "1")],
    );
    ge.wait_ready(1);
    let (old, sleeper) = (ge.gen_pid(1), grandchild_pid(&dir, 1));
    let load = Load::start(ge.tcp_addr(), 4);
    load.wait_more(20);
    ge.signal(Signal::SIGHUP);
    ge.wait_ready(2);
    ge.wait_log(&format!("server: pid {old} drained, hanging as asked"));
    ge.wait_log("generation 1 killed after the stop timeout (300ms)");
    assert_eq!(ge.wait_exited(1), "signal SIGKILL");
    wait_until("the grandchild to be killed with its group", LONG, || !running(sleeper));
    assert!(!running(old));
    assert!(running(grandchild_pid(&dir, 2)), "generation 2's group is untouched");
    load.wait_more(20);
    load.finish().assert_clean();
}

/// Restarts that the documented backoff (100 ms, doubling) allows within
/// `elapsed` of the first crash: the k-th comes 100 ms * (2^k - 1) after it
/// at the earliest.
fn restarts_allowed(elapsed: Duration) -> u32 {
    let mut k = 0;
    while Duration::from_millis(100 * ((1 << (k + 1)) - 1)) <= elapsed {
        k += 1;
    }
    k
}

#[test]
fn a_crash_loop_backs_off_without_a_fork_storm() {
    let dir = TempDir::new();
    let (starts, crash) = (dir.path("starts"), dir.path("crash"));
    let before = format!(
        "echo $GRACEEXEC_GENERATION >> {}\n[ -e {} ] && exit 3",
        starts.display(),
        crash.display()
    );
    let script = wrapper(&dir, &before);
    let args = ["-l", "127.0.0.1:0", "--ready", "notify", "--name", "loop"];
    let ge = run_wrapper(&script, &args, &[]);
    ge.wait_ready(1);
    let load = Load::start(ge.tcp_addr(), 2);
    load.wait_more(10);
    std::fs::write(&crash, b"").unwrap();
    let t0 = Instant::now();
    // Its own SIGTERM, not graceexec's: generation 1 drains what it has
    // (a SIGKILL would fail its requests in flight) and exits unasked.
    kill(Pid::from_raw(ge.gen_pid(1)), Signal::SIGTERM).unwrap();
    assert_eq!(restart_delays("loop", 4), [100, 200, 400, 800]);
    // Counted first, timed second: the bound is then an upper bound.
    let count = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count() as u32;
    let restarts = count(&starts) - 1;
    let allowed = restarts_allowed(t0.elapsed());
    assert!(restarts >= 3, "{restarts} restarts, but the log shows 3 failed");
    assert!(restarts <= allowed, "{restarts} restarts where the backoff allows {allowed}");
    // The next release works: the restart after the 800 ms wait serves the
    // clients that waited in the accept queue meanwhile.
    std::fs::remove_file(&crash).unwrap();
    ge.wait_status("a restart to serve", |s| s["state"] == "serving");
    load.wait_more(10);
    load.finish().assert_clean();
}

/// One request on the control socket at `path`, its reply. Read to EOF:
/// graceexec closes the connection after a status or a waited-for reload
/// reply, so its end is closed too when this returns.
fn control(path: &Path, request: &str) -> Value {
    try_control(path, request).unwrap_or_else(|e| panic!("control request failed: {e}"))
}

fn try_control(path: &Path, request: &str) -> std::io::Result<Value> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(LONG))?;
    writeln!(s, "{request}")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(serde_json::from_str(reply.trim_end()).unwrap_or_else(|e| panic!("not JSON ({e}): {reply}")))
}

/// graceexec's open fds, each with what it is (`socket:[...]`, `pipe:[...]`).
fn open_fds(pid: i32) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!("{} -> {}", e.file_name().to_string_lossy(), target.display())
        })
        .collect();
    fds.sort();
    fds
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_thousand_reloads_leak_no_fd_and_no_memory() {
    let dir = TempDir::new();
    let ctl_path = dir.path("ctl.sock");
    let ctl_arg = ctl_path.to_str().unwrap();
    // -q: a thousand reloads log six thousand lines otherwise.
    let ge =
        Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify", "-q", "--control", ctl_arg], &[]);
    const STATUS: &str = r#"{"graceexec":1,"command":"status"}"#;
    let status = || control(&ctl_path, STATUS);
    // Settled: one generation, serving; the old ones reaped, their pipes
    // and notify sockets closed.
    let is_settled = |s: &Value| {
        s["state"] == "serving" && s["generations"].as_array().is_some_and(|g| g.len() == 1)
    };
    let settled = || is_settled(&status());
    // The socket file exists a moment before graceexec listens on it.
    wait_until("generation 1 to serve", LONG, || {
        try_control(&ctl_path, STATUS).is_ok_and(|s| is_settled(&s))
    });
    // Each generation alive in graceexec holds a 64 KiB output buffer, so
    // how many old ones are still draining at once moves RSS. On a busy
    // machine they pile up; at most two besides the serving one keeps that
    // high-water mark the same in the warm-up and after it.
    let few_draining = || status()["generations"].as_array().is_some_and(|g| g.len() <= 3);
    let reload = || {
        wait_until("old generations to exit", LONG, few_draining);
        let r = control(&ctl_path, r#"{"graceexec":1,"command":"reload","wait":true}"#);
        assert_eq!(r["ok"], true, "{r}");
    };
    for _ in 0..50 {
        reload();
    }
    // Settled means the old generations have been reaped, so they had
    // exited and their output pipes were at EOF; the poll iteration that
    // answers one more request has seen that and closed them.
    let quiet_fds = || {
        wait_until("the reloads to settle", LONG, settled);
        status();
        open_fds(ge.pid())
    };
    let (fds, rss) = (quiet_fds(), rss_kib(ge.pid()));
    for _ in 50..1000 {
        reload();
    }
    let after = quiet_fds();
    assert_eq!(
        after.len(),
        fds.len(),
        "open fds after 50 reloads: {fds:#?}\nafter 1000: {after:#?}"
    );
    assert_eq!(status()["generations"][0]["generation"], 1001);
    // RSS is no exact measure: the allocator keeps freed memory for reuse
    // rather than giving it back, and grows its heap in 128 KiB steps
    // (glibc's M_TOP_PAD), so a new high-water mark (two generations
    // draining where the warm-up saw one: 64 KiB more) can show as one
    // such step. Allow two steps, 256 KiB: a leak of 300 bytes a reload
    // (285 KiB over these 950) still fails, and any leak of a generation's
    // own state (its environment, its buffers: kilobytes) by far.
    let end_rss = rss_kib(ge.pid());
    eprintln!("fds: {}; RSS after 50 reloads {rss} KiB, after 1000 {end_rss} KiB", fds.len());
    let grown = end_rss.saturating_sub(rss);
    assert!(grown <= 256, "RSS grew by {grown} KiB over 950 reloads (from {rss} KiB)");
}
