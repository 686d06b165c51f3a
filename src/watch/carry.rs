//! `--watch` across `graceexec upgrade`: the inotify instance itself, with
//! its watch descriptors and the reload it may have armed.
//!
//! Setting the watches up again in the new image would fail once a
//! watched directory is gone (moved away, or replaced by a deploy), or at
//! the inotify limits, past the point of return: the instance would die
//! with its generations. It would also lose the events of the exec and
//! any reload armed and not yet due. The same instance keeps all of it.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use inotify::Inotify;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use serde::{Deserialize, Serialize};

use super::{Dir, Watch};
use crate::carry::Handed;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WatchOut {
    fd: i32,
    dirs: Vec<DirOut>,
    /// The armed reload is due this long from the moment of the export.
    due: Option<Duration>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct DirOut {
    wd: i32,
    path: PathBuf,
    whole: bool,
    names: Vec<OsString>,
}

/// Whether fd `n` is an inotify instance. It has no file type of its own
/// (an anonymous inode), so its /proc link tells.
fn is_inotify(n: i32) -> bool {
    crate::sys::with_fd(n, |_| {
        std::fs::read_link(format!("/proc/self/fd/{n}"))
            .is_ok_and(|l| l.as_os_str() == "anon_inode:inotify")
    })
    .unwrap_or(false)
}

impl Watch {
    pub fn carry(&self, now: Instant, handed: &mut Handed) -> WatchOut {
        WatchOut {
            fd: handed.fd(self.inotify.as_fd()),
            dirs: self
                .dirs
                .iter()
                .map(|(wd, d)| DirOut {
                    wd: *wd,
                    path: d.path.clone(),
                    whole: d.whole,
                    names: d.names.clone(),
                })
                .collect(),
            due: self.due.map(|t| t.saturating_duration_since(now)),
        }
    }

    /// Whether `w`'s fd is open and an inotify instance, checked before
    /// anything is taken.
    pub fn carried_ok(w: &WatchOut) -> bool {
        is_inotify(w.fd)
    }

    pub fn adopt(w: WatchOut, now: Instant) -> Result<Watch> {
        let fd = crate::sys::claim_fd(w.fd, |b| {
            if !is_inotify(w.fd) {
                bail!("fd {} (the --watch inotify) is not what the upgrade document says", w.fd);
            }
            fcntl(b, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
            Ok(())
        })?;
        let dirs = w
            .dirs
            .into_iter()
            .map(|d| (d.wd, Dir { path: d.path, whole: d.whole, names: d.names }))
            .collect();
        Ok(Watch { inotify: Inotify::from(fd), dirs, due: w.due.map(|d| now + d) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_reload_and_the_watches_cross_as_they_are() {
        let d = std::env::temp_dir().join(format!("graceexec-watch-carry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("app.conf");
        let mut w = Watch::new(std::slice::from_ref(&f)).unwrap();
        let now = Instant::now();
        std::fs::write(&f, "a = 1\n").unwrap();
        assert!(!w.read(now).is_empty());
        let mut handed = Handed::default();
        let out = w.carry(now, &mut handed);
        assert!(Watch::carried_ok(&out));
        // The new image's instance is this one: forget ours without
        // closing it, as the exec would.
        std::mem::forget(w);
        let later = now + Duration::from_secs(5);
        let mut back = Watch::adopt(out, later).unwrap();
        assert_eq!(back.wake_at(), Some(later + super::super::DEBOUNCE));
        assert!(back.take_due(later + super::super::DEBOUNCE));
        // The same watches still see changes, the descriptors still known.
        std::fs::write(&f, "a = 2\n").unwrap();
        let mut fds = [nix::poll::PollFd::new(back.fd(), nix::poll::PollFlags::POLLIN)];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(2000u16)).unwrap();
        assert_eq!(back.read(later), vec![f.display().to_string()]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_number_that_is_no_inotify_is_refused() {
        assert!(!is_inotify(-1));
        let out = WatchOut { fd: 100_000, dirs: Vec::new(), due: None };
        assert!(!Watch::carried_ok(&out));
    }
}
