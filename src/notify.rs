//! sd_notify(3), both sides: one receiving datagram socket per generation,
//! and, when graceexec itself runs under systemd, the sending side.
//!
//! A socket per generation means a READY=1 can never be credited to the
//! wrong one: a draining server, or a worker it forked, may still hold an
//! older NOTIFY_SOCKET, but it can only talk about its own generation.
//! The sockets live in a private 0700 directory that graceexec removes
//! when it exits.

use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// sun_path is 108 bytes including the NUL (unix(7)).
const SUN_PATH_MAX: usize = 107;

/// The directory that holds the generations' notify sockets.
pub struct NotifyDir {
    path: PathBuf,
}

impl NotifyDir {
    pub fn create() -> Result<NotifyDir> {
        let mut bases: Vec<PathBuf> = Vec::new();
        for var in ["XDG_RUNTIME_DIR", "TMPDIR"] {
            if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
                bases.push(PathBuf::from(v));
            }
        }
        bases.push(PathBuf::from("/tmp"));
        let mut last_err = None;
        for base in bases {
            // Room for "/graceexec.PID.N/notify-GEN.sock".
            if base.as_os_str().len() + 60 > SUN_PATH_MAX {
                continue;
            }
            for n in 0..100u32 {
                let path = base.join(format!("graceexec.{}.{n}", std::process::id()));
                match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                    Ok(()) => return Ok(NotifyDir { path }),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => {
                        last_err = Some(
                            anyhow::Error::new(e)
                                .context(format!("cannot create {}", path.display())),
                        );
                        break;
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no directory for notify sockets")))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn socket(&self, gen: u32) -> Result<NotifySocket> {
        let path = self.path.join(format!("notify-{gen}.sock"));
        let _ = std::fs::remove_file(&path);
        let sock =
            UnixDatagram::bind(&path).with_context(|| format!("cannot bind {}", path.display()))?;
        sock.set_nonblocking(true)?;
        Ok(NotifySocket { sock, path })
    }
}

impl Drop for NotifyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub struct NotifySocket {
    pub sock: UnixDatagram,
    pub path: PathBuf,
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What one datagram said that graceexec acts on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub ready: bool,
    pub status: Option<String>,
    pub other: Vec<String>,
}

/// Newline-separated KEY=VALUE assignments (sd_notify(3)).
pub fn parse(datagram: &[u8]) -> Message {
    let text = String::from_utf8_lossy(datagram);
    let mut m = Message::default();
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        match line.split_once('=') {
            Some(("READY", "1")) => m.ready = true,
            Some(("STATUS", s)) => m.status = Some(s.to_string()),
            _ => m.other.push(line.to_string()),
        }
    }
    m
}

impl NotifySocket {
    /// Every datagram waiting on the socket, parsed.
    pub fn drain(&self) -> Vec<Message> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        while let Ok(n) = self.sock.recv(&mut buf) {
            out.push(parse(&buf[..n]));
        }
        out
    }
}

/// graceexec's own service manager, from the NOTIFY_SOCKET graceexec was
/// started with (Type=notify or Type=notify-reload).
pub struct SdNotify {
    sock: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
    shown: String,
}

impl SdNotify {
    /// None when NOTIFY_SOCKET is unset. A path, or "@name" for an
    /// abstract socket (sd_notify(3)). The variable is not passed on: each
    /// generation gets graceexec's own socket instead.
    pub fn from_env() -> Result<Option<SdNotify>> {
        use std::os::linux::net::SocketAddrExt;
        let Some(v) = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let shown = v.to_string_lossy().into_owned();
        let addr = match shown.strip_prefix('@') {
            Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()),
            None => std::os::unix::net::SocketAddr::from_pathname(&v),
        }
        .with_context(|| format!("NOTIFY_SOCKET={shown} is not a usable socket address"))?;
        let sock = UnixDatagram::unbound().context("cannot create a socket for NOTIFY_SOCKET")?;
        Ok(Some(SdNotify { sock, addr, shown }))
    }

    /// Send one message of newline-separated assignments. A failure is
    /// logged by the caller and never fatal: the service keeps serving.
    pub fn send(&self, msg: &str) -> std::io::Result<()> {
        self.sock.send_to_addr(msg.as_bytes(), &self.addr).map(|_| ())
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` wants it with
/// `RELOADING=1` (systemd.service(5), Type=notify-reload).
pub fn monotonic_usec() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_assignments() {
        let m = parse(b"READY=1\nSTATUS=warming up\nMAINPID=7\n");
        assert!(m.ready);
        assert_eq!(m.status.as_deref(), Some("warming up"));
        assert_eq!(m.other, vec!["MAINPID=7".to_string()]);
        assert!(!parse(b"READY=0").ready);
        assert!(!parse(b"XREADY=1").ready);
    }
}
