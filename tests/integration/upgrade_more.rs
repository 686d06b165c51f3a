//! `graceexec upgrade` as an adversarial operator would use it: binaries
//! that are not graceexec, a `--watch` directory gone, a dry run that hangs
//! or is overtaken by a stop. Each test is named after what broke, or
//! after the property it pins.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::harness::*;
use crate::upgrade::{copy_of_graceexec, exe, serving_under_load, upgrade_to};

/// An executable shell script at `dir/name`.
pub(crate) fn script(dir: &TempDir, name: &str, body: &str) -> PathBuf {
    let path = dir.path(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// SIGKILL for a process a test started indirectly, should the test fail
/// before it is gone.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn a_program_that_only_answers_ok_is_refused_and_the_instance_lives() {
    // It says what a graceexec dry run says without reading the document;
    // executed for real, it would exit and take every generation with it.
    let dir = TempDir::new();
    let fake = script(&dir, "fake", "echo 'ok 9.9.9'\n");
    let (ge, load) = serving_under_load(&[], &[]);
    let (before, server) = (exe(ge.pid()), ge.gen_pid(1));
    let (code, _, err) = upgrade_to(&fake);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("upgrade refused") && err.contains("did not read"), "{err}");
    assert_eq!(exe(ge.pid()), before, "graceexec still runs its own binary");
    assert_eq!(ge.gen_pid(1), server);
    load.wait_more(20);
    load.finish().assert_clean();
}

#[test]
fn an_upgrade_after_a_watched_directory_went_away_keeps_the_instance() {
    // The new image used to set the watches up again from the command
    // line: a directory moved away since the start failed that, past the
    // point of return, and the instance died with its generations.
    let dir = TempDir::new();
    let conf = dir.path("conf");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("app.conf"), "a = 1\n").unwrap();
    let new = copy_of_graceexec(&dir, "graceexec-new");
    let watched = conf.join("app.conf");
    let (ge, load) = serving_under_load(&["--watch", watched.to_str().unwrap()], &[]);
    let server = ge.gen_pid(1);
    std::fs::rename(&conf, dir.path("conf.old")).unwrap();
    let (code, out, err) = upgrade_to(&new);
    assert_eq!(code, 0, "{err}\n{}", ge.log());
    assert!(out.contains("1 generation kept"), "{out}");
    assert_eq!(exe(ge.pid()), new);
    assert_eq!(ge.gen_pid(1), server);
    load.wait_more(30);
    let (code, _, err) = ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    load.finish().assert_clean();
}

#[test]
fn a_watched_change_just_before_an_upgrade_still_reloads() {
    // The file changes while the dry run runs, so the upgrade comes within
    // the debounce of the change: the reload it armed must still happen.
    let dir = TempDir::new();
    let conf = dir.path("app.conf");
    std::fs::write(&conf, "a = 1\n").unwrap();
    let new = copy_of_graceexec(&dir, "graceexec-new");
    let body = format!(
        "[ \"$1\" = __upgrade-check ] && echo 'a = 2' > {}\nexec {} \"$@\"\n",
        conf.display(),
        new.display()
    );
    let wrapper = script(&dir, "graceexec-wrapper", &body);
    let (ge, load) = serving_under_load(&["--watch", conf.to_str().unwrap()], &[]);
    let (code, _, err) = upgrade_to(&wrapper);
    // The reload may also have started before the exec, and the upgrade
    // then been refused for it; either way it happens.
    assert!(code == 0 || err.contains("graceexec is reloading"), "{err}");
    ge.wait_ready(2);
    load.wait_more(20);
    load.finish().assert_clean();
}

#[test]
fn a_dry_run_that_times_out_leaves_none_of_its_processes() {
    // A wrapper script that forks instead of exec'ing: killing only its
    // pid at the timeout left the child running for good.
    let dir = TempDir::new();
    let child_pid = dir.path("child.pid");
    let body = format!("sleep 120 &\necho $! > {}\nwait\n", child_pid.display());
    let hanging = script(&dir, "hanging", &body);
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify"], &[]);
    ge.wait_ready(1);
    let (code, _, err) = upgrade_to(&hanging);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("did not answer its dry run within"), "{err}");
    let pid: i32 = std::fs::read_to_string(&child_pid).unwrap().trim().parse().unwrap();
    let _guard = KillOnDrop(pid);
    wait_until("the dry run's child to be gone", LONG, || !running(pid));
    ge.wait_status("still serving", |s| s["state"] == "serving");
}

