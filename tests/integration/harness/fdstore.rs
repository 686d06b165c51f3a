//! A stand-in for systemd's file descriptor store (sd_notify(3)
//! `FDSTORE=1`, `FDSTOREREMOVE=1`): it reads what graceexec sends to its
//! `NOTIFY_SOCKET`, holds the sockets as the service manager would, and
//! starts the next graceexec with them in `LISTEN_FDS`, named, as systemd
//! 252 does at a restart. It behaves as systemd 252 does where the tests
//! depend on it: a full store refuses (and closes) what comes next, the
//! same open socket is never stored twice, a removal drops every entry of
//! that name, and the newest entry is passed first.

use std::collections::BTreeMap;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::sync::atomic::AtomicBool;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};

use super::*;

/// A message's text and the fds it carried.
type Message = (String, Vec<OwnedFd>);

pub struct FakeStore {
    _dir: TempDir,
    path: String,
    max: usize,
    /// What the reader thread received and `read` has not taken in yet.
    inbox: Arc<Mutex<Vec<Message>>>,
    /// Set once the test looks: a busy store's reader starts then at the
    /// latest.
    looked: Arc<AtomicBool>,
    /// Oldest first.
    fds: Vec<(String, OwnedFd)>,
    /// Every message so far, in order, without the fds.
    pub messages: Vec<String>,
    /// Sockets refused because the store was full.
    pub refused: Vec<String>,
}

impl FakeStore {
    /// A store that holds at most `max` fds (`FileDescriptorStoreMax=`).
    /// A thread reads the socket as it fills, as the service manager does
    /// (a unix datagram socket queues only a few messages).
    pub fn new(max: usize) -> FakeStore {
        FakeStore::make(max, false)
    }

    /// A store whose manager is busy with other work until its socket's
    /// short queue is full (net.unix.max_dgram_qlen), and only then reads:
    /// what graceexec sends beyond that must wait for room, not be lost.
    /// Where the queue holds more than graceexec sends, it reads once the
    /// test first looks at the store.
    pub fn busy(max: usize) -> FakeStore {
        FakeStore::make(max, true)
    }

