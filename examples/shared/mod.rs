//! What the example servers share: telling `NOTIFY_SOCKET`, reading a
//! request and answering it over TCP or unix connections alike, and
//! counting the connections still being answered so that a stop can drain
//! them.
//! Each server takes it in with `#[path = ".../shared/mod.rs"] mod shared;`;
//! cargo builds only `examples/*.rs` and `examples/*/main.rs` as examples,
//! so this directory is not one.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Sends `msg` to the sd_notify socket at `path`; `@name` is an abstract
/// address, as sd_notify(3) has it.
pub fn notify(path: &str, msg: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    match path.strip_prefix('@') {
        Some(name) => sock.send_to_addr(msg.as_bytes(), &SocketAddr::from_abstract_name(name)?)?,
        None => sock.send_to(msg.as_bytes(), path)?,
    };
    Ok(())
}

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// One accepted connection not yet answered. Dropping it uncounts it, even
/// if its handler panics or its thread never starts.
pub struct InFlight(());

impl InFlight {
    /// Counts a connection. Call it before the thread that answers it
    /// exists, so that a drain never sees zero while an accepted
    /// connection is unanswered.
    pub fn begin() -> InFlight {
        IN_FLIGHT.fetch_add(1, SeqCst);
        InFlight(())
    }

    pub fn count() -> usize {
        IN_FLIGHT.load(SeqCst)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, SeqCst);
    }
}

/// Waits until no connection is in flight, or `limit` has passed
/// (`Duration::MAX`: however long it takes).
pub fn drain(limit: Duration) {
    let deadline = Instant::now().checked_add(limit);
    while InFlight::count() > 0 && deadline.map_or(true, |d| Instant::now() < d) {
        sleep(Duration::from_millis(5));
    }
}

/// What a handler needs from TCP and unix connections alike.
pub trait Conn: Read + Write + Send + 'static {
    fn blocking_with_timeouts(&self, timeout: Duration) -> io::Result<()>;
    fn close_write(&self) -> io::Result<()>;
}

macro_rules! impl_conn {
    ($conn:ty) => {
        impl Conn for $conn {
            fn blocking_with_timeouts(&self, timeout: Duration) -> io::Result<()> {
                self.set_nonblocking(false)?;
                self.set_read_timeout(Some(timeout))?;
                self.set_write_timeout(Some(timeout))
            }
            fn close_write(&self) -> io::Result<()> {
                self.shutdown(Shutdown::Write)
            }
        }
    };
}
impl_conn!(TcpStream);
impl_conn!(UnixStream);

const MAX_HEAD: usize = 8 * 1024;

/// The request line, once the whole request head (at most 8 KiB) has come
/// within `timeout`; None for anything else, such as a bare connect and
/// close (a readiness probe), which needs no answer.
pub fn read_request_line<C: Conn>(conn: &mut C, timeout: Duration) -> Option<String> {
    conn.blocking_with_timeouts(timeout).ok()?;
    let start = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while buf.len() < MAX_HEAD && start.elapsed() < timeout {
        match conn.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]);
            return Some(head.lines().next().unwrap_or("").to_string());
        }
    }
    None
}

/// Writes `response` and closes the connection gracefully.
pub fn respond<C: Conn>(conn: &mut C, response: &str) {
    if conn.write_all(response.as_bytes()).is_err() || conn.close_write().is_err() {
        return;
    }
    // Closing a TCP socket with unread input sends RST, which can destroy
    // the response before the client reads it: wait briefly for the
    // client's close.
    let _ = conn.blocking_with_timeouts(Duration::from_millis(100));
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut sink = [0u8; 1024];
    while Instant::now() < deadline && matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
}
