//! HTTP server for `scripts/reload-bench.sh`: the same program runs under
//! graceexec, Server::Starter's `start_server` and a plain stop-then-start
//! restart. It takes its listening socket from socket activation
//! (`LISTEN_PID`/`LISTEN_FDS`, fd 3), from `SERVER_STARTER_PORT`
//! (`host:port=fd;...`, the first entry), or binds `--bind ADDR` itself
//! after its start-up, as a server without a supervisor's socket does.
//!
//!     bench_server [--bind 127.0.0.1:8080] [--delay-ms 0-20] [--startup-ms 0]
//!                  [--release-file PATH] [--crash-ms 1500] [--on-term drain|exit]
//!                  [--tag TEXT]
//!
//! Every answer carries the serving pid in `X-Pid`, and the `r=` query
//! parameter, if any, in `X-Req` (the load generator's request id). `/ping` answers at
//! once; any other request after a random delay within `--delay-ms`. Start-up
//! takes `--startup-ms`, then `READY=1` goes to `NOTIFY_SOCKET` (if set). A
//! release file that reads `bad` makes start-up end in a crash (exit 1)
//! `--crash-ms` in, before anything is served. On SIGTERM (or SIGINT) it
//! stops accepting, answers every connection it accepted, and exits 0;
//! with `--on-term exit` it exits 0 at once instead, dropping whatever it
//! accepted and has not answered (a server that does not drain).
//! `--tag` is ignored; it marks the processes of one bench run.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use std::env;
use std::fs;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::process::exit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::thread::{sleep, spawn};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "shared/mod.rs"]
mod shared;
use shared::{drain, notify, read_request_line, respond, InFlight};

static TERM: AtomicBool = AtomicBool::new(false);
static EXIT_ON_TERM: AtomicBool = AtomicBool::new(false);
static RNG: AtomicU64 = AtomicU64::new(0);

/// Longer than the bench's load generator keeps a connection open without
/// sending (after it stops sending, until it exits): a connection closed
/// without an answer before then would count as a failure.
const HEAD_TIMEOUT: Duration = Duration::from_secs(20);
/// A drain never outlasts this, whatever a client does.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

struct Config {
    bind: Option<String>,
    delay_ms: (u64, u64),
    startup: Duration,
    release_file: Option<String>,
    crash: Duration,
}

fn main() {
    // Before any other thread exists, so that every thread inherits the mask
    // and the signals reach only the sigwait below: no handler, no unsafe.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        fail(&format!("cannot block signals: {e}"));
    }
    spawn(move || {
        if signals.wait().is_ok() {
            if EXIT_ON_TERM.load(SeqCst) {
                exit(0);
            }
            TERM.store(true, SeqCst);
        }
    });

    let config = parse_args().unwrap_or_else(|e| {
        eprintln!("bench_server: {e}");
        exit(2);
    });
    let pid = std::process::id();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    RNG.store(nanos ^ (u64::from(pid) << 32), SeqCst);

    let inherited = inherited_fd().unwrap_or_else(|e| fail(&e)).map(adopt);
    let bad = config
        .release_file
        .as_ref()
        .is_some_and(|path| fs::read_to_string(path).is_ok_and(|s| s.trim() == "bad"));

    let started = Instant::now();
    let (until, crash) = if bad { (config.crash, true) } else { (config.startup, false) };
    while started.elapsed() < until {
        if TERM.load(SeqCst) {
            exit(0);
        }
        sleep(Duration::from_millis(5).min(until.saturating_sub(started.elapsed())));
    }
    if crash {
        eprintln!(
            "bench_server: pid {pid}: bad release, crashing {} ms into start-up",
            until.as_millis()
        );
        exit(1);
    }

    let listener = match (inherited, &config.bind) {
        (Some(listener), _) => listener,
        (None, Some(addr)) => TcpListener::bind(addr.as_str())
            .unwrap_or_else(|e| fail(&format!("cannot bind {addr}: {e}"))),
        (None, None) => fail("no socket passed (LISTEN_FDS, SERVER_STARTER_PORT) and no --bind"),
    };
    // Shared with the other generations when inherited; all of them poll.
    if let Err(e) = listener.set_nonblocking(true) {
        fail(&format!("cannot make the listener non-blocking: {e}"));
    }
    if let Ok(path) = env::var("NOTIFY_SOCKET") {
        if let Err(e) = notify(&path, "READY=1") {
            eprintln!("bench_server: cannot notify {path}: {e}");
        }
    }

    let delay_ms = config.delay_ms;
    while !TERM.load(SeqCst) {
        accept_ready(&listener, delay_ms);
    }
    // Closing our copy: a self-bound port now refuses, an inherited one
    // keeps queueing for the next generation.
    drop(listener);
    drain(DRAIN_LIMIT);
    exit(0);
}

