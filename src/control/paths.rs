//! Where control sockets live: one directory per user, one `NAME.sock` per
//! instance, so `graceexec list` finds every instance by reading it.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use nix::unistd::{geteuid, Uid};

/// sun_path is 108 bytes including the NUL (unix(7)).
pub const SUN_PATH_MAX: usize = 107;

/// Instance names: 1-64 of [A-Za-z0-9._-], not starting with '.' or '-'
/// (so a name is never a hidden file or mistaken for an option).
pub fn parse_name(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len())
        && !s.starts_with(['.', '-'])
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not a valid instance name; use 1-64 letters, digits, '.', '_' or '-', \
             not starting with '.' or '-'"
        ))
    }
}

/// The instance name when --name is not given: COMMAND's file name.
pub fn default_name(command: &OsStr) -> Result<String, String> {
    let base = Path::new(command).file_name().and_then(OsStr::to_str);
    match base.map(parse_name) {
        Some(Ok(name)) => Ok(name),
        _ => Err(format!(
            "cannot use '{}' as the instance name; pass --name NAME",
            command.to_string_lossy()
        )),
    }
}

/// The directory of control sockets for this user.
pub fn default_dir() -> PathBuf {
    dir_from(std::env::var_os("XDG_RUNTIME_DIR"), std::env::var_os("TMPDIR"), geteuid())
}

fn dir_from(xdg: Option<OsString>, tmpdir: Option<OsString>, euid: Uid) -> PathBuf {
    if let Some(x) = xdg.filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("graceexec");
    }
    if euid.is_root() {
        return PathBuf::from("/run/graceexec");
    }
    let tmp = tmpdir.filter(|v| !v.is_empty()).unwrap_or_else(|| "/tmp".into());
    PathBuf::from(tmp).join(format!("graceexec-{euid}"))
}

/// Create `dir` (mode 0700) if missing, and make sure nobody else can put
/// a socket there: a control socket in a directory another user controls
/// could be swapped for theirs.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    let fail = |why: String| {
        anyhow::anyhow!(
            "{} cannot hold control sockets: {why}; set XDG_RUNTIME_DIR or pass --control PATH",
            dir.display()
        )
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            // The umask may have taken bits from 0700; make it exact.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| fail(e.to_string()))?;
        }
        // Another instance may have created it at the same moment; the
        // checks below decide whether it is fit either way.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(format!("cannot create it ({e})"))),
    }
    // lstat: a symlink planted in /tmp must not lead us elsewhere.
    let meta = std::fs::symlink_metadata(dir).map_err(|e| fail(e.to_string()))?;
    if !meta.file_type().is_dir() {
        return Err(fail("it is not a directory".into()));
    }
    let euid = geteuid();
    if meta.uid() != euid.as_raw() {
        return Err(fail(format!("it belongs to uid {}, not to uid {euid}", meta.uid())));
    }
    let mode = meta.mode() & 0o777;
    // Others may never add or replace entries. In a world-writable parent
    // such as /tmp (the fallback) the directory must be private outright.
    let parent_public =
        dir.parent().and_then(|p| std::fs::metadata(p).ok()).is_some_and(|m| m.mode() & 0o002 != 0);
    let forbidden = if parent_public { 0o077 } else { 0o022 };
    if mode & forbidden != 0 {
        return Err(fail(format!("its mode is {mode:o}; it must be 700")));
    }
    Ok(())
}

pub fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// A unix socket path must fit in sun_path; say so before bind or connect
/// fail with a bare "File name too long".
pub fn check_len(path: &Path) -> Result<()> {
    let len = path.as_os_str().len();
    if len > SUN_PATH_MAX {
        bail!(
            "control socket path {} is {len} bytes, more than the {SUN_PATH_MAX} a unix socket \
             allows; set a shorter XDG_RUNTIME_DIR or pass a shorter --control",
            path.display()
        );
    }
    Ok(())
}

/// The control sockets in `dir`, by name. Whether anything answers on them
/// is for the caller to find out.
pub fn instances(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .filter_map(|e| {
            let file = e.file_name();
            let name = file.to_str()?.strip_suffix(".sock")?;
            parse_name(name).ok().map(|n| (n, e.path()))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A fresh, private directory for one test, removed when dropped.
    pub struct TempDir(PathBuf);

    impl std::ops::Deref for TempDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub fn temp_dir(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("gx-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        // Explicit: a test binding a control socket changes the umask.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        TempDir(dir)
    }

    #[test]
    fn names() {
        for good in ["api", "a", "web-1.prod_2", &"x".repeat(64)] {
            assert_eq!(parse_name(good).as_deref(), Ok(good));
        }
        for bad in ["", ".hidden", "-x", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
        assert_eq!(default_name(OsStr::new("/usr/bin/server")).as_deref(), Ok("server"));
        assert_eq!(default_name(OsStr::new("./app.py")).as_deref(), Ok("app.py"));
        assert!(default_name(OsStr::new("/x/my server")).unwrap_err().contains("--name"));
    }

    #[test]
    fn dirs() {
        let user = Uid::from_raw(1000);
        let some = |s: &str| Some(OsString::from(s));
        assert_eq!(
            dir_from(some("/run/user/1000"), None, user),
            Path::new("/run/user/1000/graceexec")
        );
        assert_eq!(dir_from(some(""), None, Uid::from_raw(0)), Path::new("/run/graceexec"));
        assert_eq!(dir_from(None, None, user), Path::new("/tmp/graceexec-1000"));
        assert_eq!(dir_from(None, some("/var/tmp"), user), Path::new("/var/tmp/graceexec-1000"));
    }

    #[test]
    fn ensure_dir_creates_and_checks() {
        let base = temp_dir("dir");
        let dir = base.join("graceexec");
        ensure_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        ensure_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(ensure_dir(&dir).unwrap_err().to_string().contains("mode is 777"));
        let file = base.join("file");
        std::fs::write(&file, "").unwrap();
        let e = ensure_dir(&file).unwrap_err().to_string();
        assert!(e.contains("not a directory") && e.contains("XDG_RUNTIME_DIR"), "{e}");
        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(ensure_dir(&link).is_err());
    }

    #[test]
    fn lists_sockets_by_name() {
        let dir = temp_dir("list");
        let _b = std::os::unix::net::UnixListener::bind(socket_path(&dir, "b")).unwrap();
        let _a = std::os::unix::net::UnixListener::bind(socket_path(&dir, "a")).unwrap();
        std::fs::write(dir.join("c.sock"), "").unwrap();
        let names: Vec<String> = instances(&dir).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(check_len(&dir.join("x".repeat(200)))
            .unwrap_err()
            .to_string()
            .contains("--control"));
    }
}
