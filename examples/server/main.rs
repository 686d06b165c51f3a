//! Demo HTTP (and UDP) server for graceexec. It never opens a listening socket
//! itself: it serves the fds passed by socket activation (`LISTEN_PID`/`LISTEN_FDS`),
//! reports `READY=1` on `NOTIFY_SOCKET`, and on SIGTERM stops accepting, answers
//! every connection it already accepted, and exits. Routes: `/`, `/slow?ms=N`,
//! `/info`, `/health`. The `EXAMPLE_*` variables make it misbehave on
//! purpose so tests can drive graceexec through its error paths:
//! - `EXAMPLE_TERM_ABRUPT=1`: exit at once on SIGTERM, dropping every
//!   connection it accepted and has not answered (as many servers do);
//! - `EXAMPLE_UNHEALTHY_GEN=LIST`: `/health` answers 503 in those
//!   generations (200 with `pid=P` elsewhere);
//! - `EXAMPLE_STALL_FILE=PATH`: accept nothing while PATH exists;
//! - `EXAMPLE_IGNORE_FDS=1`: serve a port of its own, never the inherited
//!   sockets, and say no READY=1 (a server not made for socket activation);
//! - `EXAMPLE_OPTIONAL_FDS=1`: when `LISTEN_PID` is not its own pid (it runs
//!   under a wrapper script that did not `exec` it), serve a port of its own
//!   as `EXAMPLE_IGNORE_FDS` does, instead of refusing to start: a server
//!   for which socket activation is optional, with a port to fall back to.
//! - `EXAMPLE_METRICS_PORT=1`: also listen on a port of its own from the
//!   start, as a metrics or admin port, and accept nothing there.
//! - `EXAMPLE_DEFER_ACCEPT_GEN=LIST`: in those generations, set
//!   TCP_DEFER_ACCEPT on the inherited TCP sockets: a connection completes
//!   its handshake there only once the client sends.