fn fail(msg: &str) -> ! {
    eprintln!("bench_server: {msg}");
    exit(1);
}

fn parse_args() -> Result<Config, String> {
    let mut config = Config {
        bind: None,
        delay_ms: (0, 20),
        startup: Duration::ZERO,
        release_file: None,
        crash: Duration::from_millis(1500),
    };
    let mut args = env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let ms = |v: &str| v.parse::<u64>().map_err(|_| format!("{flag} {v}: not a number"));
        match flag.as_str() {
            "--bind" => config.bind = Some(value),
            "--delay-ms" => {
                let (lo, hi) = value.split_once('-').unwrap_or((&value, &value));
                config.delay_ms = (ms(lo)?, ms(hi)?);
                if config.delay_ms.0 > config.delay_ms.1 {
                    return Err(format!("--delay-ms {value}: empty range"));
                }
            }
            "--startup-ms" => config.startup = Duration::from_millis(ms(&value)?),
            "--crash-ms" => config.crash = Duration::from_millis(ms(&value)?),
            "--release-file" => config.release_file = Some(value),
            "--on-term" => match value.as_str() {
                "drain" => EXIT_ON_TERM.store(false, SeqCst),
                "exit" => EXIT_ON_TERM.store(true, SeqCst),
                _ => return Err(format!("--on-term {value}: want drain or exit")),
            },
            "--tag" => {}
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(config)
}

/// The fd a supervisor passed: fd 3 under socket activation, the first
/// `SERVER_STARTER_PORT` entry under Server::Starter.
fn inherited_fd() -> Result<Option<i32>, String> {
    let var = |key: &str| env::var(key).unwrap_or_default();
    if var("LISTEN_PID").trim() == std::process::id().to_string() {
        return match var("LISTEN_FDS").trim().parse::<i32>() {
            Ok(n) if n >= 1 => Ok(Some(3)),
            _ => Err(format!("LISTEN_FDS={:?} passes no socket", var("LISTEN_FDS"))),
        };
    }
    let ports = var("SERVER_STARTER_PORT");
    match ports.split(';').next().and_then(|entry| entry.rsplit_once('=')) {
        Some((_, fd)) => match fd.trim().parse::<i32>() {
            Ok(fd) if fd >= 0 => Ok(Some(fd)),
            _ => Err(format!("SERVER_STARTER_PORT={ports:?}: bad fd")),
        },
        None => Ok(None),
    }
}

fn adopt(fd: i32) -> TcpListener {
    // SAFETY: the supervisor passed this fd for this process alone (the
    // LISTEN_PID / SERVER_STARTER_PORT contract) and nothing else in this
    // program wraps or closes it, so the OwnedFd is its only owner. Safe Rust
    // has no other way to take ownership of an inherited descriptor.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    TcpListener::from(owned)
}

/// Waits up to 50 ms for connections, then accepts all that are queued.
fn accept_ready(listener: &TcpListener, delay_ms: (u64, u64)) {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    if !matches!(poll(&mut fds, PollTimeout::from(50u16)), Ok(n) if n > 0) {
        return;
    }
    while !TERM.load(SeqCst) {
        match listener.accept() {
            Ok((conn, _)) => {
                let guard = InFlight::begin();
                spawn(move || {
                    serve(conn, delay_ms);
                    drop(guard);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // WouldBlock: another generation took it, or the queue is empty.
            Err(_) => return,
        }
    }
}

fn serve(mut conn: TcpStream, delay_ms: (u64, u64)) {
    let Some(line) = read_request_line(&mut conn, HEAD_TIMEOUT) else {
        return;
    };
    let target = line.split(' ').nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/ping" {
        sleep(Duration::from_millis(random_in(delay_ms)));
    }
    // The load generator's request id, echoed so it can match answers.
    let id = query.split('&').find_map(|kv| kv.strip_prefix("r=")).unwrap_or("-");
    let id: String =
        id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(40).collect();
    let pid = std::process::id();
    let body = format!("pid={pid}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nX-Pid: {pid}\r\nX-Req: {id}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    respond(&mut conn, &response);
}

/// Uniform in lo..=hi: splitmix64 over a shared counter (lock-free, seeded
/// from the clock and pid; statistical quality is beside the point).
fn random_in((lo, hi): (u64, u64)) -> u64 {
    let mut z = RNG.fetch_add(0x9e37_79b9_7f4a_7c15, SeqCst).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    lo + z % (hi - lo + 1)
}
