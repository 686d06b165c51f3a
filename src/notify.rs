//! sd_notify(3), both sides: one receiving datagram socket per generation,
//! and, when graceexec itself runs under systemd, the sending side.
//!
//! A socket per generation means a READY=1 can never be credited to the
//! wrong one by mistake: a draining server, or a worker it forked, may
//! still hold an older NOTIFY_SOCKET, but it can only talk about its own
//! generation. On purpose is another matter: every generation runs as the
//! same user and can list the directory, so the random part of a socket's
//! name only stops guessing. What stops a lie is who sent it: each socket
//! has SO_PASSCRED, so every datagram comes with the sender's pid, uid and
//! gid as the kernel saw them (unix(7); an unprivileged sender cannot
//! claim another pid), and the event loop checks the pid.
//!
//! The sockets live in a private directory made by mkdtemp(3): its name
//! cannot be known, let alone taken, in advance, and it is 0700 from the
//! start. graceexec removes it when it exits.

use std::io::{IoSliceMut, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials};

use crate::log;

/// sun_path is 108 bytes including the NUL (unix(7)).
const SUN_PATH_MAX: usize = 107;

/// What a base directory must leave room for in sun_path.
const ROOM: usize = "/graceexec.XXXXXX".len() + "/notify-4294967295-0123456789abcdef.sock".len();

/// At most this many datagrams per `drain`, so a sender that floods its
/// socket cannot hold the loop: the rest stay queued, poll(2) reports the
/// socket readable again, and the loop serves everything else in between.
/// (The kernel queues net.unix.max_dgram_qlen datagrams per socket, 10
/// by default, so a well-behaved server never reaches the bound.)
pub const DRAIN_MAX: usize = 16;

/// systemd refuses longer notifications too (its NOTIFY_BUFFER_MAX); a
/// datagram cut at this size is dropped whole, never half-parsed.
const DATAGRAM_MAX: usize = 4096;

/// 16 hex digits nobody else can predict: /dev/urandom, or, where it
/// cannot be read (a bare chroot), SipHash under the random keys the
/// standard library takes from getrandom(2).
pub fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    let n = match read {
        Ok(()) => u64::from_ne_bytes(bytes),
        Err(_) => {
            use std::hash::BuildHasher;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            std::collections::hash_map::RandomState::new()
                .hash_one((now.map(|d| d.as_nanos()).unwrap_or(0), std::process::id()))
        }
    };
    format!("{n:016x}")
}

/// Where to try to make the directory, in order. Root prefers /run after
/// its runtime directory: only root can write there, it is never aged
/// like /tmp can be (systemd-tmpfiles cleans old entries of /tmp on many
/// distributions, which would take a long-lived instance's directory),
/// and the control socket already lives there. mkdtemp makes /tmp safe as
/// well, so /tmp stays the last resort.
fn bases(xdg: Option<PathBuf>, tmpdir: Option<PathBuf>, root: bool) -> Vec<PathBuf> {
    let set = |v: Option<PathBuf>| v.filter(|p| !p.as_os_str().is_empty());
    let mut out: Vec<PathBuf> = set(xdg).into_iter().collect();
    if root {
        out.push("/run".into());
    }
    out.extend(set(tmpdir));
    out.push("/tmp".into());
    out
}

/// The directory that holds the generations' notify sockets.
pub struct NotifyDir {
    path: PathBuf,
}

impl NotifyDir {
    pub fn create() -> Result<NotifyDir> {
        let var = |k| std::env::var_os(k).map(PathBuf::from);
        let root = nix::unistd::geteuid().is_root();
        NotifyDir::create_in(bases(var("XDG_RUNTIME_DIR"), var("TMPDIR"), root))
    }

