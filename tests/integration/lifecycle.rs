//! Crashes, shutdown, exit statuses and forwarded signals.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::events::restart_delays;
use crate::harness::*;

#[test]
fn a_crashed_server_is_restarted_with_backoff_while_the_socket_stays_open() {
    let name = "crashed";
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify", "--name", name], &[]);
    ge.wait_ready(1);
    let first = ge.gen_pid(1);
    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    ge.wait_log(&format!("generation 1 (pid {first}) exited unexpectedly with signal SIGKILL"));
    assert_eq!(restart_delays(name, 1), [100]);
    ge.wait_ready(2);
    let second = ge.gen_pid(2);
    assert_eq!(pid_of(&get(ge.tcp_addr(), "/").unwrap()), second);
    // A second crash backs off further.
    kill(Pid::from_raw(second), Signal::SIGKILL).unwrap();
    assert_eq!(restart_delays(name, 2), [100, 200]);
    ge.wait_ready(3);
}

#[test]
fn restart_never_exits_with_the_childs_status() {
    let mut ge = Ge::start(&["-l", "127.0.0.1:0", "--restart", "never"], &[]);
    ge.wait_ready(1);
    kill(Pid::from_raw(ge.gen_pid(1)), Signal::SIGKILL).unwrap();
    assert_eq!(ge.wait_exit(), 128 + 9);
}

#[test]
fn sigterm_drains_and_exits_with_the_childs_status() {
    let mut ge = Ge::start(&["-l", "127.0.0.1:0"], &[("EXAMPLE_TERM_EXIT", "7")]);
    ge.wait_ready(1);
    let pid = ge.gen_pid(1);
    ge.signal(Signal::SIGTERM);
    assert_eq!(ge.wait_exit(), 7);
    assert!(ge.log().contains(&format!("server: pid {pid} drained, exiting")));
    assert!(!alive(pid));
}

#[test]
fn sigint_stops_every_generation_including_draining_ones() {
    let mut ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify"], &[]);
    ge.wait_ready(1);
    let addr = ge.tcp_addr();
    let slow = std::thread::spawn(move || get(addr, "/slow?ms=1000"));
    wait_until("the slow request to be in flight", LONG, || info(addr)["in_flight"] == "2");
    ge.signal(Signal::SIGHUP);
    ge.wait_stopping(1);
    let pids = [ge.gen_pid(1), ge.gen_pid(2)];
    ge.signal(Signal::SIGINT);
    assert_eq!(ge.wait_exit(), 0);
    assert!(slow.join().unwrap().is_ok(), "the draining request completed");
    assert!(!alive(pids[0]) && !alive(pids[1]));
}

#[test]
fn a_second_sigterm_kills_at_once() {
    let mut ge =
        Ge::start(&["-l", "127.0.0.1:0", "--stop-timeout", "1h"], &[("EXAMPLE_IGNORE_TERM", "1")]);
    ge.wait_ready(1);
    let pid = ge.gen_pid(1);
    ge.signal(Signal::SIGTERM);
    ge.wait_stopping(1);
    ge.signal(Signal::SIGTERM);
    assert_eq!(ge.wait_exit(), 128 + 9);
    assert!(ge.log().contains("second stop request: killing every generation now"));
    assert!(!alive(pid));
}

#[test]
fn a_first_generation_that_exits_fails_the_start() {
    let mut ge = Ge::start(&["-l", "127.0.0.1:0"], &[("EXAMPLE_FAIL_GEN", "1")]);
    assert_eq!(ge.wait_exit(), 1);
    assert!(ge.log().contains("generation 1 (pid"), "{}", ge.log());
    assert!(
        ge.log().contains("exited with status 3 before it was ready; giving up"),
        "{}",
        ge.log()
    );
}

#[test]
fn a_first_generation_never_ready_fails_the_start() {
    let mut ge = Ge::start(
        &["-l", "127.0.0.1:0", "--ready", "notify", "--ready-timeout", "300ms"],
        &[("EXAMPLE_NEVER_READY_GEN", "1")],
    );
    let pid = ge.gen_pid(1);
    assert_eq!(ge.wait_exit(), 1);
    assert!(
        ge.log().contains("generation 1 was not ready within 300ms; giving up"),
        "{}",
        ge.log()
    );
    assert!(!alive(pid));
}

#[test]
fn other_signals_are_forwarded_to_the_serving_generation() {
    let ge = Ge::start(&["-l", "127.0.0.1:0"], &[]);
    ge.wait_ready(1);
    let addr = ge.tcp_addr();
    ge.signal(Signal::SIGUSR1);
    wait_until("the server to count SIGUSR1", LONG, || info(addr)["usr1"] == "1");
}

#[test]
fn orphans_of_the_server_are_reaped() {
    // A server that leaves a grandchild behind: the grandchild is
    // re-parented to graceexec (a subreaper) and reaped, not left a zombie.
    let dir = TempDir::new();
    let script = dir.path("srv.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nsh -c 'sleep 0.2 &'\nexec {}\n", server().display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let ge = Ge::spawn(command(&["-l", "127.0.0.1:0", "-v", "--", script.to_str().unwrap()]), &[]);
    ge.wait_ready(1);
    ge.wait_log("reaped pid");
}

/// Only PR_SET_PDEATHSIG can stop the server within the deadline: the
/// watchdog SIGKILLs a group whose leader still runs only at
/// --stop-timeout, here far beyond it.
#[test]
fn if_graceexec_is_killed_its_server_gets_the_stop_signal() {
    let mut ge = Ge::start(&["-l", "127.0.0.1:0", "-v", "--stop-timeout", "1h"], &[]);
    ge.wait_ready(1);
    let pid = ge.gen_pid(1);
    let log = ge.log();
    let notify_dir =
        log.split("notify sockets in ").nth(1).unwrap().lines().next().unwrap().to_string();
    ge.signal(Signal::SIGKILL);
    wait_until("graceexec to die", LONG, || ge.try_status().is_some());
    // The server's stderr was graceexec's pipe, so its last words are lost;
    // that it stops at all is what PR_SET_PDEATHSIG is for.
    wait_until("the orphaned server to stop (PR_SET_PDEATHSIG)", LONG, || !running(pid));
    // A SIGKILLed graceexec cannot remove its notify directory.
    std::fs::remove_dir_all(notify_dir).unwrap();
}

#[test]
fn stop_signal_sets_what_old_generations_get() {
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--stop-signal", "INT"], &[]);
    ge.wait_ready(1);
    ge.signal(Signal::SIGHUP);
    ge.wait_log("generation 1 stopping with SIGINT");
    // The example server does not handle SIGINT, so it dies of it.
    assert_eq!(ge.wait_exited(1), "signal SIGINT");
}

#[test]
fn quiet_keeps_only_warnings_and_errors() {
    let mut ge = Ge::start(&["-l", "127.0.0.1:0", "-q"], &[("EXAMPLE_FAIL_GEN", "1")]);
    assert_eq!(ge.wait_exit(), 1);
    let log = ge.log();
    assert!(!log.contains("bound ") && !log.contains("started as pid"), "{log}");
    assert!(log.contains("exited with status 3 before it was ready; giving up"), "{log}");
}
