//! `--watch PATH`: reload when a file (or anything in a directory) changes.
//!
//! A file is watched through its parent directory: a watch on the file
//! itself follows its inode and goes deaf once the file is replaced by
//! rename (editors, `install`, atomic writes). Events (inotify(7)):
//! - IN_CLOSE_WRITE and IN_MOVED_TO arm the reload: the file is complete.
//!   `touch` opens for writing, so it arms too.
//! - IN_MODIFY, IN_CREATE and IN_ATTRIB only push an armed reload out: a
//!   copy in progress (`cp` truncates, writes, closes) or a chmod right
//!   after a write (`install -m`) settles first. Alone they never arm: an
//!   unfinished copy must not trigger, and a bare chmod changes no content.
//!   Except IN_CREATE of a symlink, complete at once (no close follows).
//! - In a watched directory, IN_DELETE and IN_MOVED_FROM arm as well (a
//!   file gone from `conf.d/` changes the configuration); editors' swap,
//!   lock and backup names (`.x.swp`, `.#x`, `#x#`, `x~`) are ignored.
//! - IN_Q_OVERFLOW (events lost) counts as a change of everything.
//! - IN_IGNORED (directory removed or unmounted) and IN_MOVE_SELF (renamed:
//!   the watch would follow it away) end that watch; reported, not armed.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use inotify::{EventMask, Inotify, WatchMask};
use nix::libc;

mod carry;
pub use carry::WatchOut;

/// Quiet time after the last relevant event before the reload.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

struct Dir {
    path: PathBuf,
    /// Watched for any entry (a `--watch DIR`), not only for `names`.
    whole: bool,
    names: Vec<OsString>,
}

pub struct Watch {
    inotify: Inotify,
    dirs: HashMap<i32, Dir>,
    due: Option<Instant>,
}

/// Events that push an armed reload out but do not arm it.
const BUSY: EventMask = EventMask::MODIFY.union(EventMask::CREATE).union(EventMask::ATTRIB);

/// Names starting with `..` stay: Kubernetes updates a mounted ConfigMap
/// by swapping its `..data` symlink.
fn ignored_in_dir(name: &OsStr) -> bool {
    let n = name.to_string_lossy();
    (n.starts_with('.') && !n.starts_with("..")) || n.starts_with('#') || n.ends_with('~')
}

/// The entries of DIR whose change changes `p`: its name, and for a link
/// like Kubernetes' `app.conf -> ..data/app.conf` the sibling it goes
/// through, which is what gets replaced.
fn names_of(p: &Path, name: &OsStr) -> Vec<OsString> {
    let mut names = vec![name.to_os_string()];
    if let Ok(target) = std::fs::read_link(p) {
        let mut parts = target.components();
        if let (Some(Component::Normal(first)), Some(_)) = (parts.next(), parts.next()) {
            names.push(first.to_os_string());
        }
    }
    names
}

const MASK: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MODIFY)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::MOVE_SELF)
    // Fail rather than watch a file if DIR is not a directory at the call.
    .union(WatchMask::ONLYDIR)
    // No events from files already unlinked but still open somewhere.
    .union(WatchMask::EXCL_UNLINK);

impl Watch {
    /// Watch each path: a directory itself, anything else through its
    /// parent directory, which must exist.
    pub fn new(paths: &[PathBuf]) -> Result<Watch> {
        let inotify = Inotify::init().map_err(|e| match e.raw_os_error() {
            Some(libc::EMFILE) => {
                anyhow!("--watch: too many inotify instances; raise fs.inotify.max_user_instances")
            }
            _ => anyhow!("--watch: cannot start inotify: {e}"),
        })?;
        let mut w = Watch { inotify, dirs: HashMap::new(), due: None };
        for p in paths {
            let shown = p.display();
            let (dir, names) = if p.is_dir() {
                (p.clone(), None)
            } else {
                let name = p.file_name().ok_or_else(|| {
                    anyhow!("--watch {shown}: not a file name; give a path like DIR/FILE")
                })?;
                let parent = match p.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                (parent, Some(names_of(p, name)))
            };
            let wd = w.inotify.watches().add(&dir, MASK).map_err(|e| {
                let d = dir.display();
                match e.raw_os_error().unwrap_or(0) {
                    libc::ENOENT => anyhow!("--watch {shown}: directory {d} does not exist"),
                    libc::ENOTDIR => anyhow!("--watch {shown}: {d} is not a directory"),
                    libc::ENOSPC => {
                        anyhow!(
                            "--watch {shown}: no inotify watch left (fs.inotify.max_user_watches)"
                        )
                    }
                    _ => anyhow!("--watch {shown}: cannot watch directory {d}: {e}"),
                }
            })?;
            // The same directory twice gives the same descriptor.
            let entry = w.dirs.entry(wd.get_watch_descriptor_id()).or_insert(Dir {
                path: dir,
                whole: false,
                names: Vec::new(),
            });
            match names {
                Some(n) => entry.names.extend(n),
                None => entry.whole = true,
            }
        }
        Ok(w)
    }