use std::env;
use std::fs;
use std::io::{self, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::exit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::thread::{sleep, spawn};
use std::time::Duration;

#[path = "../shared/mod.rs"]
mod shared;
use shared::{drain, notify, read_request_line, respond, Conn, InFlight};

mod modes;
mod sys;

static TERM: AtomicBool = AtomicBool::new(false);
static USR1_COUNT: AtomicUsize = AtomicUsize::new(0);
static RTMIN_COUNT: AtomicUsize = AtomicUsize::new(0);
static RTMAX_COUNT: AtomicUsize = AtomicUsize::new(0);

const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

struct State {
    /// The body of `/` and of UDP replies.
    hello: String,
    /// /info up to `usr1=`, the first field that can change.
    info_head: String,
    term_ignored: bool,
    /// `/health` answers 200 (else 503).
    healthy: bool,
    pid: u32,
}

pub enum Inherited {
    Tcp(TcpListener),
    Unix(UnixListener),
    Udp(UdpSocket),
}

fn main() {
    modes::helper_main();
    // Taken before we open anything, so /info shows exactly the fds the
    // supervisor passed or leaked to us.
    let (fds, cloexec, nonblock) = snapshot_fds();
    let pid = std::process::id();
    let var = |key: &str| env::var(key).unwrap_or_default();

    let listen_pid = var("LISTEN_PID");
    let mut ignore_fds = var("EXAMPLE_IGNORE_FDS") == "1";
    if listen_pid.trim().parse::<u32>().ok() != Some(pid) {
        let why = format!("LISTEN_PID={listen_pid} is not my pid {pid}");
        if var("EXAMPLE_OPTIONAL_FDS") != "1" {
            fail(&format!("{why}; refusing inherited sockets"));
        }
        eprintln!("server: {why}; falling back to a port of my own");
        ignore_fds = true;
    }
    let listen_fds_raw = var("LISTEN_FDS");
    let listen_fds = match listen_fds_raw.trim().parse::<i32>() {
        Ok(n) if n > 0 => n,
        _ => fail(&format!("LISTEN_FDS={listen_fds_raw:?} passes no sockets")),
    };
    let gen = env::var("GRACEEXEC_GENERATION").unwrap_or_else(|_| "0".to_string());
    if gen_listed("EXAMPLE_FAIL_GEN", &gen) {
        eprintln!("server: failing at start-up as asked");
        exit(3);
    }
    // Before any thread exists; only the child comes back.
    let handoff = modes::handoff_if_asked(&gen);
    let pid = std::process::id();
    if let Ok(text) = env::var("EXAMPLE_STDERR_AT_START") {
        eprintln!("{text}");
    }
    let term_ignored = var("EXAMPLE_IGNORE_TERM") == "1";
    let term_exit = env_number::<i32>("EXAMPLE_TERM_EXIT").unwrap_or(0);
    let slow_start = env_number::<u64>("EXAMPLE_SLOW_START_MS").unwrap_or(0);
    let never_ready = gen_listed("EXAMPLE_NEVER_READY_GEN", &gen);
    let hold = env::var_os("EXAMPLE_HOLD_FILE").filter(|_| gen_listed("EXAMPLE_HOLD_GEN", &gen));
    let term_hang = var("EXAMPLE_TERM_HANG") == "1";
    let crash_file =
        env::var_os("EXAMPLE_CRASH_FILE").filter(|_| gen_listed("EXAMPLE_CRASH_GEN", &gen));

    let sockets: Vec<Inherited> = match ignore_fds {
        false => (3..listen_fds.saturating_add(3))
            .map(|fd| sys::adopt(fd).unwrap_or_else(|e| fail(&e)))
            .collect(),
        true => {
            let own = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail(&e.to_string()));
            eprintln!("server: ignoring the inherited sockets; serving {:?}", own.local_addr());
            own.set_nonblocking(true).unwrap_or_else(|e| fail(&e.to_string()));
            vec![Inherited::Tcp(own)]
        }
    };
    if gen_listed("EXAMPLE_DEFER_ACCEPT_GEN", &gen) {
        for socket in &sockets {
            if let Inherited::Tcp(l) = socket {
                sys::defer_accept(l, 30).unwrap_or_else(|e| fail(&e.to_string()));
            }
        }
    }
    if let Err(e) = sys::install_handlers(term_ignored) {
        fail(&format!("cannot install signal handlers: {e}"));
    }
    let notify_socket = var("NOTIFY_SOCKET");
    let join = |fds: &[i32]| fds.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    let (fds, cloexec, fdnames) = (join(&fds), join(&cloexec), var("LISTEN_FDNAMES"));
    let nonblock = join(&nonblock);
    let state: &'static State = Box::leak(Box::new(State {
        hello: format!("pid={pid} gen={gen}\n"),
        info_head: format!(
            "pid={pid}\ngen={gen}\nlisten_pid={listen_pid}\nlisten_fds={listen_fds}\n\
             listen_fdnames={fdnames}\nnotify_socket={notify_socket}\n\
             fds={fds}\ncloexec={cloexec}\nnonblock={nonblock}\nserver_starter_port={}\n\
             server_starter_generation={}\ncwd={}\nexe={}\n",
            var("SERVER_STARTER_PORT"),
            var("SERVER_STARTER_GENERATION"),
            env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
            fs::read_link("/proc/self/exe").map(|e| e.display().to_string()).unwrap_or_default(),
        ),
        term_ignored,
        healthy: !gen_listed("EXAMPLE_UNHEALTHY_GEN", &gen),
        pid,
    }));

    // Held for the process's life; nothing is served there.
    let _metrics = (var("EXAMPLE_METRICS_PORT") == "1").then(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail(&e.to_string()));
        eprintln!("server: metrics on {:?}", l.local_addr());
        l
    });
    sleep(Duration::from_millis(slow_start));
    if let Some(path) = hold {
        // A SIGTERM while held must still end the process, or a supervisor
        // that gives up on this generation would wait on it forever.
        wait_until(10, || Path::new(&path).exists() || TERM.load(SeqCst));
    }

    if let Some(path) = crash_file {
        // Ready, then dead before it accepted anything: a connection it had
        // taken would be lost with it, whatever the supervisor does.
        if let Err(e) = notify(&notify_socket, "READY=1") {
            eprintln!("server: cannot notify {notify_socket}: {e}");
        }
        wait_until(5, || Path::new(&path).exists() || TERM.load(SeqCst));
        eprintln!("server: pid {pid} crashing after READY=1 as asked");
        exit(4);
    }

    let count = sockets.len();
    let mut acceptors = Vec::new();
    for socket in sockets {
        match socket {
            Inherited::Tcp(l) => acceptors.push(spawn(move || accept_loop(|| l.accept(), state))),
            Inherited::Unix(l) => acceptors.push(spawn(move || accept_loop(|| l.accept(), state))),
            Inherited::Udp(s) => acceptors.push(spawn(move || udp_loop(&s, state))),
        }
    }
    eprintln!("server: pid {pid} gen {gen} serving {count} sockets");

    if !notify_socket.is_empty() && !never_ready && !ignore_fds && !TERM.load(SeqCst) {
        let mainpid = modes::mainpid_line(&handoff);
        let msg = format!("{mainpid}READY=1\nSTATUS=serving gen {gen} pid {pid}");
        let sent = match modes::ready_from_helper(&gen) {
            true => modes::notify_from_helper(&msg),
            false => notify(&notify_socket, &msg),
        };
        if let Err(e) = sent {
            eprintln!("server: cannot notify {notify_socket}: {e}");
        }
    }
    modes::handoff_done(handoff);

    if let Some(path) = env::var_os("EXAMPLE_CHATTY_FILE") {
        spawn(move || chatter(&path, pid));
    }

    wait_until(5, || TERM.load(SeqCst));
    if var("EXAMPLE_TERM_ABRUPT") == "1" {
        // Whatever it accepted and has not answered is reset.
        eprintln!("server: pid {pid} exiting at once as asked");
        exit(term_exit);
    }
    // Acceptors (and UDP readers) are joined first so that nothing can raise
    // the in-flight count after we have seen it reach zero.
    for acceptor in acceptors {
        let _ = acceptor.join();
    }
    drain(Duration::MAX);
    if term_hang {
        // A drain that never ends: a stuck connection, a worker that
        // does not exit. Only SIGKILL ends this.
        eprintln!("server: pid {pid} drained, hanging as asked");
        loop {
            sleep(Duration::from_secs(3600));
        }
    }
    eprintln!("server: pid {pid} drained, exiting");
    exit(term_exit);
}

