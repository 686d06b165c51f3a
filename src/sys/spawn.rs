//! Starting a generation: the fd layout, the environment and the exec.
//!
//! The child side of
//! `fork` runs only async-signal-safe calls (signal-safety(7)) on buffers
//! built before the fork, because the parent may hold allocator or stdio
//! locks at the instant of the fork.
//!
//! The contract is sd_listen_fds(3): the sockets at fds 3..3+n, without
//! FD_CLOEXEC, nothing else above 2, `LISTEN_FDS=n`, `LISTEN_FDNAMES` with n
//! names, and `LISTEN_PID` set to the pid that execs the server. The pid is
//! only known after the fork, so the env holds a fixed-size slot for it that
//! the child fills in place with digits, without allocating.
//!
//! fd 0 is always inherited. fds 1 and 2 are inherited too, unless the
//! caller passes fds for them (the pipes output.rs reads).
//!
//! The watchdog (watchdog.rs) is started the same way, as graceexec's own
//! image re-exec'd through /proc/self/exe, with its pipe at fd 3, no
//! LISTEN_PID and no PR_SET_PDEATHSIG.
//!
//! The working directory: with `dir`, the child changes into it before the
//! exec, by path, so that a `current` symlink a deploy repointed since the
//! last start is followed anew (chdir(2) is async-signal-safe).

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::libc::{self, c_char, c_int};
use nix::unistd::{self, ForkResult, Pid};

const PID_KEY: &[u8] = b"LISTEN_PID=";
/// Room for any pid (pid_max is at most 2^22 on Linux, 20 digits is u64).
const PID_DIGITS: usize = 20;

/// Why a generation could not be exec'd. `code` follows the shells: 127 for
/// a command that does not exist, 126 for one that cannot be executed.
#[derive(Debug)]
pub struct SpawnError {
    pub code: i32,
    pub message: String,
}

/// Everything the child needs, built in the parent before the fork.
pub struct Child<'a> {
    pub program: &'a Path,
    pub args: &'a [OsString],
    /// Environment without LISTEN_PID; that is added here if `listen_pid`.
    pub env: Vec<(OsString, OsString)>,
    /// Become fds 3, 4, ...: the listening sockets, or the watchdog's pipe.
    pub fds: &'a [BorrowedFd<'a>],
    /// Set LISTEN_PID to the child's pid (sd_listen_fds(3)).
    pub listen_pid: bool,
    /// Becomes the child's fd 1; None keeps graceexec's own.
    pub stdout: Option<BorrowedFd<'a>>,
    /// Becomes the child's fd 2; None keeps graceexec's own.
    pub stderr: Option<BorrowedFd<'a>>,
    /// Sent to the child if graceexec dies (PR_SET_PDEATHSIG); None for
    /// the watchdog, which must outlive graceexec.
    pub parent_death_signal: Option<c_int>,
    /// Change into this directory before the exec; None keeps graceexec's.
    pub dir: Option<&'a Path>,
}

/// What the child reports through the error pipe: where it failed, and
/// the errno.
const FAILED_CHDIR: i32 = 1;
const FAILED_OTHER: i32 = 2;

fn cstring(bytes: &[u8]) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError {
        code: 126,
        message: "an argument or environment variable contains a NUL byte".into(),
    })
}

fn os_error(what: &str, e: Errno) -> SpawnError {
    SpawnError { code: 1, message: format!("{what}: {}", std::io::Error::from(e)) }
}

/// Duplicate `fd` to the lowest free fd >= `min`, close-on-exec.
fn dup_at_least(fd: RawFd, min: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) takes a borrowed fd that outlives the
    // call and returns a new fd that nothing else owns.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let new = fcntl(borrowed, FcntlArg::F_DUPFD_CLOEXEC(min))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Fork and exec `child`. Returns its pid once the exec has succeeded, or
