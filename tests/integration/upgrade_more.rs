//! `graceexec upgrade` as an adversarial operator would use it: binaries
//! that are not graceexec, a `--watch` directory gone, a dry run that hangs
//! or is overtaken by a stop. Each test is named after what broke, or
//! after the property it pins.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::harness::*;
use crate::upgrade::{copy_of_graceexec, exe, serving_under_load, upgrade_to};

/// An executable shell script at `dir/name`.
fn script(dir: &TempDir, name: &str, body: &str) -> PathBuf {
    let path = dir.path(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
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
