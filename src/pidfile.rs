//! `--pid-file`: written atomically, removed at exit.
//!
//! The directory may be one other users can write (`/tmp`, a 0777 run
//! directory), so nothing here follows a name someone else could have put
//! there. The temporary file has an unpredictable name and is created
//! with O_EXCL|O_NOFOLLOW: a planted file or symlink of that name makes the
//! open fail (and we pick another name) instead of being truncated or
//! followed, even where fs.protected_symlinks is off. rename(2) replaces
//! whatever is at the final path, a symlink included, without following
//! it. At exit the file is opened with O_NOFOLLOW|O_NONBLOCK, so a symlink
//! or a fifo swapped in for it is left alone instead of being followed or
//! blocking graceexec's exit.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use nix::fcntl::OFlag;

use crate::log;

/// New names to try when one is taken. 64 random bits each: running out
/// means something is wrong with the directory, not bad luck.
const ATTEMPTS: usize = 16;

pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Write our pid to a new temporary file next to `path`, then rename
    /// it over `path`: a reader sees the old content or the whole new
    /// one, never a half-written number (rename(2) is atomic).
    pub fn write(path: &Path) -> Result<PidFile> {
        let pid = std::process::id();
        let fail = |what: String| {
            anyhow::anyhow!(
                "cannot write the pid file {}: {what}; check that its directory exists and \
                 graceexec can write there, or choose another --pid-file",
                path.display()
            )
        };
        let Some(name) = path.file_name() else {
            return Err(fail("it names no file".into()));
        };
        let (tmp, mut file) = create_temporary(path, name).map_err(fail)?;
        let written = writeln!(file, "{pid}")
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            // unlink(2) removes the name, never what a symlink points to.
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(e.to_string()));
        }
        Ok(PidFile { path: path.to_path_buf(), pid })
    }
}

impl PidFile {
    /// Across `graceexec upgrade`: the same file, the same pid.
    pub fn carry(&self) -> (PathBuf, u32) {
        (self.path.clone(), self.pid)
    }

    pub fn adopt(path: PathBuf, pid: u32) -> PidFile {
        PidFile { path, pid }
    }
}

/// `.NAME.RANDOM.tmp` beside `path`, created by us and nobody else.
fn create_temporary(path: &Path, name: &std::ffi::OsStr) -> Result<(PathBuf, File), String> {
    for _ in 0..ATTEMPTS {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", crate::notify::random_hex()));
        let tmp = path.with_file_name(tmp_name);
        // create_new is O_CREAT|O_EXCL; std adds O_CLOEXEC. O_EXCL alone
        // already refuses a symlink (open(2)); O_NOFOLLOW says so twice.
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&tmp);
        match opened {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => {
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                let dir = dir.unwrap_or(Path::new("."));
                return Err(format!("cannot create a file in {}: {e}", dir.display()));
            }
        }
    }
    Err(format!("{ATTEMPTS} temporary names beside it were all taken"))
}

/// Whether `path` is still a regular file that holds `pid`, read without
/// following a symlink or waiting on a fifo.
fn holds(path: &Path, pid: u32) -> bool {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path);
    let Ok(f) = opened else { return false };
    if !f.metadata().is_ok_and(|m| m.file_type().is_file()) {
        return false;
    }
    // A pid and a newline; anything longer is not our file.
    let mut text = String::new();
    if f.take(32).read_to_string(&mut text).is_err() {
        return false;
    }
    text.trim().parse::<u32>().ok() == Some(pid)
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only our own: a newer instance may have written its pid meanwhile.
        if holds(&self.path, self.pid) {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn(&format!("cannot remove the pid file {}: {e}", self.path.display()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ge-pidfile-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_replaces_a_symlink_and_removes() {
        let dir = scratch("write");
        let target = dir.join("precious");
        std::fs::write(&target, "keep\n").unwrap();
        let path = dir.join("ge.pid");
        symlink(&target, &path).unwrap();
        let pf = PidFile::write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.mode() & 0o7133, 0, "nothing beyond 0644");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n", std::process::id()));
        assert_eq!(names(&dir), ["ge.pid", "precious"], "no temporary file left");
        drop(pf);
        assert_eq!(names(&dir), ["precious"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exit_leaves_what_is_not_ours() {
        let dir = scratch("swap");
        let path = dir.join("ge.pid");
        let ours = std::process::id().to_string();
        // A symlink to a file that holds our pid, a fifo (whose open for
        // reading would block), and another pid.
        let elsewhere = dir.join("elsewhere");
        std::fs::write(&elsewhere, &ours).unwrap();
        let fifo =
            |p: &Path| nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600));
        type Plant<'a> = Box<dyn Fn(&Path) + 'a>;
        let plants: Vec<Plant> = vec![
            Box::new(|p| symlink(&elsewhere, p).unwrap()),
            Box::new(|p| fifo(p).unwrap()),
            Box::new(|p| std::fs::write(p, "1\n").unwrap()),
        ];
        for plant in plants {
            let pf = PidFile::write(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            plant(&path);
            drop(pf);
            assert!(std::fs::symlink_metadata(&path).is_ok(), "removed what was not ours");
            std::fs::remove_file(&path).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), ours);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failure_is_one_line_that_says_what_to_do() {
        let dir = scratch("fail");
        let sub = dir.join("ro");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o500)).unwrap();
        let mut paths = vec![dir.join("missing").join("ge.pid"), PathBuf::from("/")];
        if !nix::unistd::geteuid().is_root() {
            paths.push(sub.join("ge.pid"));
        }
        for path in paths {
            let e = format!("{:#}", PidFile::write(&path).err().expect("must fail"));
            assert_eq!(e.lines().count(), 1, "{e}");
            assert!(e.starts_with("cannot write the pid file "), "{e}");
            assert!(e.ends_with("or choose another --pid-file"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