/// the exec's error (reported by the child through a close-on-exec pipe).
pub fn spawn(child: Child<'_>) -> Result<Pid, SpawnError> {
    let n = child.fds.len() as c_int;
    let first_free = 3 + n;

    let program = cstring(child.program.as_os_str().as_bytes())?;
    // argv[0] is COMMAND as the user wrote it, as a shell would pass it.
    let argv: Vec<CString> =
        child.args.iter().map(|a| cstring(a.as_bytes())).collect::<Result<_, _>>()?;
    let mut env: Vec<CString> = Vec::with_capacity(child.env.len() + 1);
    for (k, v) in &child.env {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env.push(cstring(&kv)?);
    }
    // The LISTEN_PID slot: key, room for the digits, NUL. The child writes
    // the digits and a NUL over the room; the buffer is never reallocated.
    let mut pid_slot: Vec<u8> = PID_KEY.to_vec();
    pid_slot.resize(PID_KEY.len() + PID_DIGITS + 1, 0);
    // One mutable pointer, taken once, serves both the envp entry and the
    // child's in-place write.
    let pid_ptr: *mut u8 = pid_slot.as_mut_ptr();
    let mut envp: Vec<*const c_char> = env.iter().map(|c| c.as_ptr()).collect();
    if child.listen_pid {
        envp.push(pid_ptr as *const c_char);
    }
    envp.push(std::ptr::null());
    let listen_pid = child.listen_pid;
    let mut argvp: Vec<*const c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argvp.push(std::ptr::null());

    // Sources strictly above the target range, so that dup2(src, 3+i) never
    // overwrites a source not yet copied and never meets dup2(fd, fd), which
    // would leave FD_CLOEXEC set.
    let mut sources = Vec::with_capacity(child.fds.len());
    for s in child.fds {
        sources.push(dup_at_least(s.as_raw_fd(), first_free).map_err(|e| os_error("dup", e))?);
    }
    let source_fds: Vec<RawFd> = sources.iter().map(|f| f.as_raw_fd()).collect();
    // Same for the stdout/stderr sources: a pipe end may itself be fd 1, 2
    // or 3 when graceexec was started with some of its fds closed.
    let dup_stdio = |fd: Option<BorrowedFd<'_>>| {
        fd.map(|f| dup_at_least(f.as_raw_fd(), first_free).map_err(|e| os_error("dup", e)))
            .transpose()
    };
    let stdio = [dup_stdio(child.stdout)?, dup_stdio(child.stderr)?];
    // Raw copies for the child, -1 meaning "inherit"; index i goes to fd i+1.
    let stdio_fds: [RawFd; 2] = [0, 1].map(|i| stdio[i].as_ref().map_or(-1, |f| f.as_raw_fd()));
    let (err_read, err_write) = unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| os_error("pipe", e))?;
    let moved = dup_at_least(err_write.as_raw_fd(), first_free).map_err(|e| os_error("dup", e))?;
    // The original write end must go now: the parent's read sees EOF only
    // once no copy of the write end is left outside the child.
    drop(err_write);
    let err_write = moved;
    let err_fd = err_write.as_raw_fd();

    // SAFETY: sigaction and sigset structs are plain C data; zeroed is a
    // valid starting value for both, and they are filled in before use.
    let mut default_action: libc::sigaction = unsafe { std::mem::zeroed() };
    default_action.sa_sigaction = libc::SIG_DFL;
    // SAFETY: as above.
    let mut empty_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset writes into a valid, owned sigset_t.
    unsafe { libc::sigemptyset(&mut empty_mask) };
    let max_signal = libc::SIGRTMAX();
    let parent = unistd::getpid();
    let death_signal = child.parent_death_signal;
    let dir = child.dir.map(|d| cstring(d.as_os_str().as_bytes())).transpose()?;
    let dir_ptr: *const c_char = dir.as_ref().map_or(std::ptr::null(), |d| d.as_ptr());
    let fd_limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft.min(1 << 20) as c_int)
        .unwrap_or(1 << 16);

    debug_assert!(super::one_thread(), "fork with more than one thread");
    // SAFETY: graceexec is single-threaded, so the child is a faithful copy.
    // The child branch below calls only async-signal-safe functions on
    // memory prepared above and ends in execve or _exit; it never returns
    // into Rust code, never allocates, never panics.
    match unsafe { unistd::fork() }.map_err(|e| os_error("fork", e))? {
        ForkResult::Child => unsafe {
            if let Some(sig) = death_signal {
                libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0);
                // The parent may have died before prctl took effect; then
                // nobody would ever deliver the death signal (prctl(2)).
                if libc::getppid() != parent.as_raw() {
                    libc::_exit(1);
                }
            }
            // Own process group: a terminal's Ctrl-C reaches graceexec only,
            // and a stop can SIGKILL the whole group.
            libc::setpgid(0, 0);
            for sig in 1..=max_signal {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::sigaction(sig, &default_action, std::ptr::null_mut());
                }
            }
            libc::sigprocmask(libc::SIG_SETMASK, &empty_mask, std::ptr::null_mut());
            for (i, src) in stdio_fds.iter().enumerate() {
                // As for the sockets: src >= 3 + n > target.
                if *src >= 0 && libc::dup2(*src, 1 + i as c_int) < 0 {
                    child_fail(err_fd, FAILED_OTHER);
                }
            }
            for (i, src) in source_fds.iter().enumerate() {
                // dup2 never copies FD_CLOEXEC, and src != target here.
                if libc::dup2(*src, 3 + i as c_int) < 0 {
                    child_fail(err_fd, FAILED_OTHER);
                }
            }
            close_fds_from(first_free, err_fd, fd_limit);
            if listen_pid {
                write_pid(pid_ptr, libc::getpid());
            }
            if !dir_ptr.is_null() && libc::chdir(dir_ptr) < 0 {
                child_fail(err_fd, FAILED_CHDIR);
            }
            libc::execve(program.as_ptr(), argvp.as_ptr(), envp.as_ptr());
            child_fail(err_fd, FAILED_OTHER);
        },
        ForkResult::Parent { child: pid } => {
            drop(err_write);
            drop(sources);
            drop(stdio);
            // Also set it here: the parent may signal the group before the
            // child has run. EACCES after the exec is expected and harmless.
            let _ = unistd::setpgid(pid, pid);
            let mut buf = [0u8; 8];
            let mut got = 0;
            while got < 8 {
                match unistd::read(&err_read, &mut buf[got..]) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(Errno::EINTR) => continue,
                    Err(_) => break,
                }
            }
            if got == 0 {
                return Ok(pid);
            }
            let _ = nix::sys::wait::waitpid(pid, None);
            let word = |i: usize| i32::from_ne_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
            let errno = Errno::from_raw(word(4));
            match (word(0), child.dir) {
                (FAILED_CHDIR, Some(d)) => Err(SpawnError {
                    code: 126,
                    message: format!(
                        "cannot change to directory {}: {}",
                        d.display(),
                        std::io::Error::from(errno)
                    ),
                }),
                _ => Err(exec_error(child.program, errno)),
            }
        }
    }
}

