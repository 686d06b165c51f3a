//! A small HTTP server that takes its socket the way many Rust servers do,
//! through the `listenfd` crate, for `scripts/interop.sh`. It answers every
//! request with `pid=<its pid>`, sends `READY=1` to `NOTIFY_SOCKET` once it
//! accepts, and on SIGTERM (or SIGINT) stops accepting, answers every
//! connection it already accepted, and exits 0. No `unsafe`: the signals are
//! blocked before any thread starts and taken by `sigwait` in a thread of
//! their own.
//!
//!     graceexec --listen 127.0.0.1:8080 --ready notify -- target/debug/examples/listenfd_server

use std::env;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::exit;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::thread::{sleep, spawn};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};

#[path = "shared/mod.rs"]
mod shared;
use shared::{drain, notify, read_request_line, respond, InFlight};

static STOP: AtomicBool = AtomicBool::new(false);

const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let pid = std::process::id();
    // Blocked here, before any thread exists, so every thread inherits the
    // mask and the signals wait for the sigwait below.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        fail(&format!("cannot block SIGTERM: {e}"));
    }

    let mut fds = listenfd::ListenFd::from_env();
    let listener = match fds.take_tcp_listener(0) {
        Ok(Some(listener)) => listener,
        Ok(None) => fail("no socket passed (LISTEN_FDS/LISTEN_PID)"),
        Err(e) => fail(&format!("fd 3: {e}")),
    };
    // poll() says when to accept; another process sharing the socket may
    // take the connection first, so accept() must not block.
    if let Err(e) = listener.set_nonblocking(true) {
        fail(&format!("fd 3: {e}"));
    }
    spawn(move || match signals.wait() {
        Ok(_) => STOP.store(true, SeqCst),
        Err(e) => fail(&format!("sigwait: {e}")),
    });

    let body: &'static str = Box::leak(format!("pid={pid}\n").into_boxed_str());
    if let Ok(path) = env::var("NOTIFY_SOCKET") {
        if let Err(e) = notify(&path, "READY=1") {
            eprintln!("listenfd_server: cannot notify {path}: {e}");
        }
    }
    accept_loop(&listener, body);
    drop(listener);

    drain(DRAIN_TIMEOUT);
    exit(0);
}

fn fail(msg: &str) -> ! {
    eprintln!("listenfd_server: {msg}");
    exit(1);
}

fn accept_loop(listener: &TcpListener, body: &'static str) {
    while !STOP.load(SeqCst) {
        // A short timeout, so that SIGTERM is seen within 50 ms.
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(50u8)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(_) => {
                sleep(Duration::from_millis(5));
                continue;
            }
        }
        match listener.accept() {
            Ok((conn, _)) => {
                let guard = InFlight::begin();
                spawn(move || {
                    serve(conn, body);
                    drop(guard);
                });
            }
            // Another generation took it, or EMFILE and the like: go on.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => sleep(Duration::from_millis(5)),
        }
    }
}

fn serve(mut conn: TcpStream, body: &str) {
    if read_request_line(&mut conn, HEAD_TIMEOUT).is_none() {
        return;
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    respond(&mut conn, &response);
}