    /// Readable (POLLIN) when events wait; nonblocking and close-on-exec.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Drain the pending events without blocking, arm or push out the
    /// reload, and return what changed (or stopped being watched), for
    /// the log.
    pub fn read(&mut self, now: Instant) -> Vec<String> {
        let mut changed: Vec<String> = Vec::new();
        let mut arm = false;
        let mut busy = false;
        // Room for many events: each is 16 bytes plus the padded name.
        let mut buf = [0u8; 8192];
        loop {
            let events = match self.inotify.read_events(&mut buf) {
                Ok(ev) => ev,
                // EAGAIN: drained. Nothing else is expected: the buffer
                // holds the largest event (NAME_MAX + 17 bytes).
                Err(_) => break,
            };
            for ev in events {
                let wd = ev.wd.get_watch_descriptor_id();
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    arm = true;
                    changed
                        .push("(inotify queue overflowed: treating everything as changed)".into());
                    continue;
                }
                let Some(dir) = self.dirs.get(&wd) else { continue };
                if ev.mask.intersects(EventMask::IGNORED | EventMask::MOVE_SELF) {
                    let moved = ev.mask.contains(EventMask::MOVE_SELF);
                    let how = if moved { "was moved away" } else { "was removed or unmounted" };
                    let d = dir.path.display();
                    changed
                        .push(format!("(directory {d} {how}: no longer watched until a restart)"));
                    if moved {
                        let _ = self.inotify.watches().remove(ev.wd.clone());
                    }
                    self.dirs.remove(&wd);
                    continue;
                }
                let Some(name) = ev.name else { continue };
                let ours = dir.names.iter().any(|n| n.as_os_str() == name)
                    || (dir.whole && !ignored_in_dir(name) && !ev.mask.contains(EventMask::ISDIR));
                if !ours {
                    continue;
                }
                let mut complete = EventMask::CLOSE_WRITE | EventMask::MOVED_TO;
                if dir.whole {
                    complete |= EventMask::DELETE | EventMask::MOVED_FROM;
                }
                let path = dir.path.join(name);
                let symlink = ev.mask.contains(EventMask::CREATE)
                    && path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink());
                if ev.mask.intersects(complete) || symlink {
                    arm = true;
                    changed.push(path.display().to_string());
                }
                busy |= ev.mask.intersects(BUSY);
            }
        }
        if arm || (busy && self.due.is_some()) {
            self.due = Some(now + DEBOUNCE);
        }
        changed.sort();
        changed.dedup();
        changed
    }

    /// When the armed reload is due.
    pub fn wake_at(&self) -> Option<Instant> {
        self.due
    }

    /// True once, when the armed reload is due; it is disarmed then.
    pub fn take_due(&mut self, now: Instant) -> bool {
        let due = self.due.is_some_and(|t| now >= t);
        if due {
            self.due = None;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::io::Write;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("graceexec-watch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Wait (2 s at most) until events are readable, then read them.
    fn changes(w: &mut Watch, now: Instant) -> Vec<String> {
        let mut fds = [PollFd::new(w.fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(2000u16)).unwrap();
        w.read(now)
    }

    #[test]
    fn writes_and_renames_trigger_once_after_the_debounce() {
        let d = temp_dir("file");
        let f = d.join("app.conf");
        let mut w = Watch::new(std::slice::from_ref(&f)).unwrap();
        let now = Instant::now();
        std::fs::write(&f, "a = 1\n").unwrap();
        assert_eq!(changes(&mut w, now), vec![f.display().to_string()]);
        assert_eq!(w.wake_at(), Some(now + DEBOUNCE));
        assert!(!w.take_due(now + DEBOUNCE / 2));
        assert!(w.take_due(now + DEBOUNCE));
        assert!(!w.take_due(now + DEBOUNCE * 2), "fires once");
        // An unrelated file in the same directory does nothing.
        std::fs::write(d.join("other.conf"), "x").unwrap();
        assert!(changes(&mut w, now).is_empty());
        assert_eq!(w.wake_at(), None);
        std::fs::rename(d.join("other.conf"), &f).unwrap();
        assert_eq!(changes(&mut w, now), vec![f.display().to_string()]);
        assert!(w.take_due(now + DEBOUNCE));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_unfinished_write_pushes_out_but_does_not_arm() {
        let d = temp_dir("partial");
        let f = d.join("app.conf");
        let mut w = Watch::new(std::slice::from_ref(&f)).unwrap();
        let now = Instant::now();
        let mut file = std::fs::File::create(&f).unwrap();
        file.write_all(b"half").unwrap();
        assert!(changes(&mut w, now).is_empty());
        assert_eq!(w.wake_at(), None, "not closed yet");
        drop(file);
        assert_eq!(changes(&mut w, now).len(), 1);
        let mut file = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
        file.write_all(b"more").unwrap();
        let later = now + DEBOUNCE / 2;
        assert!(changes(&mut w, later).is_empty());
        assert_eq!(w.wake_at(), Some(later + DEBOUNCE), "a write in progress pushes out");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_directory_watch_sees_new_files_but_not_swap_files() {
        let d = temp_dir("dir");
        let mut w = Watch::new(std::slice::from_ref(&d)).unwrap();
        let now = Instant::now();
        std::fs::write(d.join(".site.conf.swp"), "x").unwrap();
        assert!(changes(&mut w, now).is_empty());
        std::fs::write(d.join("site.conf"), "x").unwrap();
        assert_eq!(changes(&mut w, now), vec![d.join("site.conf").display().to_string()]);
        assert!(w.take_due(now + DEBOUNCE));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_kubernetes_style_symlink_swap_triggers() {
        let d = temp_dir("k8s");
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/app.conf"), "x").unwrap();
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/app.conf", d.join("app.conf")).unwrap();
        let mut w = Watch::new(&[d.join("app.conf")]).unwrap();
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        assert_eq!(changes(&mut w, Instant::now()), vec![d.join("..data").display().to_string()]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let d = temp_dir("missing").join("nope");
        let err = Watch::new(&[d.join("app.conf")]).err().unwrap().to_string();
        assert!(err.contains(&format!("directory {} does not exist", d.display())), "{err}");
    }
}
