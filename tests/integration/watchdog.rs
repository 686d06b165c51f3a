//! The watchdog: a SIGKILLed graceexec leaves no process behind, and the
//! watchdog itself is a fresh, isolated image that only SIGKILL or its pipe
//! ends.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::faults::{grandchild, grandchild_pid, run_wrapper, wrapper};
use crate::harness::*;

/// Every process below `pid` (children, grandchildren, ...).
fn descendants(pid: i32) -> Vec<i32> {
    let parent_of = |p: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()
    };
    let all: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(all.iter().filter(|c| parent_of(**c) == Some(p)));
        i += 1;
    }
    found.remove(0);
    found
}

/// SIGKILL graceexec while generation 1 and a grandchild in its group run;
/// every process below graceexec must end. With `stuck`, the server hangs
/// in its drain (EXAMPLE_TERM_HANG) with its stderr in a file, so that no
/// EPIPE on graceexec's closed pipe ends it: only the watchdog's kill at
/// `--stop-timeout` (300 ms) does.
fn sigkill_leaves_nothing(stuck: bool) {
    let dir = TempDir::new();
    let server_err = dir.path("server.err");
    let mut before = grandchild(&dir);
    if stuck {
        before.push_str(&format!("\nexec 2>{}", server_err.display()));
    }
    let script = wrapper(&dir, &before);
    let mut args = vec!["-l", "127.0.0.1:0", "--ready", "notify", "-v"];
    let mut env = vec![];
    if stuck {
        args.extend(["--stop-timeout", "300ms"]);
        env.push(("EXAMPLE_TERM_HANG", "1"));
    }
    let mut ge = run_wrapper(&script, &args, &env);
    ge.wait_ready(1);
    let (server, sleeper) = (ge.gen_pid(1), grandchild_pid(&dir, 1));
    let below = descendants(ge.pid());
    assert!(below.contains(&server) && below.contains(&sleeper), "{below:?}");
    let log = ge.log();
    let notify_dir =
        log.split("notify sockets in ").nth(1).unwrap().lines().next().unwrap().to_string();
    let killed = Instant::now();
    ge.signal(Signal::SIGKILL);
    wait_until("graceexec to die", LONG, || ge.try_status().is_some());
    if stuck {
        // PR_SET_PDEATHSIG's SIGTERM started a drain that never ends.
        wait_until("the server to hang in its drain", LONG, || {
            std::fs::read_to_string(&server_err).is_ok_and(|e| e.contains("hanging as asked"))
        });
    }
    // PR_SET_PDEATHSIG stops the server; the grandchild, which does not
    // inherit it, was left running before the watchdog.
    for pid in below {
        wait_until(&format!("pid {pid} to exit"), LONG, || !running(pid));
    }
    // The watchdog holds graceexec's stderr: its line reaches the log.
    ge.wait_log(&format!(
        "graceexec is gone: killed what was left of the process group of pid {server}"
    ));
    if stuck {
        // Not before the stop timeout, counted from graceexec's death.
        let took = killed.elapsed();
        assert!(took >= Duration::from_millis(300), "the stuck server was killed after {took:?}");
    }
    // A SIGKILLed graceexec cannot remove its notify directory.
    std::fs::remove_dir_all(notify_dir).unwrap();
}

#[test]
fn sigkill_to_graceexec_leaves_no_process_behind() {
    // Regression: a grandchild in the server's process group outlived a
    // SIGKILLed graceexec, re-parented to init, holding the sockets.
    sigkill_leaves_nothing(false);
}

#[test]
fn sigkill_to_graceexec_still_kills_a_stuck_server_at_the_stop_timeout() {
    sigkill_leaves_nothing(true);
}