fn fail(msg: &str) -> ! {
    eprintln!("server: {msg}");
    exit(1);
}

fn wait_until(poll_ms: u64, done: impl Fn() -> bool) {
    while !done() {
        sleep(Duration::from_millis(poll_ms));
    }
}

fn env_number<T: std::str::FromStr>(key: &str) -> Option<T> {
    let raw = env::var(key).ok()?;
    let parsed = raw.trim().parse().ok();
    Some(parsed.unwrap_or_else(|| fail(&format!("{key}={raw:?} is not a number"))))
}

fn gen_listed(key: &str, gen: &str) -> bool {
    let list = env::var(key).unwrap_or_default();
    let is_gen = |g: &str| !g.trim().is_empty() && g.trim() == gen.trim();
    list.trim() == "all" || list.split(',').any(is_gen)
}

/// Returns all open fds, and those >= 3 of them that have `O_CLOEXEC` set,
/// and those that are non-blocking (`O_NONBLOCK`), as they came.
fn snapshot_fds() -> (Vec<i32>, Vec<i32>, Vec<i32>) {
    let own_dir = format!("/proc/{}/fd", std::process::id());
    let mut fds = Vec::new();
    let dir = fs::read_dir("/proc/self/fd");
    for entry in dir.into_iter().flatten().flatten() {
        // The handle doing this listing shows up in it; it is ours, not inherited.
        if fs::read_link(entry.path()).is_ok_and(|t| t == Path::new(&own_dir)) {
            continue;
        }
        let name = entry.file_name();
        fds.extend(name.to_str().and_then(|n| n.parse::<i32>().ok()));
    }
    fds.sort_unstable();
    // Only now, with the listing closed, may we open files (fdinfo) without
    // them showing up in the snapshot.
    let with = |flag: u32| fds.iter().copied().filter(move |fd| *fd >= 3 && has_flag(*fd, flag));
    const O_CLOEXEC: u32 = 0o2_000_000;
    const O_NONBLOCK: u32 = 0o4_000;
    let (cloexec, nonblock) = (with(O_CLOEXEC).collect(), with(O_NONBLOCK).collect());
    (fds, cloexec, nonblock)
}

