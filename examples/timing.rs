//! The smallest server graceexec can supervise, for `scripts/overhead.sh`.
//! It does no work between its start and READY=1, so the timestamps it
//! records measure graceexec, not a server's start-up:
//!
//! - `main`: CLOCK_MONOTONIC on entering main, just after exec (the dynamic
//!   loader and Rust's runtime set-up, some tens of µs, are included);
//! - `ready`: just before it sends READY=1 on NOTIFY_SOCKET;
//! - `term`: when its stop signal arrives (taken with sigwait on a blocked
//!   signal, so the delay to wake this process is included).
//!
//! On the stop signal it appends `PID MAIN READY TERM` (nanoseconds) to the
//! file named by TIMING_LOG and exits 0. By default it never touches the
//! inherited socket: accepting is not what is measured.
//!
//! With `TIMING_SERVE_MS=LO-HI` it also answers HTTP on fd 3, each request
//! after a random delay of LO to HI ms, so that a load has something in
//! flight when a reload comes. On the stop signal it then stops accepting,
//! finishes what it accepted (at most 10 s), and appends
//! `PID MAIN READY TERM EXIT`, EXIT being when it finished.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::time::{clock_gettime, ClockId};
use std::env;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::process::exit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::thread::{sleep, spawn};
use std::time::Duration;

// `notify` is unused: READY=1 goes out through a socket made before the
// `ready` timestamp, so that creating it is not counted.
#[allow(dead_code)]
#[path = "shared/mod.rs"]
mod shared;
use shared::{drain, read_request_line, respond, InFlight};

static STOP: AtomicBool = AtomicBool::new(false);
static RNG: AtomicU64 = AtomicU64::new(0);

fn now_ns() -> i128 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
}

fn main() {
    let main = now_ns();
    // Blocked before READY=1 (and before the serving threads exist, which
    // inherit the mask), so a stop signal that follows it at once cannot
    // kill us before sigwait is reached.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    if let Err(e) = stop.thread_block() {
        fail(&format!("cannot block SIGTERM: {e}"));
    }
    let Some(log) = env::var_os("TIMING_LOG") else { fail("TIMING_LOG is not set") };
    let Ok(notify) = env::var("NOTIFY_SOCKET") else { fail("NOTIFY_SOCKET is not set") };
    let serve = env::var("TIMING_SERVE_MS").ok().map(|v| parse_range(&v));
    if let Some(delay) = serve {
        RNG.store(main as u64 ^ (u64::from(std::process::id()) << 32), SeqCst);
        let listener = listener();
        spawn(move || accept_loop(&listener, delay));
    }

    let sock = UnixDatagram::unbound().unwrap_or_else(|e| fail(&format!("socket: {e}")));
    let ready = now_ns();
    if let Err(e) = sock.send_to(b"READY=1", &notify) {
        fail(&format!("cannot send READY=1 to {notify}: {e}"));
    }
    if let Err(e) = stop.wait() {
        fail(&format!("sigwait: {e}"));
    }
    let term = now_ns();
    let line = if serve.is_some() {
        STOP.store(true, SeqCst);
        drain(Duration::from_secs(10));
        format!("{} {main} {ready} {term} {}\n", std::process::id(), now_ns())
    } else {
        format!("{} {main} {ready} {term}\n", std::process::id())
    };

    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        fail(&format!("cannot append to {}: {e}", log.to_string_lossy()));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("timing: {msg}");
    exit(1);
}

fn parse_range(value: &str) -> (u64, u64) {
    let (lo, hi) = value.split_once('-').unwrap_or((value, value));
    match (lo.parse(), hi.parse()) {
        (Ok(lo), Ok(hi)) if lo <= hi => (lo, hi),
        _ => fail(&format!("TIMING_SERVE_MS={value}: want LO-HI in ms")),
    }
}

/// fd 3, as passed under socket activation.
fn listener() -> TcpListener {
    if env::var("LISTEN_PID").ok() != Some(std::process::id().to_string()) {
        fail("TIMING_SERVE_MS needs a socket passed at fd 3 (LISTEN_PID, LISTEN_FDS)");
    }
    // SAFETY: fd 3 was passed to this process alone (the LISTEN_PID
    // contract) and nothing else here wraps or closes it, so the OwnedFd
    // is its only owner.
    let listener = TcpListener::from(unsafe { OwnedFd::from_raw_fd(3) });
    // Polled with a timeout rather than blocked on, so that the loop sees
    // STOP: a shared socket must not be shut down, which would close it
    // for the next generation too.
    if let Err(e) = listener.set_nonblocking(true) {
        fail(&format!("cannot make fd 3 non-blocking: {e}"));
    }
    listener
}

fn accept_loop(listener: &TcpListener, delay: (u64, u64)) {
    while !STOP.load(SeqCst) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, PollTimeout::from(20u16)), Ok(n) if n > 0) {
            continue;
        }
        loop {
            // Counted before STOP is read (both SeqCst): either the drain
            // after STOP sees this count, or this sees STOP and does not
            // accept. Counting after accept() would leave a moment where
            // an accepted connection is uncounted and the drain ends.
            let guard = InFlight::begin();
            if STOP.load(SeqCst) {
                return;
            }
            let Ok((conn, _)) = listener.accept() else { break };
            spawn(move || {
                answer(conn, delay);
                drop(guard);
            });
        }
    }
}

fn answer(mut conn: TcpStream, (lo, hi): (u64, u64)) {
    if read_request_line(&mut conn, Duration::from_secs(10)).is_none() {
        return;
    }
    // splitmix64 over a shared counter: cheap, lock-free, good enough.
    let mut z = RNG.fetch_add(0x9e37_79b9_7f4a_7c15, SeqCst).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    sleep(Duration::from_millis(lo + (z ^ (z >> 31)) % (hi - lo + 1)));
    // examples/load.rs reads the pid from the body.
    let body = format!("pid={}\n", std::process::id());
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    respond(&mut conn, &response);
}
