//! `--ready` modes and the polled probes (tcp, http, exec).
//!
//! Probes never block the event loop: tcp and http use a non-blocking
//! connect whose fd joins the loop's poll set, and exec probes are child
//! processes whose exit arrives with SIGCHLD like any other. Attempts start
//! a few milliseconds apart and back off to a few hundred.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::signal::{killpg, Signal};
use nix::sys::socket::{
    bind, connect, getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
};
use nix::unistd::Pid;

use crate::env::Vars;
use crate::shell;
use crate::sockets::Sockets;
use crate::supervisor::{ReadyPolicy, ReadySource, Waiting};

mod accept;
mod suspect;

const FIRST_INTERVAL: Duration = Duration::from_millis(5);
const MAX_INTERVAL: Duration = Duration::from_millis(300);
/// A tcp or http attempt that has not answered by then is abandoned.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    Notify,
    Delay(Duration),
    Tcp(SocketAddr),
    Http {
        addr: SocketAddr,
        authority: String,
        path: String,
    },
    Exec(String),
    /// The candidate has accepted a connection on each steered socket.
    Accept,
}

impl Mode {
    pub fn policy(mode: Option<&Mode>) -> ReadyPolicy {
        match mode {
            None => ReadyPolicy::Auto,
            Some(Mode::Notify) => ReadyPolicy::Notify,
            Some(Mode::Delay(d)) => ReadyPolicy::Delay(*d),
            Some(Mode::Accept) => ReadyPolicy::Accept,
            Some(_) => ReadyPolicy::Probe,
        }
    }
}

/// Resolved once, when the flag is parsed: a name lookup inside the event
/// loop could stall signal handling for as long as DNS takes.
fn probe_addr(a: &str) -> Result<SocketAddr, String> {
    crate::listen::host_port(a, "127.0.0.1")
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        if s == "notify" {
            Ok(Mode::Notify)
        } else if s == "accept" {
            Ok(Mode::Accept)
        } else if let Some(d) = s.strip_prefix("delay:") {
            crate::units::parse_duration(d).map(Mode::Delay)
        } else if let Some(a) = s.strip_prefix("tcp:") {
            Ok(Mode::Tcp(probe_addr(a)?))
        } else if let Some(rest) = s.strip_prefix("http://") {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            Ok(Mode::Http {
                addr: probe_addr(authority)?,
                authority: authority.to_string(),
                path: path.to_string(),
            })
        } else if let Some(c) = s.strip_prefix("exec:") {
            if c.trim().is_empty() {
                return Err("exec: needs a command".into());
            }
            Ok(Mode::Exec(c.to_string()))
        } else {
            Err(format!(
                "unknown mode '{s}'; use notify, accept, delay:DURATION, tcp:HOST:PORT, http://HOST:PORT/PATH or exec:COMMAND"
            ))
        }
    }
}

enum Attempt {
    Idle { next: Instant },
    Connecting { stream: TcpStream, until: Instant },
    Reading { stream: TcpStream, until: Instant, buf: Vec<u8> },
    Running { pid: i32 },
}

