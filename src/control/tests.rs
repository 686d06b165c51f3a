//! The control channel over real unix sockets in private temp directories:
//! the server is driven by a poll loop like the event loop's, the client
//! functions run against it. No test touches the environment.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollTimeout};
use serde_json::{json, Value};

use super::client::{self, Target};
use super::paths::{socket_path, tests::temp_dir};
use super::server::{ConnId, Key, Server, MAX_CONNS};
use super::*;

// ---- requests ----

#[test]
fn requests() {
    let p = |s: &str| parse_request(s.as_bytes());
    assert_eq!(p(r#"{"graceexec":1,"command":"reload"}"#), Ok(Request::Reload { wait: true }));
    assert_eq!(
        p(r#"{"graceexec":1,"command":"reload","wait":false,"x":[1]}"#),
        Ok(Request::Reload { wait: false })
    );
    assert_eq!(p(r#"{"graceexec":1,"command":"status"}"#), Ok(Request::Status));
    assert_eq!(p(r#"{"graceexec":1,"command":"stop"}"#), Ok(Request::Stop));
    for r in [Request::Reload { wait: false }, Request::Status, Request::Stop] {
        assert_eq!(p(&request_line(r)), Ok(r));
    }
}

#[test]
fn bad_requests() {
    let p = |s: &str| parse_request(s.as_bytes()).unwrap_err();
    assert!(p("{").contains("not valid JSON"));
    assert!(p("[1]").contains("JSON object"));
    assert_eq!(
        p(r#"{"graceexec":2,"command":"status"}"#),
        "protocol version 2 is not supported; this instance speaks 1"
    );
    assert!(p(r#"{"command":"status"}"#).contains("\"graceexec\""));
    assert!(p(r#"{"graceexec":1,"command":"restart"}"#).contains("unknown command \"restart\""));
    assert!(p(r#"{"graceexec":1}"#).contains("no \"command\""));
    assert!(p(r#"{"graceexec":1,"command":"reload","wait":"yes"}"#).contains("wait"));
}

// ---- server ----

/// Server::bind sets the process-wide umask around bind(2), which is safe in
/// graceexec (single-threaded then) but not among parallel tests.
fn bind(path: &Path, name: &str) -> anyhow::Result<(Server, Option<String>)> {
    static UMASK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = UMASK.lock().unwrap_or_else(|e| e.into_inner());
    Server::bind(path, name)
}

fn send(path: &Path, line: &str) -> UnixStream {
    let mut c = UnixStream::connect(path).unwrap();
    c.write_all(line.as_bytes()).unwrap();
    c
}

/// Every line the server sends until it closes.
fn read_all(c: UnixStream) -> Vec<Value> {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    BufReader::new(c).lines().map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect()
}

#[test]
fn bind_makes_a_private_socket_that_drop_removes() {
    let dir = temp_dir("bind");
    let path = socket_path(&dir, "api");
    let (server, note) = bind(&path, "api").unwrap();
    assert_eq!(note, None);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(server.path(), path);
    drop(server);
    assert!(!path.exists());

    // A file that replaced ours meanwhile belongs to someone else.
    let (server, _) = bind(&path, "api").unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "newer").unwrap();
    drop(server);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "newer");
}

#[test]
fn bind_refuses_a_live_instance_and_replaces_a_stale_socket() {
    let dir = temp_dir("live");
    let path = socket_path(&dir, "api");
    let running = serve(&path, |_| vec![(json!({"graceexec":1,"ok":true,"pid":777}), true)]);
    let e = bind(&path, "api").err().unwrap().to_string();
    assert!(e.contains("an instance named api is already running (pid 777"), "{e}");
    assert!(e.contains("--name"), "{e}");
    drop(running);

    drop(UnixListener::bind(&path).unwrap()); // leaves the file behind
    let (_server, note) = bind(&path, "api").unwrap();
    assert_eq!(note, Some(format!("replaced a stale control socket at {}", path.display())));

    let other = dir.join("file.sock");
    std::fs::write(&other, "").unwrap();
    let e = bind(&other, "file").err().unwrap().to_string();
    assert!(e.contains("exists and is not a socket"), "{e}");
}

#[test]
fn service_parses_requests_and_answers_bad_ones() {
    let dir = temp_dir("svc");
    let path = socket_path(&dir, "api");
    let (mut server, _) = bind(&path, "api").unwrap();
    let now = Instant::now();

    let good = send(&path, "{\"graceexec\":1,\"command\":\"status\"}\n");
    let (reqs, warnings) = server.service(&[Key::Listener], now);
    assert!(warnings.is_empty());
    assert_eq!(reqs.len(), 1);
    let (id, req) = reqs[0];
    assert_eq!(req, Request::Status);
    assert!(server.is_open(id));
    server.reply(id, &json!({"graceexec":1,"ok":true}), true);
    assert!(!server.is_open(id));
    assert_eq!(read_all(good), vec![json!({"graceexec":1,"ok":true})]);

    // A request ended by EOF instead of a newline (printf ... | nc -U).
    let c = send(&path, r#"{"graceexec":1,"command":"reload","wait":false}"#);
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let (reqs, _) = server.service(&[Key::Listener], now);
    assert_eq!(reqs.iter().map(|r| r.1).collect::<Vec<_>>(), [Request::Reload { wait: false }]);

    let bad = [
        ("{nope\n", "not valid JSON"),
        ("{\"graceexec\":1,\"command\":\"dance\"}\n", "unknown command \"dance\""),
        ("{\"graceexec\":7,\"command\":\"status\"}\n", "protocol version 7 is not supported"),
    ];
    for (line, want) in bad {
        let c = send(&path, line);
        let (reqs, _) = server.service(&[Key::Listener], now);
        assert!(reqs.is_empty());
        let replies = read_all(c);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0]["ok"], false);
        assert!(replies[0]["error"].as_str().unwrap().contains(want), "{}", replies[0]);
    }

    let c = send(&path, &"x".repeat(70 * 1024));
    server.service(&[Key::Listener], now);
    assert!(read_all(c)[0]["error"].as_str().unwrap().contains("longer than 64 KiB"));
    assert_eq!(server.wake_at(), None);
}

#[test]
fn a_silent_client_is_dropped_after_the_read_timeout() {
    let dir = temp_dir("silent");
    let path = socket_path(&dir, "api");
    let (mut server, _) = bind(&path, "api").unwrap();
    let now = Instant::now();
    let c = UnixStream::connect(&path).unwrap();
    server.service(&[Key::Listener], now);
    let deadline = server.wake_at().unwrap();
    assert_eq!(deadline, now + server::READ_TIMEOUT);
    server.service(&[], deadline - Duration::from_millis(1));
    assert_eq!(server.poll_fds().len(), 2, "closed too early");
    server.service(&[], deadline);
    assert_eq!(server.poll_fds().len(), 1);
    assert!(read_all(c)[0]["error"].as_str().unwrap().contains("no request within 5s"));
}

#[test]
fn a_waiting_client_that_leaves_is_noticed() {
    let dir = temp_dir("leave");
    let path = socket_path(&dir, "api");
    let (mut server, _) = bind(&path, "api").unwrap();
    let c = send(&path, "{\"graceexec\":1,\"command\":\"stop\"}\n");
    let (reqs, _) = server.service(&[Key::Listener], Instant::now());
    let id: ConnId = reqs[0].0;
    server.reply(id, &json!({"graceexec":1,"ok":true,"stopping":true}), false);
    assert!(server.is_open(id));
    assert_eq!(server.wake_at(), None, "an answered client has no read deadline");
    // Shutting down only its writing half is not leaving (and must not spin).
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(poll_once(&server, 50), vec![]);
    drop(c);
    let ready = poll_once(&server, 1000);
    assert_eq!(ready, vec![Key::Conn(id)]);
    server.service(&ready, Instant::now());
    assert!(!server.is_open(id));
}

#[test]
fn connections_beyond_the_cap_are_refused() {
    let dir = temp_dir("cap");
    let path = socket_path(&dir, "api");
    let (mut server, _) = bind(&path, "api").unwrap();
    let _open: Vec<UnixStream> =
        (0..MAX_CONNS).map(|_| UnixStream::connect(&path).unwrap()).collect();
    server.service(&[Key::Listener], Instant::now());
    let extra = UnixStream::connect(&path).unwrap();
    let (_, warnings) = server.service(&[Key::Listener], Instant::now());
    assert_eq!(warnings.len(), 1);
    assert!(read_all(extra)[0]["error"].as_str().unwrap().contains("too many connections"));
}

// ---- client against a real server ----

fn poll_once(server: &Server, ms: u16) -> Vec<Key> {
    let polled = server.poll_fds();
    let mut fds: Vec<PollFd> =
        polled.iter().map(|(_, fd, ev)| PollFd::new(fd.as_fd(), *ev)).collect();
    poll(&mut fds, PollTimeout::from(ms)).unwrap();
    let hit: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
    polled.iter().zip(hit).filter(|(_, h)| *h).map(|((k, _, _), _)| *k).collect()
}

/// A Server in a thread, answering each request with the given lines
/// (each with whether to close after it); none keeps the client waiting.
struct Running {
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn serve<F>(path: &Path, mut answer: F) -> Running
where
    F: FnMut(Request) -> Vec<(Value, bool)> + Send + 'static,
{
    let (mut server, _) = bind(path, "test").unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let thread = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            let ready = poll_once(&server, 20);
            let (reqs, _) = server.service(&ready, Instant::now());
            for (id, req) in reqs {
                for (v, close) in answer(req) {
                    server.reply(id, &v, close);
                }
            }
        }
    });
    Running { done, thread: Some(thread) }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        let _ = self.thread.take().unwrap().join();
    }
}

fn named(name: &str) -> Target {
    Target { name: Some(name.into()), control: None }
}

fn reply(v: Value) -> impl FnMut(Request) -> Vec<(Value, bool)> + Send + 'static {
    move |_| vec![(v.clone(), true)]
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn reload_success_failure_and_no_wait() {
    let dir = temp_dir("reload");
    let path = socket_path(&dir, "api");
    let ok = json!({"graceexec":1,"ok":true,"generation":3,"pid":4242,"ready_ms":37});
    let s = serve(&path, reply(ok));
    let o = client::reload_in(&named("api"), &dir, SECOND, true);
    assert_eq!(
        (o.code, o.out),
        (0, vec!["reloaded api: generation 3 (pid 4242) ready after 37 ms".to_string()])
    );
    drop(s);

    let failed = json!({"graceexec":1,"ok":false,"error":"generation 3 (pid 4242) exited with status 1 before it was ready",
        "generation":3,"serving":2,"stderr":["boom","at line 2"]});
    let s = serve(&path, reply(failed));
    // Found as the only instance running, without --name.
    let o = client::reload_in(&Target { name: None, control: None }, &dir, SECOND, true);
    assert_eq!(o.code, 1);
    assert_eq!(
        o.err,
        [
            "graceexec: reload of api failed: generation 3 (pid 4242) exited with status 1 before it was ready; generation 2 keeps serving",
            "graceexec: last lines of its output:",
            "  | boom",
            "  | at line 2",
        ]
    );
    drop(s);

    let o = client::reload_output(
        "api",
        &json!({"graceexec":1,"ok":false,"error":"x","serving":null,"stderr":[]}),
    );
    assert_eq!(o.err, ["graceexec: reload of api failed: x"]);
    let o = client::reload_output("api", &json!({"graceexec":1,"ok":true,"accepted":true}));
    assert_eq!((o.code, o.out), (0, vec!["reload of api requested".to_string()]));
}

#[test]
fn no_answer_in_time_is_exit_4() {
    let dir = temp_dir("slow");
    let path = socket_path(&dir, "api");
    let _s = serve(&path, |_| Vec::new());
    let o = client::reload_in(&named("api"), &dir, Duration::from_millis(200), true);
    assert_eq!(o.code, 4);
    assert_eq!(
        o.err,
        ["graceexec: no answer from api within 200ms; the reload may still complete"]
    );
}

#[test]
fn stop_waits_for_the_exit() {
    let dir = temp_dir("stop");
    let path = socket_path(&dir, "api");
    let _s = serve(&path, |_| {
        vec![
            (json!({"graceexec":1,"ok":true,"stopping":true,"pid":100}), false),
            (json!({"graceexec":1,"ok":true,"exited":true,"code":0}), true),
        ]
    });
    let mut progress = Vec::new();
    let o = client::stop_in(&named("api"), &dir, SECOND, &mut |l| progress.push(l));
    assert_eq!(progress, ["stopping api (pid 100)"]);
    assert_eq!((o.code, o.out), (0, vec!["api stopped (exit status 0)".to_string()]));

    let _slow = serve(&dir.join("slow.sock"), |_| {
        vec![(json!({"graceexec":1,"ok":true,"stopping":true,"pid":100}), false)]
    });
    let o = client::stop_in(&named("slow"), &dir, Duration::from_millis(300), &mut |_| {});
    assert_eq!(
        (o.code, o.err),
        (4, vec!["graceexec: slow (pid 100) is still stopping after 300ms".to_string()])
    );
}

fn sample_status() -> Value {
    json!({"graceexec":1,"ok":true,"name":"api","pid":100,"version":"0.1.0","uptime_ms":3_723_400,
        "state":"serving","command":["./server","--flag"],
        "sockets":[{"name":"tcp-8080","address":"127.0.0.1:8080"},{"name":"admin","address":"unix:/run/a.sock"}],
        "generations":[
            {"generation":2,"pid":4242,"state":"ready","age_ms":241_000,"ready_ms":37,"status":"accepting connections"},
            {"generation":3,"pid":4300,"state":"starting","age_ms":800,"ready_ms":null,"status":null}],
        "last_reload":{"ok":false,"generation":3,"error":"not ready in 60s","ago_ms":10_000},"restarts":1})
}

#[test]
fn status_reads_well() {
    let lines = status_text(&sample_status());
    assert_eq!(
        lines,
        [
            "api: pid 100, up 1h 2m 3s, state serving, 1 restart",
            "  command: ./server --flag",
            "  tcp-8080  127.0.0.1:8080",
            "  admin     unix:/run/a.sock",
            "  GEN  PID   STATE     AGE    READY AFTER  STATUS",
            "  2    4242  ready     4m 1s  37 ms        accepting connections",
            "  3    4300  starting  1s     -            -",
            "last reload: failed 10s ago: not ready in 60s",
        ]
    );
    let mut v = sample_status();
    v["last_reload"] = json!({"ok":true,"generation":2,"ready_ms":37,"ago_ms":240_000});
    assert_eq!(
        status_text(&v).last().unwrap(),
        "last reload: generation 2 ready after 37 ms, 4m ago"
    );

    let dir = temp_dir("status");
    let _s = serve(&socket_path(&dir, "api"), reply(sample_status()));
    let o = client::status_in(&named("api"), &dir, true);
    assert_eq!(o.code, 0);
    assert_eq!(serde_json::from_str::<Value>(&o.out[0]).unwrap(), sample_status());
}

#[test]
fn resolution_errors() {
    let dir = temp_dir("resolve");
    let none = Target { name: None, control: None };
    let o = client::status_in(&none, &dir, false);
    assert_eq!(o.code, 3);
    assert_eq!(
        o.err,
        [format!("graceexec: no graceexec instance is running (looked in {})", dir.display())]
    );

    drop(UnixListener::bind(socket_path(&dir, "old")).unwrap()); // stale: skipped
    assert_eq!(client::status_in(&none, &dir, false).code, 3);
    let o = client::status_in(&named("api"), &dir, false);
    let path: PathBuf = socket_path(&dir, "api");
    assert_eq!(
        (o.code, o.err),
        (
            3,
            vec![format!(
                "graceexec: no instance named api is running (no control socket at {})",
                path.display()
            )]
        )
    );

    let _a = serve(&socket_path(&dir, "a"), reply(sample_status()));
    let _b = serve(&socket_path(&dir, "b"), reply(sample_status()));
    let o = client::status_in(&none, &dir, false);
    assert_eq!(o.err, ["graceexec: several instances are running: a, b; pick one with --name"]);
    assert_eq!(o.code, 3);

    let o = client::list_in(&dir, false);
    assert_eq!(o.code, 0, "{:?}", o.err);
    assert_eq!(o.out.len(), 3);
    assert!(o.out[0].starts_with("NAME  PID  GEN  STATE    SOCKETS"), "{}", o.out[0]);
    assert!(
        o.out[1].starts_with("a     100  2    serving  127.0.0.1:8080,unix:/run/a.sock  "),
        "{}",
        o.out[1]
    );
    let o = client::list_in(&dir, true);
    assert_eq!(serde_json::from_str::<Value>(&o.out[0]).unwrap().as_array().unwrap().len(), 2);
    assert!(client::list_in(&temp_dir("empty"), false).out.is_empty());
}

#[test]
fn a_client_can_read_a_reply_after_the_server_drops_unread_input() {
    // The server drains what it did not read before closing, so the reply
    // is followed by EOF rather than ECONNRESET.
    let dir = temp_dir("drain");
    let path = socket_path(&dir, "api");
    let (mut server, _) = bind(&path, "api").unwrap();
    let mut c = send(&path, &format!("{{bad\n{}", "unread ".repeat(2000)));
    server.service(&[Key::Listener], Instant::now());
    let mut all = String::new();
    c.set_read_timeout(Some(SECOND)).unwrap();
    c.read_to_string(&mut all).unwrap();
    assert!(all.contains("not valid JSON"));
}

#[test]
fn target_flags() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        target: Target,
    }
    <Cli as clap::CommandFactory>::command().debug_assert();
    let t = Cli::try_parse_from(["x", "--name", "api"]).unwrap().target;
    assert_eq!((t.name.as_deref(), t.control), (Some("api"), None));
    assert!(Cli::try_parse_from(["x", "--name", "api", "--control", "/a.sock"]).is_err());
    assert!(Cli::try_parse_from(["x", "--name", ".hidden"]).is_err());
}
