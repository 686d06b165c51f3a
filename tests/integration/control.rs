//! `graceexec reload|status|stop|list` against running instances, through
//! the control socket.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;

use serde_json::Value;

use crate::harness::*;

/// An instance with `--ready notify`, its first generation serving.
fn serving(args: &[&str], env: &[(&str, &str)]) -> Ge {
    let mut full = vec!["-l", "127.0.0.1:0", "--ready", "notify"];
    full.extend_from_slice(args);
    let ge = Ge::start(&full, env);
    ge.wait_ready(1);
    ge
}

fn status_json(args: &[&str]) -> Value {
    let mut full = vec!["status", "--json"];
    full.extend_from_slice(args);
    let (code, out, err) = ctl(&full);
    assert_eq!(code, 0, "status failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn reload_reports_generation_pid_and_time_to_ready() {
    let ge = serving(&[], &[]);
    let (code, out, err) = ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    let pid = ge.gen_pid(2);
    assert!(
        out.starts_with(&format!("reloaded server: generation 2 (pid {pid}) ready after ")),
        "{out}"
    );
    assert_eq!(pid_of(&get(ge.tcp_addr(), "/").unwrap()), pid, "the new generation serves");
}

#[test]
fn failed_reload_exits_1_with_the_reason_and_the_candidates_stderr() {
    let ge = serving(&[], &[("EXAMPLE_FAIL_GEN", "2")]);
    let old = ge.gen_pid(1);
    let (code, out, err) = ctl(&["reload", "--name", "server"]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("reload of server failed: generation 2 (pid "), "{err}");
    assert!(err.contains("exited with status 3 before it was ready"), "{err}");
    assert!(err.contains("generation 1 keeps serving"), "{err}");
    assert!(err.contains("  | server: failing at start-up as asked"), "{err}");
    assert_eq!(pid_of(&get(ge.tcp_addr(), "/").unwrap()), old, "the old generation serves");
}

#[test]
fn reload_reports_a_ready_timeout() {
    let _ge = serving(&["--ready-timeout", "300ms"], &[("EXAMPLE_NEVER_READY_GEN", "2")]);
    let (code, _, err) = ctl(&["reload"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("generation 2 was not ready within 300ms"), "{err}");
}

#[test]
fn reload_reports_a_command_that_is_gone() {
    let dir = TempDir::new();
    let copy = dir.path("app");
    std::fs::copy(server(), &copy).unwrap();
    let args = ["-l", "127.0.0.1:0", "--ready", "notify", "--"];
    let mut c = command(&args);
    c.arg(&copy);
    let ge = Ge::spawn(c, &[]);
    ge.wait_ready(1);
    std::fs::remove_file(&copy).unwrap();
    let (code, _, err) = ctl(&["reload", "--name", "app"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("command not found"), "{err}");
}

/// Regression: a request merged into a reload already under way must get
/// the outcome of the follow-up, which starts after it, not of the reload
/// that started before it (a deploy script would trust a stale success).
#[test]
fn merged_request_gets_the_follow_up_outcome() {
    let dir = TempDir::new();
    let hold = dir.path("hold");
    let hold_s = hold.to_str().unwrap();
    let ge = serving(&[], &[("EXAMPLE_HOLD_GEN", "2"), ("EXAMPLE_HOLD_FILE", hold_s)]);
    let load = Load::start(ge.tcp_addr(), 4);
    load.wait_more(20);
    let rt = runtime_dir();
    let rt2 = rt.clone();
    let first = std::thread::spawn(move || ctl_in(&rt, &["reload"]));
    ge.gen_pid(2);
    let second = std::thread::spawn(move || ctl_in(&rt2, &["reload"]));
    ge.wait_log("merged into one follow-up reload");
    std::fs::write(&hold, "").unwrap();
    let (code, out, err) = first.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("generation 2 (pid "), "{out}");
    let (code, out, err) = second.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("generation 3 (pid {})", ge.gen_pid(3))), "{out}");
    load.wait_more(20);
    load.finish().assert_clean();
}

#[test]
fn reload_no_wait_returns_at_once_and_timeout_exits_4() {
    let dir = TempDir::new();
    let hold = dir.path("hold");
    let env = [("EXAMPLE_HOLD_GEN", "2"), ("EXAMPLE_HOLD_FILE", hold.to_str().unwrap())];
    let ge = serving(&[], &env);
    let (code, out, _) = ctl(&["reload", "--no-wait"]);
    assert_eq!((code, out.trim()), (0, "reload of server requested"));
    ge.gen_pid(2);
    let (code, _, err) = ctl(&["reload", "--timeout", "200ms"]);
    assert_eq!(code, 4, "{err}");
    std::fs::write(&hold, "").unwrap();
    ge.wait_ready(2);
}