    fn make(max: usize, busy: bool) -> FakeStore {
        let dir = TempDir::new();
        let path = dir.path("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        // A sender connected to the store's socket is writable while the
        // socket's queue has room (unix_dgram_poll); it never sends.
        let probe = UnixDatagram::unbound().unwrap();
        probe.connect(&path).unwrap();
        let path = path.to_str().unwrap().to_string();
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let looked = Arc::new(AtomicBool::new(!busy));
        let (to, open) = (inbox.clone(), looked.clone());
        // Ends with the test process: it blocks in recvmsg until then.
        std::thread::spawn(move || {
            poll_until(LONG, || open.load(Ordering::SeqCst) || !writable(&probe));
            loop {
                let message = receive(&sock);
                to.lock().unwrap().push(message);
            }
        });
        FakeStore {
            _dir: dir,
            path,
            max,
            inbox,
            looked,
            fds: Vec::new(),
            messages: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// Take in every message received so far.
    pub fn read(&mut self) {
        self.looked.store(true, Ordering::SeqCst);
        let got = std::mem::take(&mut *self.inbox.lock().unwrap());
        for (text, fds) in got {
            self.take(&text, fds);
            self.messages.push(text);
        }
    }

    fn take(&mut self, text: &str, fds: Vec<OwnedFd>) {
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map(str::to_string);
        let name = field("FDNAME=").unwrap_or_else(|| "stored".into());
        if field("FDSTOREREMOVE=").as_deref() == Some("1") {
            self.fds.retain(|(n, _)| *n != name);
        }
        if field("FDSTORE=").as_deref() != Some("1") {
            return;
        }
        for fd in fds {
            if self.fds.iter().any(|(_, held)| same_socket(held, &fd)) {
                continue;
            }
            if self.fds.len() >= self.max {
                self.refused.push(name.clone());
                continue;
            }
            self.fds.push((name.clone(), fd));
        }
    }

    /// The names held, sorted.
    pub fn names(&mut self) -> Vec<String> {
        self.read();
        let mut n: Vec<String> = self.fds.iter().map(|(n, _)| n.clone()).collect();
        n.sort();
        n
    }

    /// Wait until the store holds exactly `n` sockets.
    pub fn wait_holding(&mut self, n: usize) {
        let ok = poll_until(LONG, || self.names().len() == n);
        assert!(ok, "the store holds {:?}, not {n} sockets", self.names());
    }

    /// The stored socket named `name`.
    pub fn get(&mut self, name: &str) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.read();
        self.fds.iter().find(|(n, _)| n == name).map(|(_, fd)| fd.as_fd())
    }

    /// The local address of the socket stored as `name`.
    pub fn addr_of(&mut self, name: &str) -> Option<std::net::SocketAddr> {
        let fd = self.get(name)?;
        let ss: nix::sys::socket::SockaddrStorage =
            nix::sys::socket::getsockname(fd.as_raw_fd()).ok()?;
        ss.as_sockaddr_in().map(|a| std::net::SocketAddr::V4((*a).into()))
    }

    /// Hold `fd` as `name`, as a socket unit's socket is passed along with
    /// the store.
    pub fn hold(&mut self, name: &str, fd: OwnedFd) {
        self.read();
        self.fds.push((name.to_string(), fd));
    }

    /// Drop the socket stored as `name`, as if it had never been stored.
    pub fn forget(&mut self, name: &str) {
        self.read();
        let before = self.fds.len();
        self.fds.retain(|(n, _)| n != name);
        assert_eq!(self.fds.len() + 1, before, "{name} was stored once");
    }

    /// `graceexec ARGS -- server`, with `NOTIFY_SOCKET` and what the store
    /// holds passed in `LISTEN_FDS`, as systemd (re)starts a service.
    pub fn start(&mut self, args: &[&str], env: &[(&str, &str)]) -> Ge {
        self.read();
        let server = server();
        let bin = bin();
        // LISTEN_PID must be graceexec's own pid: the shell's, once it execs.
        let script = r#"[ -z "${LISTEN_FDS-}" ] || export LISTEN_PID=$$; exec "$0" "$@""#;
        let mut full = vec!["-c", script, bin.to_str().unwrap()];
        full.extend_from_slice(args);
        full.extend(["--", server.to_str().unwrap()]);
        let mut c = Command::new("sh");
        c.args(&full).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        c.env("XDG_RUNTIME_DIR", runtime_dir()).env("NOTIFY_SOCKET", &self.path);
        c.env_remove("LISTEN_PID").env_remove("LISTEN_FDS").env_remove("LISTEN_FDNAMES");
        // Newest first, as systemd 252 passes its store.
        let passed: Vec<&(String, OwnedFd)> = self.fds.iter().rev().collect();
        if !passed.is_empty() {
            let names: Vec<&str> = passed.iter().map(|(n, _)| n.as_str()).collect();
            c.env("LISTEN_FDS", passed.len().to_string()).env("LISTEN_FDNAMES", names.join(":"));
            // Copies above any fd 3.. they land on, close-on-exec here, so
            // that no other child of this process inherits them.
            let high: Vec<OwnedFd> = passed
                .iter()
                .map(|(_, fd)| {
                    let raw =
                        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100)).unwrap();
                    // SAFETY: fcntl just made this fd; nothing else owns it.
                    unsafe { OwnedFd::from_raw_fd(raw) }
                })
                .collect();
            let raws: Vec<RawFd> = high.iter().map(|f| f.as_raw_fd()).collect();
            // SAFETY: between fork and exec, only dup2(2), which is
            // async-signal-safe; the copies above 100 outlive the spawn.
            unsafe {
                c.pre_exec(move || {
                    for (i, raw) in raws.iter().enumerate() {
                        if nix::libc::dup2(*raw, 3 + i as RawFd) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
            let ge = Ge::spawn(c, env);
            drop(high);
            return ge;
        }
        Ge::spawn(c, env)
    }
}

/// One message with the fds it carries.
/// Whether a datagram sent on `probe` would be queued now.
fn writable(probe: &UnixDatagram) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(probe.as_fd(), PollFlags::POLLOUT)];
    poll(&mut fds, PollTimeout::ZERO).unwrap() > 0
}

fn receive(sock: &UnixDatagram) -> Message {
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 16]);
    let m = recvmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .expect("reading the fake NOTIFY_SOCKET");
    let mut fds = Vec::new();
    for c in m.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just gave us these fds; nothing else owns them.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    let n = m.bytes;
    (String::from_utf8_lossy(&buf[..n]).into_owned(), fds)
}

/// Whether two fds are the same open socket (systemd's same_fd()).
fn same_socket(a: &OwnedFd, b: &OwnedFd) -> bool {
    let (sa, sb) = (nix::sys::stat::fstat(a).unwrap(), nix::sys::stat::fstat(b).unwrap());
    (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
}

/// `graceexec_stored` as (position, index) pairs of `graceexec-P-S` names.
pub fn stored_slots(names: &[String]) -> BTreeMap<usize, Vec<u32>> {
    let mut out: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for n in names {
        if let Some((p, s)) = n.strip_prefix("graceexec-").and_then(|r| r.split_once('-')) {
            out.entry(p.parse().unwrap()).or_default().push(s.parse().unwrap());
        }
    }
    out
}
