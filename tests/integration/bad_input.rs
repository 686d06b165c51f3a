//! Bad input: one line, the documented exit code, nothing left behind.

use std::net::TcpListener;

use crate::harness::*;

fn one_line(code: i32, err: &str) {
    assert_eq!(err.lines().count(), 1, "expected one line:\n{err}");
    assert!(err.starts_with("graceexec"), "{err}");
    let _ = code;
}

fn srv() -> String {
    server().to_str().unwrap().to_string()
}

#[test]
fn a_bad_address_is_a_usage_error() {
    for bad in ["nope", "127.0.0.1:99999", "ftp://x:1", "unix:"] {
        let (code, err) = run_to_end(command(&["-l", bad, "--", &srv()]));
        assert_eq!(code, 2, "{bad}: {err}");
        one_line(code, &err);
        assert!(err.contains(bad.trim_end_matches(':')), "{err}");
    }
}

#[test]
fn other_usage_errors_exit_2_with_one_line() {
    let cases: [&[&str]; 5] = [
        &["-l", "127.0.0.1:0"],
        &["-l", "127.0.0.1:0", "--ready", "whenever", "--", "x"],
        &["-l", "127.0.0.1:0", "--stop-signal", "KILL", "--", "x"],
        &["-l", "127.0.0.1:0", "--stop-timeout", "soon", "--", "x"],
        &["--", "true"],
    ];
    for args in cases {
        let (code, err) = run_to_end(command(args));
        assert_eq!(code, 2, "{args:?}: {err}");
        one_line(code, &err);
    }
}

#[test]
fn a_port_in_use_exits_1_and_leaves_nothing_behind() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = TempDir::new();
    let sock = dir.path("first.sock");
    let unix = format!("unix:{}", sock.display());
    let (code, err) = run_to_end(command(&["-l", &unix, "-l", &addr, "--", &srv()]));
    assert_eq!(code, 1, "{err}");
    one_line(code, &err);
    assert!(err.contains(&format!("cannot bind {addr}: Address already in use")), "{err}");
    assert!(!sock.exists(), "the unix socket bound before the failure is removed");
}

#[test]
fn a_missing_command_exits_127_before_binding() {
    let dir = TempDir::new();
    let sock = dir.path("s.sock");
    let unix = format!("unix:{}", sock.display());
    for cmd in ["/nonexistent/server", "no-such-command-graceexec"] {
        let (code, err) = run_to_end(command(&["-l", &unix, "--", cmd]));
        assert_eq!(code, 127, "{err}");
        one_line(code, &err);
        assert!(err.contains("command not found") && err.contains(cmd), "{err}");
        assert!(!sock.exists());
    }
}

#[test]
fn a_command_that_is_not_executable_exits_126() {
    let dir = TempDir::new();
    let file = dir.path("server.txt");
    std::fs::write(&file, b"not a program").unwrap();
    let (code, err) = run_to_end(command(&["-l", "127.0.0.1:0", "--", file.to_str().unwrap()]));
    assert_eq!(code, 126, "{err}");
    one_line(code, &err);
    assert!(err.contains("cannot execute"), "{err}");
}

#[test]
fn a_udp_port_in_use_is_detected() {
    // Regression: SO_REUSEADDR on UDP let a second socket bind the same
    // address, so the second instance silently took the datagrams over.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let arg = format!("udp://{}", taken.local_addr().unwrap());
    let (code, err) = run_to_end(command(&["-l", &arg, "--", &srv()]));
    assert_eq!(code, 1, "{err}");
    one_line(code, &err);
    assert!(err.contains("Address already in use"), "{err}");
}

#[test]
fn a_wrong_listen_fds_from_systemd_is_one_line_not_an_abort() {
    // Regression: the fd named by LISTEN_FDS was closed, so graceexec took
    // its own signalfd for it, closed it and aborted.
    let script =
        format!("exec 3>&-; LISTEN_PID=$$ LISTEN_FDS=1 exec {} -- {}", bin().display(), srv());
    let mut c = std::process::Command::new("/bin/sh");
    c.arg("-c").arg(script);
    let (code, err) = run_to_end(c);
    assert_eq!(code, 1, "{err}");
    one_line(code, &err);
    assert!(err.contains("inherited fd 3 is not open"), "{err}");
}