/// A process's signal set from /proc/PID/status (`SigBlk`, `ShdPnd`, ...).
fn signal_set(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

fn bit(sig: Signal) -> u64 {
    1 << (sig as i32 - 1)
}

#[test]
fn the_watchdog_is_graceexec_execd_anew_in_its_own_group_and_outlasts_stop_signals() {
    // Stale systemd variables in graceexec's environment: with --listen
    // they are ignored, and no child may get them.
    let env = [("LISTEN_FDNAMES", "stale"), ("LISTEN_PID", "1")];
    let mut ge =
        Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify", "-v", "--stop-timeout", "2s"], &env);
    ge.wait_ready(1);
    let wd = ge.watchdog_pid();
    // A fresh image of the same binary, not a fork running graceexec's code.
    let cmdline = std::fs::read(format!("/proc/{wd}/cmdline")).unwrap();
    assert_eq!(cmdline, b"graceexec\0__watchdog\0--stop-timeout-ms\x002000\0");
    let exe = |pid: i32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe(wd), exe(ge.pid()));
    let pgid = |pid: i32| nix::unistd::getpgid(Some(Pid::from_raw(pid))).unwrap().as_raw();
    assert_eq!(pgid(wd), wd, "the watchdog leads its own process group");
    assert_ne!(pgid(ge.pid()), wd);
    // fds 0-2 as graceexec's, the pipe at 3, nothing else.
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{wd}/fd"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2", "3"]);
    let fd3 = std::fs::read_link(format!("/proc/{wd}/fd/3")).unwrap();
    assert!(fd3.to_string_lossy().starts_with("pipe:"), "{fd3:?}");
    let environ = std::fs::read(format!("/proc/{wd}/environ")).unwrap();
    for var in environ.split(|b| *b == 0) {
        let var = String::from_utf8_lossy(var);
        assert!(!var.starts_with("LISTEN_") && !var.starts_with("NOTIFY_SOCKET="), "{var}");
    }
    // Only SIGKILL or the pipe ends it: a stop signal meant for graceexec
    // stays pending.
    let stops = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];
    let mask: u64 = stops.iter().map(|s| bit(*s)).sum();
    wait_until("the watchdog to block the stop signals", LONG, || {
        signal_set(wd, "SigBlk") & mask == mask
    });
    for sig in stops {
        kill(Pid::from_raw(wd), sig).unwrap();
    }
    assert_eq!(signal_set(wd, "ShdPnd") & mask, mask);
    assert!(running(wd));
    // A normal exit tells it goodbye and reaps it: once graceexec has
    // exited, nothing holds its stderr any more (wait_exit waits for EOF).
    ge.signal(Signal::SIGTERM);
    assert_eq!(ge.wait_exit(), 0);
    assert!(!alive(wd), "the watchdog outlived graceexec's normal exit");
    assert!(!ge.log().contains("graceexec is gone"), "{}", ge.log());
}

#[test]
fn a_killed_watchdog_is_reaped_with_a_warning_and_graceexec_carries_on() {
    let mut ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify", "-v"], &[]);
    ge.wait_ready(1);
    let wd = ge.watchdog_pid();
    kill(Pid::from_raw(wd), Signal::SIGKILL).unwrap();
    ge.wait_log(&format!("the watchdog (pid {wd}) exited with signal SIGKILL"));
    // Not taken for a generation: the server keeps serving, a reload works.
    let addr = ge.tcp_addr();
    get(addr, "/").unwrap();
    ge.signal(Signal::SIGHUP);
    ge.wait_ready(2);
    get(addr, "/").unwrap();
    // And the exit does not wait for a watchdog that is gone.
    ge.signal(Signal::SIGTERM);
    assert_eq!(ge.wait_exit(), 0);
}

/// What each fd of `pid` is (`pipe:[...]`, `socket:[...]`, a path).
fn fd_targets(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.display().to_string())
        .collect()
}

#[test]
fn the_watchdogs_pipe_reaches_no_other_process() {
    // Its write end must be graceexec's alone: a copy in a server, a check
    // or a probe (or whatever they leave running) would keep the pipe
    // open after graceexec's death, and the watchdog would never see EOF.
    // Generations get only the fds they are given; a check and an exec
    // probe are posix_spawned with everything not close-on-exec.
    let dir = TempDir::new();
    let (probe_fds, check_fds) = (dir.path("probe-fds"), dir.path("check-fds"));
    let record = |file: &std::path::Path| format!("ls -l /proc/$$/fd/ > {}; true", file.display());
    let probe = format!("exec:{}", record(&probe_fds));
    let check = record(&check_fds);
    let args = ["-l", "127.0.0.1:0", "--ready", &probe, "--check", &check, "-v"];
    let ge = Ge::start(&args, &[]);
    ge.wait_ready(1);
    let pipe = std::fs::read_link(format!("/proc/{}/fd/3", ge.watchdog_pid())).unwrap();
    let pipe = pipe.display().to_string();
    assert!(fd_targets(ge.pid()).contains(&pipe), "graceexec holds {pipe}");
    assert!(!fd_targets(ge.gen_pid(1)).contains(&pipe), "generation 1 holds {pipe}");
    // The check runs on a reload.
    ge.signal(Signal::SIGHUP);
    ge.wait_ready(2);
    assert!(!fd_targets(ge.gen_pid(2)).contains(&pipe), "generation 2 holds {pipe}");
    for file in [&probe_fds, &check_fds] {
        let fds = std::fs::read_to_string(file).unwrap();
        assert!(fds.contains(" 0 -> ") && !fds.contains(&pipe), "{}:\n{fds}", file.display());
    }
}