    /// In the first of `bases` that is short enough and where mkdtemp
    /// succeeds.
    fn create_in(bases: Vec<PathBuf>) -> Result<NotifyDir> {
        let mut tried = Vec::new();
        for base in bases {
            if base.as_os_str().len() + ROOM > SUN_PATH_MAX {
                tried.push(format!("{} is too long for a socket path", base.display()));
                continue;
            }
            match nix::unistd::mkdtemp(&base.join("graceexec.XXXXXX")) {
                Ok(path) => return Ok(NotifyDir { path }),
                Err(e) => tried.push(format!("{}: {}", base.display(), e.desc())),
            }
        }
        anyhow::bail!(
            "no directory for notify sockets ({}); set TMPDIR to a short path graceexec can write",
            tried.join("; ")
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new socket for generation `gen`, named so that no other
    /// generation can guess it, with sender credentials switched on before
    /// it has a name (so no datagram can arrive without them).
    pub fn socket(&self, gen: u32) -> Result<NotifySocket> {
        use socket::{AddressFamily, SockFlag, SockType};
        let path = self.path.join(format!("notify-{gen}-{}.sock", random_hex()));
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let bound = (|| -> nix::Result<UnixDatagram> {
            let fd = socket::socket(AddressFamily::Unix, SockType::Datagram, flags, None)?;
            socket::setsockopt(&fd, sockopt::PassCred, &true)?;
            socket::bind(fd.as_raw_fd(), &UnixAddr::new(&path)?)?;
            Ok(UnixDatagram::from(fd))
        })();
        let sock = bound.with_context(|| format!("cannot bind {}", path.display()))?;
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
    /// `MAINPID=N`, N a decimal pid above 0; the last valid one wins.
    pub main_pid: Option<i32>,
    /// Assignments of a known key with a value graceexec refuses, such as
    /// `MAINPID=0` or `MAINPID=abc`, as sent.
    pub refused: Vec<String>,
    pub other: Vec<String>,
}

/// Who sent a datagram, from SCM_CREDENTIALS: the kernel's view, in
/// graceexec's pid namespace (pid 0 if the sender is outside it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// One datagram: what it said and who said it. `sender` is None when the
/// kernel gave no credentials, which with SO_PASSCRED happens only when the
/// datagram also carried file descriptors: the control buffer has room for
/// the credentials alone, so the kernel closes such descriptors instead of
/// installing them in graceexec, reports the buffer as cut short, and
/// nothing in it is vouched for. Treat None as an unknown sender.
#[derive(Debug, PartialEq, Eq)]
pub struct Received {
    pub message: Message,
    pub sender: Option<Sender>,
}

fn parse_pid(v: &str) -> Option<i32> {
    let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| v.parse::<i32>().ok()).flatten().filter(|&p| p > 0)
}

/// Newline-separated KEY=VALUE assignments (sd_notify(3)).
pub fn parse(datagram: &[u8]) -> Message {
    let text = String::from_utf8_lossy(datagram);
    let mut m = Message::default();
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        match line.split_once('=') {
            Some(("READY", "1")) => m.ready = true,
            Some(("STATUS", s)) => m.status = Some(s.to_string()),
            Some(("MAINPID", v)) => match parse_pid(v) {
                Some(pid) => m.main_pid = Some(pid),
                None => m.refused.push(line.to_string()),
            },
            _ => m.other.push(line.to_string()),
        }
    }
    m
}

impl NotifySocket {
    /// The datagrams waiting on the socket, at most `DRAIN_MAX`, parsed,
    /// with their senders. Never blocks.
    pub fn drain(&self) -> Vec<Received> {
        self.drain_at_most(DRAIN_MAX)
    }

    fn drain_at_most(&self, max: usize) -> Vec<Received> {
        let mut out = Vec::new();
        let mut buf = [0u8; DATAGRAM_MAX];
        for _ in 0..max {
            let Some((n, sender, cut)) = self.receive(&mut buf) else { break };
            if cut {
                log::debug(&format!(
                    "ignored a notify message over {DATAGRAM_MAX} bytes on {}",
                    self.path.display()
                ));
                continue;
            }
            out.push(Received { message: parse(&buf[..n]), sender });
        }
        out
    }

    /// One datagram into `buf`: its length, its sender, whether it was
    /// cut. None when nothing is waiting (or the socket failed: the next
    /// poll says so again, and the generation's exit ends it).
    fn receive(&self, buf: &mut [u8]) -> Option<(usize, Option<Sender>, bool)> {
        let mut iov = [IoSliceMut::new(buf)];
        let mut cmsg = nix::cmsg_space!(UnixCredentials);
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
        let r =
            socket::recvmsg::<()>(self.sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags).ok()?;
        // cmsgs() refuses a buffer the kernel cut short (MSG_CTRUNC).
        let sender = r.cmsgs().ok().and_then(|mut all| {
            all.find_map(|c| match c {
                ControlMessageOwned::ScmCredentials(c) => {
                    Some(Sender { pid: c.pid(), uid: c.uid(), gid: c.gid() })
                }
                _ => None,
            })
        });
        Some((r.bytes, sender, r.flags.contains(MsgFlags::MSG_TRUNC)))
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
        // A service manager that does not read (its queue full) must not
        // stall the loop: the message is dropped, with a warning.
        sock.set_nonblocking(true).context("cannot use a socket for NOTIFY_SOCKET")?;
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

/// The notify directory and sockets across `graceexec upgrade`.
impl NotifyDir {
    pub fn adopt(path: PathBuf) -> NotifyDir {
        NotifyDir { path }
    }
}

impl NotifySocket {
    /// Its fd (for the document) and path.
    pub fn carry(&self, handed: &mut crate::carry::Handed) -> (i32, PathBuf) {
        (handed.fd(std::os::fd::AsFd::as_fd(&self.sock)), self.path.clone())
    }

    pub fn adopt(fd: i32, path: PathBuf) -> Result<NotifySocket> {
        let fd = crate::carry::take_socket(fd, "a notify socket")?;
        Ok(NotifySocket { sock: UnixDatagram::from(fd), path })
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests;
