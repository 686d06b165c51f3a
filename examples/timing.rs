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
//! file named by TIMING_LOG and exits 0. It never touches the inherited
//! socket: accepting is not what is measured.

use nix::sys::signal::{SigSet, Signal};
use nix::time::{clock_gettime, ClockId};
use std::env;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::process::exit;

fn now_ns() -> i128 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
}

fn main() {
    let main = now_ns();
    // Blocked before READY=1, so a stop signal that follows it at once
    // cannot kill us before sigwait is reached.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    if let Err(e) = stop.thread_block() {
        fail(&format!("cannot block SIGTERM: {e}"));
    }
    let Some(log) = env::var_os("TIMING_LOG") else { fail("TIMING_LOG is not set") };
    let Ok(notify) = env::var("NOTIFY_SOCKET") else { fail("NOTIFY_SOCKET is not set") };

    let sock = UnixDatagram::unbound().unwrap_or_else(|e| fail(&format!("socket: {e}")));
    let ready = now_ns();
    if let Err(e) = sock.send_to(b"READY=1", &notify) {
        fail(&format!("cannot send READY=1 to {notify}: {e}"));
    }
    if let Err(e) = stop.wait() {
        fail(&format!("sigwait: {e}"));
    }
    let term = now_ns();

    let line = format!("{} {main} {ready} {term}\n", std::process::id());
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