/// A close-on-exec pipe (read end, write end) whose ends are not 0, 1 or 2,
/// even when graceexec was started with some of those closed.
pub fn pipe_above_stdio() -> nix::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok((dup_at_least(r.as_raw_fd(), 3)?, dup_at_least(w.as_raw_fd(), 3)?))
}

/// Map an execve errno to the shells' exit codes and a message.
fn exec_error(program: &Path, errno: Errno) -> SpawnError {
    let code = match errno {
        Errno::ENOENT | Errno::ENOTDIR => 127,
        _ => 126,
    };
    SpawnError {
        code,
        message: format!("cannot execute {}: {}", program.display(), std::io::Error::from(errno)),
    }
}

/// Child side: report where it failed and errno through the pipe (one
/// write below PIPE_BUF, so whole), and exit 127.
///
/// # Safety
/// Only in the child after fork: it never returns, and uses only
/// async-signal-safe calls. `err_fd` is the error pipe's write end.
unsafe fn child_fail(err_fd: c_int, stage: i32) -> ! {
    let errno = *libc::__errno_location();
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&stage.to_ne_bytes());
    bytes[4..].copy_from_slice(&errno.to_ne_bytes());
    libc::write(err_fd, bytes.as_ptr() as *const libc::c_void, 8);
    libc::_exit(127)
}

/// Child side: close every fd >= `from` except `keep` (close-on-exec, and
/// needed until the exec succeeds). close_range(2) first; the loop is the
/// fallback for kernels before 5.9.
///
/// # Safety
/// Only in the child after fork, where no Rust object owns these fds any
/// more: they vanish with the exec anyway.
unsafe fn close_fds_from(from: c_int, keep: c_int, limit: c_int) {
    let ranges = [(from, keep - 1), (keep + 1, c_int::MAX)];
    for (lo, hi) in ranges {
        if lo > hi {
            continue;
        }
        let r = libc::syscall(libc::SYS_close_range, lo as u32, hi as u32, 0u32);
        if r != 0 {
            let mut fd = lo;
            while fd <= hi && fd < limit {
                libc::close(fd);
                fd += 1;
            }
        }
    }
}

/// Child side: write `pid` as decimal digits plus NUL after the key.
///
/// # Safety
/// `slot` points to a buffer of `PID_KEY.len() + PID_DIGITS + 1` bytes
/// that nothing else reads or writes meanwhile.
unsafe fn write_pid(slot: *mut u8, pid: libc::pid_t) {
    let mut digits = [0u8; PID_DIGITS];
    let mut n = pid as u64;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 || len == PID_DIGITS {
            break;
        }
    }
    let mut at = slot.add(PID_KEY.len());
    while len > 0 {
        len -= 1;
        *at = digits[len];
        at = at.add(1);
    }
    *at = 0;
}
