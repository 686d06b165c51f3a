//! `exec:` readiness probes and `--check` run with the generation's
//! environment, not graceexec's own: graceexec's NOTIFY_SOCKET and
//! LISTEN_* (from its own service manager) must not reach them, and under
//! `--user` they get the user's HOME, USER and LOGNAME.

use std::collections::HashMap;
use std::path::Path;

use crate::harness::*;

/// What graceexec itself is started with, as systemd or a shell would.
const OWN_ENV: [(&str, &str); 4] =
    [("NOTIFY_SOCKET", "/nonexistent/x"), ("LISTEN_PID", "1"), ("LISTEN_FDS", "9"), ("FOO", "bar")];

fn env_in(file: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("{}: {e}: the command never ran", file.display()));
    parse_env(&text)
}

/// The caller's variables pass; graceexec's own NOTIFY_SOCKET and
/// LISTEN_* values do not.
fn assert_generation_env(env: &HashMap<String, String>, what: &str) {
    assert_eq!(env.get("FOO").map(String::as_str), Some("bar"), "{what}: {env:?}");
    for (key, own) in &OWN_ENV[..3] {
        assert_ne!(env.get(*key).map(String::as_str), Some(*own), "{what} got graceexec's {key}");
    }
}

#[test]
fn an_exec_probe_sees_the_generations_environment_not_graceexecs() {
    let dir = TempDir::new();
    let out = dir.path("probe.env");
    let probe = format!("exec:env > {}", out.display());
    let name = "probe-env";
    let mut ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", &probe, "--name", name], &OWN_ENV);
    let gen1 = wait_ready(&mut ge, name, 1);
    let env = env_in(&out);
    assert_generation_env(&env, "the probe");
    assert_eq!(env.get("GRACEEXEC_PID"), Some(&gen1.to_string()), "{env:?}");
    assert_eq!(env.get("GRACEEXEC_GENERATION").map(String::as_str), Some("1"), "{env:?}");

    std::fs::remove_file(&out).unwrap();
    let (code, o, e) = ctl(&["reload", "--name", name]);
    assert_eq!(code, 0, "{o}{e}");
    let gen2 = wait_ready(&mut ge, name, 2);
    let env = env_in(&out);
    assert_generation_env(&env, "the probe of generation 2");
    assert_eq!(env.get("GRACEEXEC_PID"), Some(&gen2.to_string()), "{env:?}");
    assert_eq!(env.get("GRACEEXEC_GENERATION").map(String::as_str), Some("2"), "{env:?}");
}

#[test]
fn a_check_sees_the_generations_environment_not_graceexecs() {
    let dir = TempDir::new();
    let out = dir.path("check.env");
    let check = format!("env > {}", out.display());
    let name = "check-env";
    let mut ge = Ge::start(
        &["-l", "127.0.0.1:0", "--ready", "notify", "--check", &check, "--name", name],
        &OWN_ENV,
    );
    wait_ready(&mut ge, name, 1);
    let (code, o, e) = ctl(&["reload", "--name", name]);
    assert_eq!(code, 0, "{o}{e}");
    let env = env_in(&out);
    assert_generation_env(&env, "the check");
    // Before the candidate exists: its number, not yet a pid.
    assert_eq!(env.get("GRACEEXEC_GENERATION").map(String::as_str), Some("2"), "{env:?}");
}

#[test]
#[ignore = "needs root, for --user nobody: run with --ignored as root"]
fn under_user_a_probe_and_a_check_get_the_users_home_user_and_logname() {
    assert!(nix::unistd::geteuid().is_root(), "--user needs root");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("a user nobody");
    let home = nobody.dir.to_str().unwrap().to_string();
    let dir = TempDir::new();
    // nobody writes the files.
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let (probe_out, check_out) = (dir.path("probe.env"), dir.path("check.env"));
    let probe = format!("exec:env > {}", probe_out.display());
    let check = format!("env > {}", check_out.display());
    let name = "user-env";
    let args = ["-l", "127.0.0.1:0", "--user", "nobody", "--ready", &probe, "--check", &check];
    let mut args = args.to_vec();
    args.extend(["--name", name]);
    let mut env = OWN_ENV.to_vec();
    env.extend([("HOME", "/root"), ("USER", "root"), ("LOGNAME", "root")]);
    let mut ge = Ge::start(&args, &env);
    wait_ready(&mut ge, name, 1);
    let (code, o, e) = ctl(&["reload", "--name", name]);
    assert_eq!(code, 0, "{o}{e}");
    wait_ready(&mut ge, name, 2);
    for (what, file) in [("the probe", &probe_out), ("the check", &check_out)] {
        let got = env_in(file);
        let id = |k: &str| got.get(k).cloned().unwrap_or_default();
        let ids = (id("HOME"), id("USER"), id("LOGNAME"));
        assert_eq!(ids, (home.clone(), "nobody".into(), "nobody".into()), "{what}");
        assert_generation_env(&got, what);
    }
}
