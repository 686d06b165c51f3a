//! `--listen` addresses: parsing, binding, and adopting systemd's sockets.
//!
//! Sockets are bound once and held for graceexec's whole life, so
//! connections that arrive while one server hands over to the next wait in
//! the kernel's accept queue instead of being refused. A shared socket
//! (UDP, unix, adopted, `--handover shared`) is the same open file
//! description in every generation; a steered TCP address is a pool of
//! sockets instead (sockets.rs, steer/pool.rs).

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{
    bind, getsockname, getsockopt, listen, setsockopt, socket, sockopt, AddressFamily, Backlog,
    SockFlag, SockType, SockaddrStorage, UnixAddr,
};
use nix::sys::stat::{umask, Mode};

use crate::sockfile::{clear_stale, Existing, SocketFile};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    Unix(PathBuf),
    Abstract(String),
}

/// One `--listen [NAME=]ADDR` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub name: Option<String>,
    pub addr: Addr,
}

/// A bound socket with its LISTEN_FDNAMES name. A unix socket file that
/// graceexec created is removed when this is dropped.
#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub fd: OwnedFd,
    /// The address actually bound, as logged (port 0 resolved).
    pub shown: String,
    _created: Option<SocketFile>,
}

/// systemd's rule for LISTEN_FDNAMES entries (sd_listen_fds_with_names(3)):
/// printable ASCII without ':', at most 255 characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// Turns a HOST:PORT that is not an IP literal into addresses.
pub type Resolver<'a> = &'a dyn Fn(&str) -> std::io::Result<Vec<SocketAddr>>;

/// The system's resolver (getaddrinfo).
pub fn system_resolver(text: &str) -> std::io::Result<Vec<SocketAddr>> {
    Ok(text.to_socket_addrs()?.collect())
}

/// HOST:PORT, :PORT or PORT (on `default_host`). A name is resolved here,
/// once, preferring IPv4: glibc lists ::1 first for localhost, and a
/// `localhost:8080` that binds only ::1 would refuse 127.0.0.1 clients.
pub fn host_port(s: &str, default_host: &str) -> Result<SocketAddr, String> {
    host_port_with(s, default_host, &system_resolver)
}

/// `host_port` with the resolver passed in, so that the parser can be
/// tested on any input without a DNS query.
pub fn host_port_with(
    s: &str,
    default_host: &str,
    resolve: Resolver,
) -> Result<SocketAddr, String> {
    let text = if s.starts_with(':') {
        format!("{default_host}{s}")
    } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        format!("{default_host}:{s}")
    } else {
        s.to_string()
    };
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("'{s}' has no port; write HOST:PORT, :PORT or PORT"))?;
    port.parse::<u16>().map_err(|_| format!("'{port}' is not a port number (0-65535)"))?;
    let addrs = resolve(&text).map_err(|e| format!("cannot resolve '{host}': {e}"))?;
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("'{host}' resolves to no address"))
}

impl FromStr for Spec {
    type Err = String;

    fn from_str(arg: &str) -> Result<Spec, String> {
        Spec::parse_with(arg, &system_resolver)
    }
}

impl Spec {
    /// `[NAME=]ADDR`, host names resolved by `resolve`.
    pub fn parse_with(arg: &str, resolve: Resolver) -> Result<Spec, String> {
        let (name, rest) = match arg.split_once('=') {
            Some((n, r)) if !n.contains(':') && !n.contains('/') => {
                if !valid_name(n) {
                    return Err(format!(
                        "'{n}' is not a valid socket name (printable ASCII without ':', at most 255)"
                    ));
                }
                (Some(n.to_string()), r)
            }
            _ => (None, arg),
        };
        let addr = if let Some(p) = rest.strip_prefix("unix:") {
            if let Some(abs) = p.strip_prefix('@') {
                if abs.is_empty() {
                    return Err("unix:@ needs a name after '@'".into());
                }
                Addr::Abstract(abs.to_string())
            } else if p.is_empty() {
                return Err("unix: needs a path, as in unix:/run/app.sock".into());
            } else if p.starts_with("//") {
                // Not a URL: unix://run/app.sock would bind //run/app.sock,
                // and unix:///run/app.sock ///run/app.sock.
                return Err(format!(
                    "'{rest}': write unix:/path with one slash, as in unix:/run/app.sock"
                ));
            } else {
                Addr::Unix(PathBuf::from(p))
            }
        } else if let Some(hp) = rest.strip_prefix("tcp://") {
            Addr::Tcp(host_port_with(hp, "0.0.0.0", resolve)?)
        } else if let Some(hp) = rest.strip_prefix("udp://") {
            Addr::Udp(host_port_with(hp, "0.0.0.0", resolve)?)
        } else if rest.contains("://") {
            return Err(format!(
                "unknown scheme in '{rest}'; use tcp://, udp://, unix: or HOST:PORT"
            ));
        } else {
            Addr::Tcp(host_port_with(rest, "0.0.0.0", resolve)?)
        };
        Ok(Spec { name, addr })
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "{a}"),
            Addr::Udp(a) => write!(f, "udp://{a}"),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
            Addr::Abstract(n) => write!(f, "unix:@{n}"),
        }
    }
}

