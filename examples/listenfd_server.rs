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
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::process::exit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::thread::{sleep, spawn};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};

static STOP: AtomicBool = AtomicBool::new(false);
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 8 * 1024;
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

    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while IN_FLIGHT.load(SeqCst) > 0 && Instant::now() < deadline {
        sleep(Duration::from_millis(5));
    }
    exit(0);
}

fn fail(msg: &str) -> ! {
    eprintln!("listenfd_server: {msg}");
    exit(1);
}

fn notify(path: &str, msg: &str) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let sock = UnixDatagram::unbound()?;
    match path.strip_prefix('@') {
        Some(name) => {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg.as_bytes(), &addr)?
        }
        None => sock.send_to(msg.as_bytes(), path)?,
    };
    Ok(())
}

/// Decrements the in-flight count when a connection is done, even on panic.
struct InFlight;

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, SeqCst);
    }
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
                // Counted before the thread exists, so that main never sees
                // zero while an accepted connection is unanswered.
                IN_FLIGHT.fetch_add(1, SeqCst);
                let guard = InFlight;
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
    let setup = conn
        .set_nonblocking(false)
        .and_then(|()| conn.set_read_timeout(Some(HEAD_TIMEOUT)))
        .and_then(|()| conn.set_write_timeout(Some(HEAD_TIMEOUT)));
    if setup.is_err() || !read_head(&mut conn) {
        return;
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    if conn.write_all(response.as_bytes()).is_err() || conn.shutdown(Shutdown::Write).is_err() {
        return;
    }
    // Closing with unread input sends RST, which can destroy the response
    // before the client has read it: wait briefly for the client's close.
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut sink = [0u8; 1024];
    while Instant::now() < deadline && matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
}

/// Reads up to the end of the request head; false if it never came.
fn read_head(conn: &mut TcpStream) -> bool {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while head.len() < MAX_HEAD {
        match conn.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return true;
        }
    }
    false
}
