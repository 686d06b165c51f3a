//! Reloads: zero dropped connections, failures that keep the old server,
//! merged requests.

use nix::sys::signal::Signal;

use crate::harness::*;

#[test]
fn twenty_reloads_under_sixteen_clients_drop_nothing() {
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify"], &[]);
    ge.wait_ready(1);
    let load = Load::start(ge.tcp_addr(), 16);
    load.wait_more(100);
    for gen in 2..=21 {
        ge.signal(if gen % 2 == 0 { Signal::SIGHUP } else { Signal::SIGUSR2 });
        ge.wait_ready(gen);
        load.wait_more(50);
    }
    let result = load.finish();
    assert!(
        result.failed.is_empty(),
        "{} of {} requests failed: {:?}",
        result.failed.len(),
        result.ok,
        &result.failed[..result.failed.len().min(5)]
    );
    assert!(result.pids.len() >= 20, "only {} server pids answered", result.pids.len());
    // Every old generation drained and exited of its own accord.
    wait_until("20 generations to exit with status 0", LONG, || {
        ge.log().matches("exited with status 0").count() >= 20
    });
}

#[test]
fn a_candidate_that_exits_leaves_the_old_server_serving() {
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify"], &[("EXAMPLE_FAIL_GEN", "2")]);
    ge.wait_ready(1);
    let old = ge.gen_pid(1);
    let load = Load::start(ge.tcp_addr(), 4);
    ge.signal(Signal::SIGHUP);
    ge.wait_log("reload failed: generation 2 (pid");
    ge.wait_log("exited with status 3 before it was ready; generation 1 keeps serving");
    load.wait_more(20);
    assert_eq!(pid_of(&get(ge.tcp_addr(), "/").unwrap()), old);
    // The next release works again.
    ge.signal(Signal::SIGHUP);
    ge.wait_ready(3);
    load.finish().assert_clean();
}

#[test]
fn a_candidate_never_ready_is_stopped_and_the_old_server_keeps_serving() {
    let ge = Ge::start(
        &["-l", "127.0.0.1:0", "--ready", "notify", "--ready-timeout", "1s"],
        &[("EXAMPLE_NEVER_READY_GEN", "2")],
    );
    ge.wait_ready(1);
    let old = ge.gen_pid(1);
    let load = Load::start(ge.tcp_addr(), 4);
    ge.signal(Signal::SIGHUP);
    let candidate = ge.gen_pid(2);
    ge.wait_log("reload failed: generation 2 was not ready within 1s; generation 1 keeps serving");
    assert_eq!(ge.wait_exited(2), "status 0");
    assert!(!alive(candidate));
    load.wait_more(20);
    load.finish().assert_clean();
    assert_eq!(pid_of(&get(ge.tcp_addr(), "/").unwrap()), old);
}

#[test]
fn a_missing_command_on_reload_fails_the_reload_only() {
    let dir = TempDir::new();
    let link = dir.path("srv");
    std::os::unix::fs::symlink(server(), &link).unwrap();
    let ge = Ge::spawn(command(&["-l", "127.0.0.1:0", "--", link.to_str().unwrap()]), &[]);
    ge.wait_ready(1);
    std::fs::remove_file(&link).unwrap();
    ge.signal(Signal::SIGHUP);
    ge.wait_log("reload failed: generation 2 command not found");
    assert!(get(ge.tcp_addr(), "/").is_ok());
    // The command is resolved anew at every start: put it back and reload.
    std::os::unix::fs::symlink(server(), &link).unwrap();
    ge.signal(Signal::SIGHUP);
    ge.wait_ready(3);
}

#[test]
fn a_server_that_ignores_sigterm_is_killed_after_the_stop_timeout() {
    let ge = Ge::start(
        &["-l", "127.0.0.1:0", "--stop-timeout", "300ms"],
        &[("EXAMPLE_IGNORE_TERM", "1")],
    );
    ge.wait_ready(1);
    let old = ge.gen_pid(1);
    ge.signal(Signal::SIGHUP);
    ge.wait_ready(2);
    ge.wait_log("generation 1 killed after the stop timeout (300ms)");
    assert_eq!(ge.wait_exited(1), "signal SIGKILL");
    assert!(!alive(old));
    assert!(get(ge.tcp_addr(), "/").is_ok());
}

#[test]
fn a_hundred_sighups_start_at_most_two_generations() {
    let dir = TempDir::new();
    let hold = dir.path("release-gen-2");
    let ge = Ge::start(
        &["-l", "127.0.0.1:0", "--ready", "notify"],
        &[("EXAMPLE_HOLD_GEN", "2"), ("EXAMPLE_HOLD_FILE", hold.to_str().unwrap())],
    );
    ge.wait_ready(1);
    let load = Load::start(ge.tcp_addr(), 4);
    load.wait_more(20);
    // Generation 2 is held until the storm is over, so every signal of it
    // comes while the first reload is under way.
    for _ in 0..100 {
        ge.signal(Signal::SIGHUP);
    }
    ge.gen_pid(2);
    std::fs::write(&hold, b"").unwrap();
    ge.wait_ready(2);
    // Once every reload the storm asked for is done and the old
    // generations have exited, count what it started: 2 and one follow-up
    // (3), or only 2 if the kernel merged every pending SIGHUP into one.
    // (Asking for a reload before this could not tell a third generation
    // from the storm from the one it asked for.)
    wait_until("the storm's reloads to settle", LONG, || {
        let (_, out, _) = ctl(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["state"] == "serving" && v["generations"].as_array().is_some_and(|g| g.len() == 1)
    });
    let last = ge.started();
    assert!(last <= 3, "the storm started generations 2 to {last}:\n{}", ge.log());
    // A reload asked after the storm is the next generation.
    let (code, out, err) = ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!(": generation {} (pid", last + 1)), "{out}");
    load.wait_more(20);
    load.finish().assert_clean();
}

#[test]
fn in_flight_requests_finish_on_the_old_generation() {
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify"], &[]);
    ge.wait_ready(1);
    let addr = ge.tcp_addr();
    let old = ge.gen_pid(1);
    let slow = std::thread::spawn(move || get(addr, "/slow?ms=1500"));
    // /info counts itself: 2 means the slow request is held by generation 1.
    wait_until("the slow request to be in flight", LONG, || info(addr)["in_flight"] == "2");
    ge.signal(Signal::SIGHUP);
    ge.wait_stopping(1);
    let body = slow.join().unwrap().expect("the in-flight request completes");
    assert_eq!(pid_of(&body), old);
}
