//! The control channel over real unix sockets in private temp directories:
//! the server is driven by a poll loop like the event loop's, the client
//! functions run against it. No test touches the environment.
//! Requests and the server are tested here, the client commands in
//! commands.rs.

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

use super::client::{self, Which};
use super::paths::{socket_path, tests::temp_dir};
use super::protocol::{parse_request, request_line, Answer, Reply, Request};
use super::server::{ConnId, Key, Server, MAX_CONNS};
use super::*;

mod commands;

// ---- requests ----

#[test]
fn requests() {
    let p = |s: &str| parse_request(s.as_bytes());
    assert_eq!(
        p(r#"{"graceexec":1,"command":"reload"}"#),
        Ok(Request::Reload { wait: true, canary: None })
    );
    assert_eq!(
        p(r#"{"graceexec":1,"command":"reload","wait":false,"x":[1]}"#),
        Ok(Request::Reload { wait: false, canary: None })
    );
    assert_eq!(p(r#"{"graceexec":1,"command":"status"}"#), Ok(Request::Status));
    assert_eq!(p(r#"{"graceexec":1,"command":"stop"}"#), Ok(Request::Stop));
    let upgrade = Request::Upgrade { binary: Some("/usr/bin/graceexec".into()) };
    for r in [
        Request::Reload { wait: false, canary: None },
        Request::Status,
        Request::Stop,
        Request::Upgrade { binary: None },
        upgrade,
    ] {
        assert_eq!(p(&request_line(r.clone())), Ok(r));
    }
    // The instance has its own working directory: the client sends an
    // absolute path, and a relative one is refused.
    let rel = parse_request(br#"{"graceexec":1,"command":"upgrade","binary":"ge"}"#);
    assert_eq!(rel, Err("\"binary\" must be an absolute path".into()));
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
    let running = serve(&path, |_| {
        let mut v = commands::sample_status();
        v["pid"] = json!(777);
        vec![(v, true)]
    });
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
    let (id, req) = reqs[0].clone();
    assert_eq!(req, Request::Status);
    assert!(server.is_open(id));
    server.reply(id, Reply::new(Answer::ReloadAccepted), true);
    assert!(!server.is_open(id));
    let want = json!({"graceexec":1,"ok":true,"name":"api","reply":"reload_accepted"});
    assert_eq!(read_all(good), vec![want]);

    // A request ended by EOF instead of a newline (printf ... | nc -U).
    let c = send(&path, r#"{"graceexec":1,"command":"reload","wait":false}"#);
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let (reqs, _) = server.service(&[Key::Listener], now);
    assert_eq!(
        reqs.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
        [Request::Reload { wait: false, canary: None }]
    );

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
    server.reply(id, Reply::new(Answer::Stopping { pid: 100 }), false);
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

// ---- a server in a thread ----

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
    // Named as its socket is, like a real instance, since every reply
    // carries the name.
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("test");
    let (mut server, _) = bind(path, name).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let thread = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            let ready = poll_once(&server, 20);
            let (reqs, _) = server.service(&ready, Instant::now());
            for (id, req) in reqs {
                for (v, close) in answer(req) {
                    server.reply(id, as_reply(v), close);
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

fn named(name: &str) -> Which<'_> {
    Which::Name(name)
}

/// A reply written as JSON, as the wire carries it.
fn as_reply(v: Value) -> Reply {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"))
}

fn reply(v: Value) -> impl FnMut(Request) -> Vec<(Value, bool)> + Send + 'static {
    move |_| vec![(v.clone(), true)]
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn a_follower_that_does_not_read_is_dropped_with_a_last_lagged_line() {
    use super::protocol::EventLine;
    let dir = temp_dir("lag");
    let path = socket_path(&dir, "api");
    let (mut server, _) = bind(&path, "api").unwrap();
    let c = send(&path, "{\"graceexec\":1,\"command\":\"events\"}\n");
    let (reqs, _) = server.service(&[Key::Listener], Instant::now());
    let (id, req) = reqs[0].clone();
    assert_eq!(req, Request::Events { since: None });
    let big = EventLine { event: "x".repeat(4000), ..EventLine::default() };
    let event = || Reply::new(Answer::Event(Box::new(big.clone())));
    // The client reads nothing: the socket buffer, then the queue, fill up.
    let mut sent = 0;
    while server.stream(id, event(), Instant::now()) {
        sent += 1;
        assert!(sent < 10_000, "never dropped");
    }
    assert!(!server.stream(id, event(), Instant::now()), "dropped stays dropped");
    // Now it reads: what was queued, then one `lagged` line, then EOF.
    let reader = std::thread::spawn(move || read_all(c));
    while server.is_open(id) {
        let ready = poll_once(&server, 100);
        server.service(&ready, Instant::now());
    }
    let lines = reader.join().unwrap();
    let last = lines.last().unwrap();
    assert_eq!(last["reply"], "lagged", "{last}");
    assert_eq!(last["missed"], 2, "{last}");
    assert!(lines[..lines.len() - 1].iter().all(|l| l["reply"] == "event"));
}
