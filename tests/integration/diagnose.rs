//! A candidate that never accepts on the socket it is given (issue 10 §3,
//! issue 11): with steered sockets it is never ready, and `status` and the
//! failure say what it probably does instead, from a look at its processes.
//! One test per mistake: a port of its own, a wrapper script without
//! `exec`, and neither.

use std::net::SocketAddr;

use crate::faults::run_wrapper;
use crate::harness::*;

/// The port the example server serves when it ignores its sockets, from
/// its "serving Ok(ADDR)" line.
fn own_port(ge: &Ge) -> SocketAddr {
    logged_addr(ge, "; serving Ok(")
}

/// The address in the log right after `at`, up to the next `)`.
fn logged_addr(ge: &Ge, at: &str) -> SocketAddr {
    ge.wait_log(at);
    let log = ge.log();
    let rest = &log[log.find(at).unwrap() + at.len()..];
    rest[..rest.find(')').unwrap()].parse().unwrap()
}

#[test]
fn a_server_that_binds_a_port_of_its_own_is_told_the_address_and_to_take_fd_3() {
    let ge =
        Ge::start(&["-l", "127.0.0.1:0", "--ready-timeout", "5s"], &[("EXAMPLE_IGNORE_FDS", "1")]);
    let addr = own_port(&ge);
    let waiting =
        format!("nothing accepted on fd 3 yet; it listens on {addr} itself, probably instead");
    ge.wait_status("the suspect", |s| s["generations"][0]["waiting"] == waiting.as_str());
    let (code, out, err) = ctl(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("waiting: {waiting}")), "{out}");
    let mut ge = ge;
    assert_eq!(ge.wait_exit(), 1);
    let why = format!(
        "generation 1 was not ready within 5s (nothing accepted on fd 3 yet); it listens on \
         {addr} itself, probably instead: if that is the server's port, make it accept on the \
         inherited fd 3 (LISTEN_FDS) instead of binding; giving up"
    );
    assert!(ge.log().contains(&why), "{}", ge.log());
}

/// Regression for the hint that named all three mistakes at once: a
/// release whose start script lost its `exec`. The server, a child of the
/// shell, finds LISTEN_PID not its own and falls back to a port of its
/// own, as servers with a configured address do; before, the script's
/// own example server refused the sockets and exited, and the shell with it.
#[test]
fn a_wrapper_script_without_exec_is_told_to_exec_the_server() {
    let dir = TempDir::new();
    let script = dir.path("start.sh");
    let srv = server();
    let body = format!(
        "#!/bin/sh\n[ \"$GRACEEXEC_GENERATION\" = 1 ] && exec {0}\n{0}\necho server exited\n",
        srv.display()
    );
    std::fs::write(&script, body).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let args = ["-l", "127.0.0.1:0", "--ready-timeout", "5s"];
    let ge = run_wrapper(&script, &args, &[("EXAMPLE_OPTIONAL_FDS", "1")]);
    ge.wait_ready(1);
    let rt = runtime_dir();
    let reload = std::thread::spawn(move || ctl_in(&rt, &["reload"]));
    let addr = own_port(&ge);
    let s = ge.wait_status("the suspect", |s| {
        s["generations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["waiting"].as_str().is_some_and(|w| w.contains("shell")))
    });
    let g = s["generations"].as_array().unwrap().iter().find(|g| g["generation"] == 2).unwrap();
    let waiting = g["waiting"].as_str().unwrap();
    assert!(
        waiting.starts_with("nothing accepted on fd 3 yet; its main process is a shell ("),
        "{s}"
    );
    let ending = format!("running a child, probably the server, and it listens on {addr} itself");
    assert!(waiting.ends_with(&ending), "{s}");

    let (code, _, err) = reload.join().unwrap();
    assert_eq!(code, 1, "{err}");
    let why = format!(
        "generation 2 was not ready within 5s (nothing accepted on fd 3 yet); COMMAND is probably \
         a shell script that runs the server as a child: put `exec` before the server's command, \
         and if {addr} is the server's port, make it accept on the inherited fd 3 (LISTEN_FDS) \
         instead of binding it"
    );
    assert!(err.contains(&why), "{err}");
    // The first generation, started by `exec`, still serves.
    let s = ge.wait_status("generation 1 alone", |s| s["state"] == "serving");
    assert_eq!(s["generations"][0]["generation"], 1, "{s}");
}

#[test]
fn a_server_that_ignores_listen_fds_and_binds_nothing_is_asked_whether_it_reads_them() {
    // `sleep` holds fd 3, a listening socket, as every generation does:
    // graceexec's own, not a port of its own.
    let c = command(&["-v", "-l", "127.0.0.1:0", "--ready-timeout", "3s", "--", "sleep", "60"]);
    let mut ge = Ge::spawn(c, &[]);
    assert_eq!(ge.wait_exit(), 1);
    let log = ge.log();
    assert!(log.contains("generation 1 accepts nothing yet: nothing stands out"), "{log}");
    let why = "generation 1 was not ready within 3s (nothing accepted on fd 3 yet); it never \
               accepted on fd 3: does it read LISTEN_FDS?";
    assert!(log.contains(why), "{log}");
}

/// Regression for a guess worded as a finding: a server still starting
/// that also listens on a metrics port was told, while it started, that
/// it listens there itself, as a server that binds its port would be; it
/// is only probably that, and the server is ready once it accepts.
#[test]
fn a_slow_server_with_a_metrics_port_is_only_probably_suspected_and_then_ready() {
    let dir = TempDir::new();
    let go = dir.path("go");
    let env = [
        ("EXAMPLE_METRICS_PORT", "1"),
        ("EXAMPLE_HOLD_FILE", go.to_str().unwrap()),
        ("EXAMPLE_HOLD_GEN", "1"),
    ];
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "accept"], &env);
    let metrics = logged_addr(&ge, "server: metrics on Ok(");
    let waiting =
        format!("nothing accepted on fd 3 yet; it listens on {metrics} itself, probably instead");
    ge.wait_status("the guess", |s| s["generations"][0]["waiting"] == waiting.as_str());
    std::fs::write(&go, "").unwrap();
    ge.wait_ready(1);
    assert!(!ge.log().contains("was not ready"), "{}", ge.log());
}
