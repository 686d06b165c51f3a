//! `/bin/sh -c COMMAND` for `--check` and `exec:` probes: its own process
//! group, stdin /dev/null, the environment it is given, the generations'
//! working directory. Its exit reaches the event loop's reaping like any
//! child's; nothing here waits for it.
//!
//! posix_spawn rather than std::process::Command: every signal is blocked
//! for the signalfd, a blocked mask survives execve(2), and Command leaves
//! the mask as it is (dash clears it at start-up, bash does not).
//! POSIX_SPAWN_SETSIGMASK and SETSIGDEF give the child an empty mask and
//! default dispositions (Rust ignores SIGPIPE, and an ignored signal stays
//! ignored across exec), with no code of ours in the child.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::Context;
use nix::spawn::{posix_spawn, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::SigSet;
use nix::unistd::Pid;

/// Where a helper command's stdout or stderr goes.
#[derive(Clone, Copy, Debug)]
pub enum Out<'a> {
    Null,
    Inherit,
    To(BorrowedFd<'a>),
}

/// `'` for the shell: the whole word single-quoted.
fn quote(p: &Path) -> Vec<u8> {
    let mut q = b"'".to_vec();
    for &b in p.as_os_str().as_bytes() {
        if b == b'\'' {
            q.extend_from_slice(b"'\\''");
        } else {
            q.push(b);
        }
    }
    q.push(b'\'');
    q
}

/// Start `cmd`; in `dir` if given (posix_spawn cannot change directory
/// portably, so the shell does, on a line of its own before the command).
pub fn spawn(
    cmd: &str,
    env: &[(OsString, OsString)],
    dir: Option<&Path>,
    out: Out,
    err: Out,
) -> anyhow::Result<Pid> {
    let c = |b: &[u8]| CString::new(b).context("the command or environment contains a NUL byte");
    let mut script = Vec::new();
    if let Some(d) = dir {
        script.extend_from_slice(b"cd -- ");
        script.extend_from_slice(&quote(d));
        script.extend_from_slice(b" || exit 126\n");
    }
    script.extend_from_slice(cmd.as_bytes());
    let argv = [c(b"sh")?, c(b"-c")?, c(&script)?];
    let mut envp = Vec::with_capacity(env.len());
    for (k, v) in env {
        envp.push(c(&[k.as_bytes(), b"=", v.as_bytes()].concat())?);
    }
    let null = std::fs::File::options().read(true).write(true).open("/dev/null")?;
    let mut actions = PosixSpawnFileActions::init()?;
    actions.add_dup2(null.as_raw_fd(), 0)?;
    for (target, o) in [(1, out), (2, err)] {
        match o {
            Out::Null => actions.add_dup2(null.as_raw_fd(), target)?,
            Out::Inherit => {}
            Out::To(fd) => actions.add_dup2(fd.as_raw_fd(), target)?,
        }
    }
    let mut attr = PosixSpawnAttr::init()?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )?;
    attr.set_pgroup(Pid::from_raw(0))?;
    attr.set_sigmask(&SigSet::empty())?;
    attr.set_sigdefault(&SigSet::all())?;
    posix_spawn(c"/bin/sh", &actions, &attr, &argv, &envp).context("cannot run /bin/sh")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_any_path() {
        assert_eq!(quote(Path::new("/srv/it's here")), b"'/srv/it'\\''s here'".to_vec());
    }
}