#[test]
fn sigkill_during_the_dry_run_leaves_none_of_its_processes() {
    // The dry run dies with graceexec (its parent-death signal), but what
    // it forked is only found by the watchdog, which must know its group.
    let dir = TempDir::new();
    let child_pid = dir.path("child.pid");
    let body =
        format!("sleep 120 &\necho $! > {}.new\nmv {0}.new {0}\nwait\n", child_pid.display());
    let hanging = script(&dir, "hanging", &body);
    let mut ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify", "-v"], &[]);
    ge.wait_ready(1);
    let (watchdog, server) = (ge.watchdog_pid(), ge.gen_pid(1));
    let runtime = runtime_dir();
    let binary = hanging.to_str().unwrap().to_string();
    let client =
        std::thread::spawn(move || ctl_in(&runtime, &["upgrade", "--binary", binary.as_str()]));
    wait_until("the dry run's child to start", LONG, || child_pid.exists());
    let pid: i32 = std::fs::read_to_string(&child_pid).unwrap().trim().parse().unwrap();
    let _guard = KillOnDrop(pid);
    ge.signal(nix::sys::signal::Signal::SIGKILL);
    wait_until("graceexec to be gone", LONG, || ge.try_status().is_some());
    let (code, _, _) = client.join().unwrap();
    assert_ne!(code, 0);
    wait_until("the dry run's child, the server and the watchdog to be gone", LONG, || {
        !running(pid) && !running(server) && !running(watchdog)
    });
}

#[test]
fn a_stop_during_the_dry_run_answers_the_upgrade_client() {
    let dir = TempDir::new();
    let started = dir.path("started");
    let hanging =
        script(&dir, "hanging", &format!("touch {}\nexec sleep 120\n", started.display()));
    let mut ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify"], &[]);
    ge.wait_ready(1);
    let runtime = runtime_dir();
    let binary = hanging.to_str().unwrap().to_string();
    let client =
        std::thread::spawn(move || ctl_in(&runtime, &["upgrade", "--binary", binary.as_str()]));
    wait_until("the dry run to start", LONG, || Path::new(&started).exists());
    let (code, _, err) = ctl(&["stop"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ge.wait_exit(), 0);
    let (code, _, err) = client.join().unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("upgrade refused") && err.contains("stopping"), "{err}");
}

/// The "if execve itself fails, the running image carries on": a
/// binary that passes its dry run (it reads the document and says its
/// token back) and is gone when graceexec executes it.
#[test]
fn a_binary_gone_between_its_dry_run_and_the_exec_leaves_the_instance_as_it_was() {
    let dir = TempDir::new();
    let read_token = "python3 -c 'import json, sys; print(json.load(sys.stdin)[\"token\"])' <&3";
    let body = format!("token=$({read_token}) || exit 1\nrm -f \"$0\"\necho \"ok 9.9.9 $token\"\n");
    let vanishing = script(&dir, "vanishing", &body);
    let (ge, load) = serving_under_load(&[], &[]);
    let (before, server) = (exe(ge.pid()), ge.gen_pid(1));
    let (code, _, err) = upgrade_to(&vanishing);
    assert_eq!(code, 1, "{err}");
    assert!(!vanishing.exists(), "the dry run did not run to its end: {err}");
    let want = format!("upgrade refused: cannot execute {}", vanishing.display());
    assert!(err.contains(&want) && err.contains("No such file or directory"), "{err}");
    assert_eq!(exe(ge.pid()), before, "graceexec runs its own binary");
    assert_eq!(ge.gen_pid(1), server, "the server was not restarted");
    // Everything works as before: a reload, and an upgrade that goes through.
    let (code, _, err) = ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    let new = copy_of_graceexec(&dir, "graceexec-new");
    let (code, _, err) = upgrade_to(&new);
    assert_eq!(code, 0, "{err}");
    assert_eq!(exe(ge.pid()), new);
    load.wait_more(20);
    load.finish().assert_clean();
}