fn default_name(addr: &Addr) -> String {
    let raw = match addr {
        Addr::Tcp(a) => format!("tcp-{}", a.port()),
        Addr::Udp(a) => format!("udp-{}", a.port()),
        Addr::Unix(p) => {
            format!("unix-{}", p.file_name().map(|f| f.to_string_lossy()).unwrap_or_default())
        }
        Addr::Abstract(n) => format!("unix-{n}"),
    };
    let name: String = raw
        .chars()
        .map(|c| if c.is_ascii_graphic() && c != ':' { c } else { '_' })
        .take(255)
        .collect();
    name
}

/// `cannot bind ADDR: OS error; what to do`, as every bind failure reads.
pub fn bind_failed(addr: &Addr, e: &std::io::Error) -> anyhow::Error {
    let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
    anyhow!("cannot bind {addr}: {}{}", os(errno), hint(errno))
}

fn hint(e: Errno) -> &'static str {
    match e {
        Errno::EADDRINUSE => "; is another server on it? stop it or choose another address",
        Errno::EACCES => "; ports below 1024 need root or CAP_NET_BIND_SERVICE",
        Errno::EADDRNOTAVAIL => "; that address is not on this machine",
        _ => "",
    }
}

fn os(e: Errno) -> std::io::Error {
    std::io::Error::from(e)
}

/// Bind one socket. Errors read `cannot bind ADDR: OS error; hint`.
pub fn bind_spec(spec: &Spec, backlog: i32, unix_mode: Option<u32>) -> Result<Listener> {
    let fail = |e: Errno| anyhow!("cannot bind {}: {}{}", spec.addr, os(e), hint(e));
    let (fd, shown) = match &spec.addr {
        Addr::Tcp(a) | Addr::Udp(a) => {
            let family = if a.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
            let ty = if matches!(spec.addr, Addr::Tcp(_)) {
                SockType::Stream
            } else {
                SockType::Datagram
            };
            let fd = socket(family, ty, SockFlag::SOCK_CLOEXEC, None).map_err(fail)?;
            // TCP only: on UDP, SO_REUSEADDR lets a second socket bind the
            // same address, and a port in use would go unnoticed.
            if ty == SockType::Stream {
                setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(fail)?;
            }
            if a.is_ipv6() {
                setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(fail)?;
            }
            bind(fd.as_raw_fd(), &SockaddrStorage::from(*a)).map_err(fail)?;
            if ty == SockType::Stream {
                listen(&fd, Backlog::new(backlog).map_err(fail)?).map_err(fail)?;
            }
            let local = local_inet(&fd).unwrap_or(*a);
            let shown = match spec.addr {
                Addr::Tcp(_) => Addr::Tcp(local),
                _ => Addr::Udp(local),
            };
            (fd, shown)
        }
        Addr::Abstract(n) => {
            let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
                .map_err(fail)?;
            let ua = UnixAddr::new_abstract(n.as_bytes()).map_err(fail)?;
            bind(fd.as_raw_fd(), &ua).map_err(fail)?;
            listen(&fd, Backlog::new(backlog).map_err(fail)?).map_err(fail)?;
            (fd, spec.addr.clone())
        }
        Addr::Unix(path) => {
            let hint = "remove it or choose another path";
            let existing =
                clear_stale(path, hint).with_context(|| format!("cannot bind {}", spec.addr))?;
            if let Existing::Live(_) = existing {
                bail!("cannot bind {}: a running server answers on it; stop it or choose another path", spec.addr);
            }
            let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
                .map_err(fail)?;
            let ua = UnixAddr::new(path.as_path()).map_err(fail)?;
            // The mode is set through the umask so the file never exists
            // with looser permissions; graceexec is single-threaded here.
            let old = unix_mode.map(|m| umask(Mode::from_bits_truncate(!m & 0o777)));
            let r = bind(fd.as_raw_fd(), &ua);
            if let Some(old) = old {
                umask(old);
            }
            r.map_err(fail)?;
            // From here on, dropping the listener removes the file, so a
            // failed listen() leaves nothing behind.
            let l = Listener {
                name: spec.name.clone().unwrap_or_else(|| default_name(&spec.addr)),
                fd,
                shown: spec.addr.to_string(),
                _created: Some(
                    SocketFile::bound(path)
                        .with_context(|| format!("cannot bind {}", spec.addr))?,
                ),
            };
            listen(&l.fd, Backlog::new(backlog).map_err(fail)?).map_err(fail)?;
            return Ok(l);
        }
    };
    let name = spec.name.clone().unwrap_or_else(|| default_name(&shown));
    Ok(Listener { name, fd, shown: shown.to_string(), _created: None })
}