fn has_flag(fd: i32, flag: u32) -> bool {
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .is_some_and(|flags| flags & flag != 0)
}

/// `accept` is a non-blocking listener's `accept()`.
fn accept_loop<C: Conn, A>(accept: impl Fn() -> io::Result<(C, A)>, state: &'static State) {
    let stall = env::var_os("EXAMPLE_STALL_FILE");
    while !TERM.load(SeqCst) {
        if stall.as_ref().is_some_and(|p| Path::new(p).exists()) {
            sleep(Duration::from_millis(2));
            continue;
        }
        match accept() {
            Ok((conn, _)) => {
                let guard = InFlight::begin();
                spawn(move || {
                    serve_conn(conn, state);
                    drop(guard);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => sleep(Duration::from_millis(1)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // EMFILE, ECONNABORTED and the like pass; a listener stays usable.
            Err(_) => sleep(Duration::from_millis(10)),
        }
    }
}

/// Like the acceptors, stops reading at SIGTERM and answers what it read:
/// a datagram read by a process that then exits is lost, while one left in
/// the shared socket's queue is read by the next generation.
fn udp_loop(sock: &UdpSocket, state: &'static State) {
    let mut buf = [0u8; 2048];
    // SO_RCVTIMEO, so a blocking socket still wakes up to see SIGTERM.
    let _ = sock.set_read_timeout(Some(Duration::from_millis(20)));
    while !TERM.load(SeqCst) {
        match sock.recv_from(&mut buf) {
            Ok((_, from)) => drop(sock.send_to(state.hello.as_bytes(), from)),
            // The socket may be non-blocking (its flags are shared with other
            // generations), and ICMP errors from earlier replies surface here.
            Err(_) => sleep(Duration::from_millis(1)),
        }
    }
}

fn serve_conn<C: Conn>(mut conn: C, state: &State) {
    let Some(request_line) = read_request_line(&mut conn, HEAD_TIMEOUT) else {
        return;
    };
    let (status, body) = route(&request_line, state);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    respond(&mut conn, &response);
}

fn route(request_line: &str, state: &State) -> (&'static str, String) {
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return ("400 Bad Request", "bad request\n".to_string());
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match (method, path) {
        _ if !version.starts_with("HTTP/1.") => ("400 Bad Request", "bad version\n".to_string()),
        ("GET", "/") => ("200 OK", state.hello.clone()),
        ("GET", "/info") => ("200 OK", info(state)),
        ("GET", "/health") if state.healthy => ("200 OK", format!("pid={}\n", state.pid)),
        ("GET", "/health") => ("503 Service Unavailable", "unhealthy as asked\n".to_string()),
        ("GET", "/slow") => match query.strip_prefix("ms=").and_then(|v| v.parse().ok()) {
            Some(ms) => {
                sleep(Duration::from_millis(ms));
                ("200 OK", state.hello.clone())
            }
            None => ("400 Bad Request", "usage: /slow?ms=N\n".to_string()),
        },
        _ => ("404 Not Found", "not found\n".to_string()),
    }
}

fn info(state: &State) -> String {
    let (head, usr1) = (&state.info_head, USR1_COUNT.load(SeqCst));
    let (rtmin, rtmax) = (RTMIN_COUNT.load(SeqCst), RTMAX_COUNT.load(SeqCst));
    let ignored = u8::from(state.term_ignored);
    // Counts this /info request too.
    let in_flight = InFlight::count();
    format!(
        "{head}usr1={usr1}\nrtmin={rtmin}\nrtmax={rtmax}\nterm_ignored={ignored}\n\
         in_flight={in_flight}\n"
    )
}

/// EXAMPLE_CHATTY_FILE: once the file exists (and the server is ready), a
/// stream of 1 KiB lines on stderr, as fast as it is taken.
fn chatter(path: &std::ffi::OsStr, pid: u32) {
    wait_until(5, || Path::new(path).exists());
    let filler = "x".repeat(1000);
    for n in 0u64.. {
        if writeln!(io::stderr(), "server: pid {pid} line {n} {filler}").is_err() {
            return;
        }
    }
}