/// One candidate's probe: repeated attempts until one succeeds.
pub struct Probe {
    mode: Mode,
    gen: u32,
    interval: Duration,
    attempt: Attempt,
    verbose: bool,
    /// An exec probe's environment and working directory.
    env: Vars,
    dir: Option<std::path::PathBuf>,
    /// Why the last attempt failed.
    last: Option<String>,
    /// `accept`'s probe connections, one per steered socket.
    accept: Option<accept::Accept>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Attempt::Running { pid } = self.attempt {
            // The exit is reaped by the loop's waitpid(-1) like any orphan.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// A non-blocking connect to `addr`. When `addr` reaches a steered socket
/// graceexec serves, the connection leaves from a port of its own, routed
/// to generation `gen`'s socket before the SYN goes out: a probe of the
/// shared port then reaches the candidate, not the generation serving.
/// Returns the routed port, if any.
pub(crate) fn routed_connect(
    addr: SocketAddr,
    gen: u32,
    sockets: &mut Sockets,
) -> std::io::Result<(TcpStream, Option<u16>)> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd =
        socket(family, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
    let mut routed = None;
    if sockets.steers(addr) {
        let any: SocketAddr = match addr {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        bind(fd.as_raw_fd(), &SockaddrStorage::from(any))?;
        let port = TcpStream::from(fd.try_clone()?).local_addr()?.port();
        sockets.route_probe(port, gen);
        routed = Some(port);
    }
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
        Ok(()) | Err(Errno::EINPROGRESS) => Ok((TcpStream::from(fd), routed)),
        Err(e) => {
            if let Some(p) = routed {
                sockets.unroute_probe(p);
            }
            Err(e.into())
        }
    }
}

impl Probe {
    /// `env` and `dir` are what an exec probe runs with.
    pub fn new(
        mode: Mode,
        gen: u32,
        now: Instant,
        verbose: bool,
        (env, dir): (Vars, Option<std::path::PathBuf>),
        sockets: &Sockets,
    ) -> Probe {
        let attempt = Attempt::Idle { next: now };
        let accept = (mode == Mode::Accept).then(|| accept::Accept::new(sockets, now));
        let interval = FIRST_INTERVAL;
        Probe { mode, gen, interval, attempt, verbose, env, dir, last: None, accept }
    }

    /// What readiness it proves.
    pub fn source(&self) -> ReadySource {
        match self.mode {
            Mode::Accept => ReadySource::Accept,
            _ => ReadySource::Probe,
        }
    }

    /// Why it is not ready yet: the last attempt's failure.
    pub fn last_failure(&self) -> Option<Waiting> {
        match &self.accept {
            Some(a) => a.waiting(),
            None => self.last.clone().map(Waiting::Probe),
        }
    }

    /// With `accept`: what the generation's processes (group `leader`, main
    /// process `main`) do instead of accepting, for `last_failure`.
    pub fn look(&mut self, now: Instant, leader: i32, main: i32) {
        if let Some(a) = self.accept.as_mut() {
            a.look(now, self.gen, (leader, main), self.verbose);
        }
    }

    /// The fds and events to poll for, while attempts wait on the network.
    pub fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        if let Some(a) = &self.accept {
            return a.poll_fds();
        }
        match &self.attempt {
            Attempt::Connecting { stream, .. } => vec![(stream.as_fd(), PollFlags::POLLOUT)],
            Attempt::Reading { stream, .. } => vec![(stream.as_fd(), PollFlags::POLLIN)],
            _ => Vec::new(),
        }
    }

    /// When `advance` must run next, whatever the fd does.
    pub fn wake_at(&self) -> Option<Instant> {
        if let Some(a) = &self.accept {
            return a.wake_at();
        }
        match &self.attempt {
            Attempt::Idle { next } => Some(*next),
            Attempt::Connecting { until, .. } | Attempt::Reading { until, .. } => Some(*until),
            Attempt::Running { .. } => None,
        }
    }

    /// The exec probe's process, if one runs.
    pub fn running_pid(&self) -> Option<i32> {
        match self.attempt {
            Attempt::Running { pid } => Some(pid),
            _ => None,
        }
    }

    fn retry(&mut self, now: Instant, why: &str) {
        self.last = Some(why.to_string());
        if self.verbose {
            crate::log::debug(&format!("generation {} probe: {why}", self.gen));
        }
        self.attempt = Attempt::Idle { next: now + self.interval };
        self.interval = (self.interval * 2).min(MAX_INTERVAL);
    }

    /// The exec probe exited: ready if it exited 0.
    pub fn exec_finished(&mut self, now: Instant, success: bool) -> bool {
        if success {
            return true;
        }
        self.retry(now, "command failed");
        false
    }

    /// Move the attempt on; `fd_ready` says whether poll reported its fd.
    /// True once the candidate is ready.
    pub fn advance(&mut self, now: Instant, fd_ready: bool, sockets: &mut Sockets) -> bool {
        if let Some(a) = &mut self.accept {
            return a.advance(now, self.gen, sockets);
        }
        let before = matches!(self.attempt, Attempt::Connecting { .. } | Attempt::Reading { .. });
        let ready = self.step(now, fd_ready, sockets);
        let after = matches!(self.attempt, Attempt::Connecting { .. } | Attempt::Reading { .. });
        // A routed attempt that is over needs its route no more.
        if before && (ready || !after) {
            sockets.unroute_probes_of(self.gen);
        }
        ready
    }

    fn step(&mut self, now: Instant, fd_ready: bool, sockets: &mut Sockets) -> bool {
        match std::mem::replace(&mut self.attempt, Attempt::Idle { next: now }) {
            Attempt::Idle { next } if now < next => self.attempt = Attempt::Idle { next },
            Attempt::Idle { .. } => self.begin(now, sockets),
            // SO_ERROR is 0 while a connect is still in progress too: only
            // POLLOUT says it has finished (connect(2), EINPROGRESS).
            Attempt::Connecting { stream, until } if !fd_ready => {
                if now >= until {
                    self.retry(now, "connect timed out");
                } else {
                    self.attempt = Attempt::Connecting { stream, until };
                }
            }
            Attempt::Connecting { stream, until } => {
                match getsockopt(&stream, sockopt::SocketError) {
                    Ok(0) => match &self.mode {
                        Mode::Http { authority, path, .. } => {
                            let req = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
                            // A request this small fits an empty socket buffer.
                            match (&stream).write(req.as_bytes()) {
                                Ok(n) if n == req.len() => {
                                    self.attempt =
                                        Attempt::Reading { stream, until, buf: Vec::new() }
                                }
                                _ => self.retry(now, "could not send the request"),
                            }
                        }
                        _ => return true,
                    },
                    Ok(e) => self.retry(now, &std::io::Error::from_raw_os_error(e).to_string()),
                    Err(e) => self.retry(now, &e.to_string()),
                }
            }
            Attempt::Reading { stream, until, mut buf } => {
                let mut chunk = [0u8; 512];
                match (&stream).read(&mut chunk) {
                    Ok(n) if n > 0 && buf.len() < 4096 => {
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(code) = status_code(&buf) {
                            if (200..300).contains(&code) {
                                return true;
                            }
                            self.retry(now, &format!("HTTP status {code}"));
                        } else {
                            self.attempt = Attempt::Reading { stream, until, buf };
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock && now < until => {
                        self.attempt = Attempt::Reading { stream, until, buf }
                    }
                    Ok(_) => self.retry(now, "no HTTP status line"),
                    Err(e) => self.retry(now, &e.to_string()),
                }
            }
            running @ Attempt::Running { .. } => self.attempt = running,
        }
        false
    }

    fn begin(&mut self, now: Instant, sockets: &mut Sockets) {
        let until = now + ATTEMPT_TIMEOUT;
        let addr = match &self.mode {
            Mode::Tcp(a) | Mode::Http { addr: a, .. } => *a,
            Mode::Exec(cmd) => {
                let err = if self.verbose { shell::Out::Inherit } else { shell::Out::Null };
                let dir = self.dir.as_deref();
                match shell::spawn(cmd, &self.env, dir, shell::Out::Null, err) {
                    Ok(pid) => self.attempt = Attempt::Running { pid: pid.as_raw() },
                    Err(e) => self.retry(now, &format!("{e:#}")),
                }
                return;
            }
            _ => return,
        };
        match routed_connect(addr, self.gen, sockets) {
            Ok((stream, _)) => self.attempt = Attempt::Connecting { stream, until },
            Err(e) => self.retry(now, &e.to_string()),
        }
    }
}

/// The status code of an HTTP response head, once its first line is in.
fn status_code(buf: &[u8]) -> Option<u16> {
    let line_end = buf.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&buf[..line_end]).ok()?;
    let mut parts = line.split_whitespace();
    let proto = parts.next()?;
    if !proto.starts_with("HTTP/") {
        return Some(0);
    }
    Some(parts.next()?.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes() {
        assert_eq!("notify".parse(), Ok(Mode::Notify));
        assert_eq!("delay:1500ms".parse(), Ok(Mode::Delay(Duration::from_millis(1500))));
        let loopback = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
        assert_eq!("tcp:127.0.0.1:80".parse(), Ok(Mode::Tcp(loopback(80))));
        assert_eq!("tcp:80".parse(), Ok(Mode::Tcp(loopback(80))));
        assert_eq!(
            "http://localhost:8080/health".parse(),
            Ok(Mode::Http {
                addr: loopback(8080),
                authority: "localhost:8080".into(),
                path: "/health".into()
            })
        );
        assert_eq!("exec:true".parse(), Ok(Mode::Exec("true".into())));
        for bad in ["", "delay:soon", "delay:9999y", "tcp:x", "http://x/", "exec:", "ready"] {
            assert!(bad.parse::<Mode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.1 503"), None);
        assert_eq!(status_code(b"SSH-2.0\r\n"), Some(0));
    }
}