/// SERVER_STARTER_PORT as Server::Starter sets it: `ADDR=FD` pairs joined
/// by ';', where ADDR is the port alone for a wildcard address (what
/// `start_server --port=8080` produces), HOST:PORT otherwise, or a unix
/// socket's path; FD counts from 3 in the order of the sockets.
pub fn server_starter_port(sockets: &[(BorrowedFd<'_>, &str)]) -> String {
    let mut parts = Vec::with_capacity(sockets.len());
    for (i, (sock, shown)) in sockets.iter().enumerate() {
        let fd = 3 + i;
        let addr = match local_inet(sock) {
            Some(a) if a.ip().is_unspecified() => a.port().to_string(),
            Some(a) => a.to_string(),
            None => shown.strip_prefix("unix:").unwrap_or(shown).to_string(),
        };
        parts.push(format!("{addr}={fd}"));
    }
    parts.join(";")
}

fn local_inet(fd: &impl AsRawFd) -> Option<SocketAddr> {
    let ss: SockaddrStorage = getsockname(fd.as_raw_fd()).ok()?;
    if let Some(v4) = ss.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    ss.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Sockets passed to graceexec itself by systemd socket activation
/// (sd_listen_fds(3)): only when LISTEN_PID names this process.
pub fn from_systemd() -> Result<Option<Vec<Listener>>> {
    let pid = std::env::var("LISTEN_PID").ok();
    if pid.as_deref() != Some(&std::process::id().to_string()) {
        return Ok(None);
    }
    let count: usize = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            anyhow!("LISTEN_PID names graceexec but LISTEN_FDS is not a positive number")
        })?;
    let names: Vec<String> = match std::env::var("LISTEN_FDNAMES") {
        Ok(n) if !n.is_empty() => n.split(':').map(str::to_string).collect(),
        _ => vec!["unknown".to_string(); count],
    };
    if names.len() != count {
        bail!("LISTEN_FDNAMES has {} names for LISTEN_FDS={count}", names.len());
    }
    let mut out = Vec::with_capacity(count);
    for (i, name) in names.into_iter().enumerate() {
        let fd = adopt(3 + i as i32)?;
        let shown = describe(&fd);
        out.push(Listener { name, fd, shown, _created: None });
    }
    Ok(Some(out))
}

/// Take an inherited socket: an open socket, made close-on-exec, so that
/// children get it only through the explicit layout.
fn adopt(fd: i32) -> Result<OwnedFd> {
    crate::sys::claim_fd(fd, |b| {
        let stat = nix::sys::stat::fstat(b)?;
        if stat.st_mode & nix::libc::S_IFMT != nix::libc::S_IFSOCK {
            bail!("inherited fd {fd} is not a socket");
        }
        let flags = FdFlag::from_bits_truncate(fcntl(b, FcntlArg::F_GETFD)?);
        fcntl(b, FcntlArg::F_SETFD(flags | FdFlag::FD_CLOEXEC))?;
        Ok(())
    })
    .map_err(|e| anyhow!("inherited {e:#}"))
}

/// A human-readable address for an adopted socket.
fn describe(fd: &OwnedFd) -> String {
    let ty = getsockopt(&fd.as_fd(), sockopt::SockType).ok();
    let ss: Option<SockaddrStorage> = getsockname(fd.as_raw_fd()).ok();
    let inet = local_inet(fd);
    match (ty, inet, ss.as_ref().and_then(|s| s.as_unix_addr())) {
        (Some(SockType::Datagram), Some(a), _) => Addr::Udp(a).to_string(),
        (_, Some(a), _) => Addr::Tcp(a).to_string(),
        (_, _, Some(u)) => match (u.path(), u.as_abstract()) {
            (Some(p), _) => Addr::Unix(p.to_path_buf()).to_string(),
            (_, Some(a)) => format!("unix:@{}", String::from_utf8_lossy(a)),
            _ => "unix:(unnamed)".into(),
        },
        _ => format!("fd {}", fd.as_raw_fd()),
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests;

impl Listener {
    /// A TCP or UDP socket (what the file descriptor store keeps).
    pub fn is_inet(&self) -> bool {
        local_inet(&self.fd).is_some()
    }
}

mod carry;
mod stored;
pub use carry::ListenerOut;
pub use stored::{fits, take_stored};