#[test]
fn status_text_and_json() {
    let ge = serving(&["--name", "api"], &[]);
    let (code, ..) = ctl(&["reload", "--name", "api"]);
    assert_eq!(code, 0);
    ge.wait_exited(1);
    let v = status_json(&["--name", "api"]);
    assert_eq!(v["graceexec"], 1);
    assert_eq!(v["name"], "api");
    assert_eq!(v["pid"], ge.pid());
    assert_eq!(v["sockets"][0]["address"], ge.tcp_addr().to_string());
    assert_eq!(v["restarts"], 0);
    assert_eq!(v["last_reload"]["ok"], true);
    assert_eq!(v["last_reload"]["generation"], 2);
    let gens = v["generations"].as_array().unwrap();
    let current = gens.iter().find(|g| g["generation"] == 2).expect("generation 2 listed");
    assert_eq!(current["state"], "ready");
    assert_eq!(current["pid"], ge.gen_pid(2));
    assert!(current["ready_ms"].is_u64(), "{current}");
    assert_eq!(current["status"], format!("serving gen 2 pid {}", ge.gen_pid(2)));

    let (code, out, err) = ctl(&["status", "--name", "api"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("pid {}", ge.pid())), "{out}");
    assert!(out.contains(&ge.tcp_addr().to_string()), "{out}");
    assert!(out.contains(&ge.gen_pid(2).to_string()) && out.contains("ready"), "{out}");
}

#[test]
fn stop_returns_once_the_instance_has_exited() {
    let mut ge = serving(&["--name", "web"], &[]);
    let sock = runtime_dir().join("graceexec/web.sock");
    assert!(sock.exists());
    let (code, out, err) = ctl(&["stop", "--name", "web"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("web stopped"), "{out}");
    assert!(ge.try_status().is_some() || poll_until(LONG, || ge.try_status().is_some()));
    assert_eq!(ge.wait_exit(), 0);
    assert!(!sock.exists(), "the control socket is removed");
}

#[test]
fn list_shows_every_instance_and_reload_without_name_refuses_to_guess() {
    let a = serving(&["--name", "a"], &[]);
    let b = serving(&["--name", "b"], &[]);
    let (code, out, _) = ctl(&["list"]);
    assert_eq!(code, 0);
    for ge in [&a, &b] {
        assert!(out.contains(&ge.pid().to_string()), "{out}");
    }
    let (code, _, err) = ctl(&["reload"]);
    assert_eq!(code, 3);
    assert!(err.contains("several instances are running: a, b"), "{err}");
    let (code, _, err) = ctl(&["reload", "--name", "c"]);
    assert_eq!(code, 3);
    assert!(err.contains("no instance named c"), "{err}");
}

#[test]
fn a_second_instance_with_the_same_name_is_refused() {
    let ge = serving(&["--name", "twin"], &[]);
    let dir = TempDir::new();
    let unix = format!("unix:{}", dir.path("second.sock").display());
    let (code, err) =
        run_to_end(command(&["--name", "twin", "-l", &unix, "--", server().to_str().unwrap()]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("already running (pid {}", ge.pid())), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!dir.path("second.sock").exists(), "nothing bound");
    assert_eq!(ctl(&["status", "--name", "twin"]).0, 0, "the first one is untouched");
}

#[test]
fn a_stale_control_socket_is_replaced() {
    let dir = runtime_dir().join("graceexec");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    drop(UnixListener::bind(dir.join("server.sock")).unwrap());
    let ge = serving(&[], &[]);
    ge.wait_log("stale");
    assert_eq!(ctl(&["reload"]).0, 0);
}

#[test]
fn control_socket_is_private_and_never_reaches_the_server() {
    let ge = serving(&[], &[]);
    let sock = runtime_dir().join("graceexec/server.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let i = info(ge.tcp_addr());
    assert_eq!(i["fds"], "0,1,2,3", "the server holds only stdio and its socket");
}

/// The peer check itself, beyond the file's mode: a client running as
/// another user is refused even when it can reach the socket.
#[test]
#[ignore = "needs root, to run a client as nobody: run with --ignored as root"]
fn a_client_of_another_uid_is_refused() {
    assert!(nix::unistd::geteuid().is_root(), "needs root to run a client as nobody");
    let ctl_path = TempDir::new();
    std::fs::set_permissions(&ctl_path.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = ctl_path.path("open.sock");
    let _ge = serving(&["--control", sock.to_str().unwrap()], &[]);
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut c = command(&["status", "--control", sock.to_str().unwrap()]);
    std::os::unix::process::CommandExt::uid(&mut c, 65534);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("permission denied"), "{err}");
}

#[test]
fn pid_file_is_written_and_removed() {
    let dir = TempDir::new();
    let pf = dir.path("ge.pid");
    let mut ge = serving(&["--pid-file", pf.to_str().unwrap()], &[]);
    assert_eq!(std::fs::read_to_string(&pf).unwrap().trim(), ge.pid().to_string());
    ge.signal(nix::sys::signal::Signal::SIGTERM);
    ge.wait_exit();
    assert!(!pf.exists());
}

#[test]
fn log_prefix_labels_each_line_with_generation_and_pid() {
    let ge = serving(&["--log-prefix"], &[]);
    let pid = ge.gen_pid(1);
    ge.wait_log(&format!("[gen 1 pid {pid}] server: pid {pid} gen 1 serving 1 sockets"));
}

/// Regression: with `--control PATH` the client named the instance after
/// the socket's file name ("reloaded control"), not the instance's name.
#[test]
fn control_path_client_names_the_instance_by_its_own_name() {
    let dir = TempDir::new();
    let sock = dir.path("control.sock");
    let sock = sock.to_str().unwrap();
    let ge = serving(&["--name", "api", "--control", sock], &[]);
    let (code, out, err) = ctl(&["reload", "--control", sock]);
    assert_eq!(code, 0, "{err}");
    let pid = ge.gen_pid(2);
    assert!(out.starts_with(&format!("reloaded api: generation 2 (pid {pid}) ")), "{out}");
    let (code, out, err) = ctl(&["stop", "--control", sock]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("api stopped"), "{out}");
}
