//! `graceexec upgrade` as an adversarial operator would use it: binaries
//! that are not graceexec, a `--watch` directory gone, a dry run that hangs
//! or is overtaken by a stop. Each test is named after what broke, or
//! after the property it pins.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::harness::*;
use crate::upgrade::{exe, serving_under_load, upgrade_to};

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
