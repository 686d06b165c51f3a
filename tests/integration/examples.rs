//! The example servers of examples/python, examples/node and examples/go,
//! run under graceexec as the comment at the top of each says: reloads
//! under load lose no request and leave the new generation answering, a
//! replaced generation drains and exits 0, and so does a stop.
//!
//! Each runs three times: with steered sockets (the default), where a
//! generation is stopped once nothing is left for it; with `--handover
//! shared`, where it gets SIGTERM while requests are under way and must
//! finish them; and stopped with an idle keep-alive connection open, which
//! it must close rather than wait for.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::*;

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path).display().to_string()
}

/// Panics unless `program` is on PATH: a missing runtime fails the test
/// with what to install, rather than graceexec retrying a command it cannot
/// find until the deadline.
fn need(program: &str, install: &str) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| dir.join(program).is_file());
    assert!(found, "{program} is not on PATH: {install}");
}

fn python() -> Vec<String> {
    need("python3", "apt-get install python3");
    vec!["python3".into(), repo("examples/python/server.py")]
}

fn node() -> Vec<String> {
    need("node", "apt-get install nodejs");
    vec!["node".into(), repo("examples/node/server.js")]
}

/// examples/go/server.go, built once per test run under target/tmp, with
/// no module and nothing fetched.
fn go() -> Vec<String> {
    static BUILT: OnceLock<String> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        need("go", "scripts/setup.sh installs it (apt-get install golang-go)");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("examples-go");
        let server = dir.join("server");
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&server)
            .arg(repo("examples/go/server.go"))
            .current_dir(&dir)
            .env("GOCACHE", dir.join("cache"))
            .env("GOPATH", dir.join("gopath"))
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "")
            .env("GOENV", "off")
            .output()
            .expect("run go build");
        assert!(out.status.success(), "go build failed:\n{}", String::from_utf8_lossy(&out.stderr));
        server.display().to_string()
    });
    vec![built.clone()]
}

/// `graceexec --name NAME -l 127.0.0.1:0 --ready notify EXTRA -- SERVER`,
/// two reloads under 8 clients each requesting `path` on a new connection,
/// then a stop.
fn reload_under_load(name: &str, extra: &[&str], server: Vec<String>, path: &'static str) {
    let mut args = vec!["--name", name, "-l", "127.0.0.1:0", "--ready", "notify"];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend(server.iter().map(String::as_str));
    let mut ge = Ge::spawn(command(&args), &[]);
    ge.wait_ready(1);
    let first = ge.gen_pid(1);
    let addr = ge.tcp_addr();

    let load = Load::start_on(addr, 8, path);
    load.wait_more(20);
    for gen in 2..=3 {
        let (code, out, err) = ctl(&["reload", "--name", name]);
        assert_eq!(code, 0, "reload to generation {gen}: {out}{err}\nlog:\n{}", ge.log());
        load.wait_more(20);
    }
    load.finish().assert_clean();

    for gen in 1..=2 {
        assert_eq!(ge.wait_exited(gen), "status 0", "generation {gen}; log:\n{}", ge.log());
    }
    let newest = ge.gen_pid(3);
    assert_ne!(newest, first);
    let body = get(addr, "/").unwrap_or_else(|e| panic!("GET /: {e}; log:\n{}", ge.log()));
    assert_eq!(pid_of(&body), newest, "the newest generation answers");

    let (code, out, err) = ctl(&["stop", "--name", name]);
    assert_eq!(code, 0, "stop: {out}{err}");
    assert_eq!(ge.wait_exit(), 0, "graceexec's exit code; log:\n{}", ge.log());
    let exited = format!("generation 3 (pid {newest}) exited with status 0");
    assert!(ge.log().contains(&exited), "no {exited:?} in the log:\n{}", ge.log());
}

/// A keep-alive connection that has had one answer and sends nothing more
/// while the server is stopped. The examples close idle connections after
/// 10 s anyway; a stop timeout of 5 s makes a server that waits for that
/// get SIGKILL, so it cannot pass by waiting.
fn stop_with_idle_keep_alive(name: &str, server: Vec<String>) {
    let mut args = vec!["--name", name, "-l", "127.0.0.1:0", "--ready", "notify"];
    args.extend(["--stop-timeout", "5s", "--"]);
    args.extend(server.iter().map(String::as_str));
    let mut ge = Ge::spawn(command(&args), &[]);
    ge.wait_ready(1);
    let pid = ge.gen_pid(1);

    let mut conn = TcpStream::connect(ge.tcp_addr()).unwrap();
    conn.set_read_timeout(Some(LONG)).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let answer = read_answer(&mut conn);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(!answer.to_ascii_lowercase().contains("connection: close"), "{answer:?}");

    let (code, out, err) = ctl(&["stop", "--name", name]);
    assert_eq!(code, 0, "stop: {out}{err}");
    let mut rest = Vec::new();
    let eof = conn.read_to_end(&mut rest);
    assert!(eof.is_ok() && rest.is_empty(), "after the stop: {eof:?} {rest:?}");
    assert_eq!(ge.wait_exit(), 0, "graceexec's exit code; log:\n{}", ge.log());
    let exited = format!("generation 1 (pid {pid}) exited with status 0");
    assert!(ge.log().contains(&exited), "no {exited:?} in the log:\n{}", ge.log());
}

/// One HTTP answer with a Content-Length, read off a connection that stays
/// open.
fn read_answer(conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(conn.read(&mut byte).unwrap(), 1, "EOF in the head: {got:?}");
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_string))
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"))
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

#[test]
fn python_server_reloads_under_load_and_stops() {
    reload_under_load("py", &[], python(), "/");
}

#[test]
fn python_server_finishes_requests_in_flight_on_sigterm() {
    reload_under_load("py-shared", &["--handover", "shared"], python(), "/slow?ms=50");
}

#[test]
fn python_server_closes_an_idle_keep_alive_connection_on_sigterm() {
    stop_with_idle_keep_alive("py-idle", python());
}

#[test]
fn node_server_reloads_under_load_and_stops() {
    reload_under_load("node", &[], node(), "/");
}

#[test]
fn node_server_finishes_requests_in_flight_on_sigterm() {
    reload_under_load("node-shared", &["--handover", "shared"], node(), "/slow?ms=50");
}

#[test]
fn node_server_closes_an_idle_keep_alive_connection_on_sigterm() {
    stop_with_idle_keep_alive("node-idle", node());
}

#[test]
#[ignore = "needs go: scripts/setup.sh installs golang-go; CI runs it with --ignored"]
fn go_server_reloads_under_load_and_stops() {
    reload_under_load("go", &[], go(), "/");
}

#[test]
#[ignore = "needs go: scripts/setup.sh installs golang-go; CI runs it with --ignored"]
fn go_server_finishes_requests_in_flight_on_sigterm() {
    reload_under_load("go-shared", &["--handover", "shared"], go(), "/slow?ms=50");
}

#[test]
#[ignore = "needs go: scripts/setup.sh installs golang-go; CI runs it with --ignored"]
fn go_server_closes_an_idle_keep_alive_connection_on_sigterm() {
    stop_with_idle_keep_alive("go-idle", go());
}
