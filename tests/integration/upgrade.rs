//! `graceexec upgrade`: graceexec replaces its own image in place, as the
//! same pid, with every socket, generation and connection kept. Each test
//! runs under load and asserts that no request failed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use crate::events::{follow, in_order, kinds, read_until};
use crate::harness::*;

/// A copy of graceexec at a path of its own, as a deploy would install a
/// new release: `/proc/PID/exe` then tells the images apart.
pub(crate) fn copy_of_graceexec(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.path(name);
    std::fs::copy(bin(), &path).unwrap();
    path
}

pub(crate) fn exe(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

pub(crate) fn upgrade_to(binary: &Path) -> (i32, String, String) {
    ctl(&["upgrade", "--binary", binary.to_str().unwrap()])
}

/// An instance serving under load from 8 clients.
pub(crate) fn serving_under_load(args: &[&str], env: &[(&str, &str)]) -> (Ge, Load) {
    let mut full = vec!["-l", "127.0.0.1:0", "--ready", "notify"];
    full.extend_from_slice(args);
    let ge = Ge::start(&full, env);
    ge.wait_ready(1);
    let load = Load::start_on(ge.tcp_addr(), 8, "/slow?ms=5");
    load.wait_more(20);
    (ge, load)
}

#[test]
fn upgrade_under_load_keeps_every_pid_and_loses_nothing() {
    let dir = TempDir::new();
    let new = copy_of_graceexec(&dir, "graceexec-new");
    let (mut ge, load) = serving_under_load(&[], &[]);
    let mut events = follow("server");
    let server = ge.gen_pid(1);
    let (code, out, err) = upgrade_to(&new);
    assert_eq!(code, 0, "{err}");
    let version = env!("CARGO_PKG_VERSION");
    let want = format!(
        "upgraded server: graceexec {version} → {version}, pid {}, 1 generation kept",
        ge.pid()
    );
    assert_eq!(out.trim(), want);
    assert_eq!(exe(ge.pid()), new, "graceexec runs the new binary");
    assert_eq!(ge.gen_pid(1), server, "the server was not restarted");
    load.wait_more(50);
    // Everything works as before: a reload, status, and a follower that
    // was connected before the upgrade.
    let (code, _, err) = ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    ge.wait_exited(1);
    load.wait_more(50);
    load.finish().assert_clean();
    let s = ge.status().unwrap();
    assert_eq!(s["pid"], ge.pid(), "{s}");
    assert_eq!(s["reloads_ok"], 1, "{s}");
    let seen = read_until(&mut events, |e| e["event"] == "exited" && e["generation"] == 1);
    let k = kinds(&seen);
    let want = [("started", Some(1)), ("upgraded", None), ("reload_ready", Some(2))];
    assert!(in_order(&k, &want), "{k:?}");
    let (code, _, err) = ctl(&["stop"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ge.wait_exit(), 0);
    let _ = events.wait();
}

#[test]
fn two_upgrades_in_a_row_keep_a_draining_generation() {
    let dir = TempDir::new();
    let (a, b) = (copy_of_graceexec(&dir, "graceexec-a"), copy_of_graceexec(&dir, "graceexec-b"));
    // Generation 1 holds a connection open after the reload, so it is
    // still draining when graceexec is upgraded under it.
    let (ge, load) = serving_under_load(&["--stop-timeout", "1m"], &[]);
    let addr = ge.tcp_addr();
    let slow = std::thread::spawn(move || get(addr, "/slow?ms=3000"));
    ge.wait_status("a connection held by generation 1", |s| {
        s["generations"][0]["connections"].as_u64() >= Some(1)
    });
    let (code, _, err) = ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    let (old, new) = (ge.gen_pid(1), ge.gen_pid(2));
    for binary in [&a, &b] {
        let (code, out, err) = upgrade_to(binary);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("2 generations kept"), "{out}");
        assert_eq!(exe(ge.pid()), *binary);
        load.wait_more(30);
    }
    assert_eq!((ge.gen_pid(1), ge.gen_pid(2)), (old, new));
    // The held request is answered by generation 1, which then drains and
    // exits, as it would have without the upgrades.
    let body = slow.join().unwrap().expect("the slow request was answered");
    assert_eq!(pid_of(&body), old);
    ge.wait_exited(1);
    load.finish().assert_clean();
}

#[test]
fn an_upgrade_during_a_reload_is_refused_until_it_ends() {
    let dir = TempDir::new();
    let new = copy_of_graceexec(&dir, "graceexec-new");
    let hold = dir.path("hold");
    let env = [("EXAMPLE_HOLD_FILE", hold.to_str().unwrap()), ("EXAMPLE_HOLD_GEN", "2")];
    let (ge, load) = serving_under_load(&[], &env);
    let (code, _, err) = ctl(&["reload", "--no-wait"]);
    assert_eq!(code, 0, "{err}");
    ge.wait_status("generation 2 starting", |s| s["state"] == "reloading");
    let (code, _, err) = upgrade_to(&new);
    assert_eq!(code, 1);
    assert!(err.contains("upgrade refused: graceexec is reloading"), "{err}");
    assert_ne!(exe(ge.pid()), new);
    std::fs::write(&hold, "").unwrap();
    ge.wait_ready(2);
    ge.wait_status("serving", |s| s["state"] == "serving");
    let (code, _, err) = upgrade_to(&new);
    assert_eq!(code, 0, "{err}");
    assert_eq!(exe(ge.pid()), new);
    load.finish().assert_clean();
}

#[test]
fn a_broken_binary_is_refused_with_nothing_disturbed() {
    let dir = TempDir::new();
    let garbage = dir.path("garbage");
    std::fs::write(&garbage, "not a program\n").unwrap();
    let crashing = dir.path("crashing");
    std::fs::write(&crashing, "#!/bin/sh\necho about to crash\nkill -SEGV $$\n").unwrap();
    for f in [&garbage, &crashing] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (ge, load) = serving_under_load(&[], &[]);
    let (before, server) = (exe(ge.pid()), ge.gen_pid(1));
    let cases: [(&Path, &str); 4] = [
        (Path::new("/nonexistent/graceexec"), "No such file or directory"),
        (&garbage, "Exec format error"),
        (Path::new("/bin/false"), "its dry run exited with status 1"),
        (&crashing, "signal SIGSEGV"),
    ];
    for (binary, why) in cases {
        let (code, _, err) = upgrade_to(binary);
        assert_eq!(code, 1, "{}: {err}", binary.display());
        assert!(
            err.contains("upgrade refused") && err.contains(why),
            "{}: {err}",
            binary.display()
        );
        assert_eq!(exe(ge.pid()), before);
        assert_eq!(ge.gen_pid(1), server);
        load.wait_more(20);
    }
    load.finish().assert_clean();
}

#[test]
fn a_new_image_that_cannot_take_over_goes_back_to_the_old_one() {
    let dir = TempDir::new();
    let new = copy_of_graceexec(&dir, "graceexec-new");
    let env = [("GRACEEXEC_TEST_REFUSE_RESUME", new.to_str().unwrap())];
    let (ge, load) = serving_under_load(&[], &env);
    let (before, server) = (exe(ge.pid()), ge.gen_pid(1));
    let (code, _, err) = upgrade_to(&new);
    assert_eq!(code, 1);
    assert!(err.contains("could not take over") && err.contains("carries on"), "{err}");
    assert_eq!(exe(ge.pid()), before, "the old binary runs again");
    assert_eq!(ge.gen_pid(1), server);
    let (code, _, err) = ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    load.wait_more(30);
    load.finish().assert_clean();
}

#[test]
fn sigkill_after_an_upgrade_leaves_no_process_behind() {
    let dir = TempDir::new();
    let new = copy_of_graceexec(&dir, "graceexec-new");
    let mut ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify", "-v"], &[]);
    ge.wait_ready(1);
    let watchdog = ge.watchdog_pid();
    let (code, _, err) = upgrade_to(&new);
    assert_eq!(code, 0, "{err}");
    let (server, group) = (ge.gen_pid(1), ge.leader_pid(1));
    ge.signal(Signal::SIGKILL);
    let _ = ge.try_status();
    wait_until("graceexec to be gone", LONG, || ge.try_status().is_some());
    wait_until("the server and the watchdog to be gone", LONG, || {
        !running(server) && !running(watchdog) && !group_alive(group)
    });
}

/// Whether any process is left in process group `pgid`.
pub(crate) fn group_alive(pgid: i32) -> bool {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok()
}
