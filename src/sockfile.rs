//! Unix socket files, for `--listen unix:PATH` and the control socket
//! alike: what to do with one already at the path, and removing our own.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};

/// A socket file graceexec bound. Dropping it removes the file, but only
/// while it is still the same inode: a newer instance may have replaced it.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl SocketFile {
    /// Take charge of the file just bound at `path`.
    pub fn bound(path: &Path) -> Result<SocketFile> {
        let m = std::fs::symlink_metadata(path)
            .with_context(|| format!("cannot check {}", path.display()))?;
        Ok(SocketFile { path: path.to_path_buf(), id: (m.dev(), m.ino()) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn carry(&self) -> crate::carry::FileOut {
        crate::carry::FileOut { path: self.path.clone(), dev: self.id.0, ino: self.id.1 }
    }

    pub fn adopt(f: crate::carry::FileOut) -> SocketFile {
        SocketFile { path: f.path, id: (f.dev, f.ino) }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// What was at a path about to be bound.
pub enum Existing {
    Nothing,
    /// A socket nothing answered on, now removed.
    Replaced,
    /// A socket something answers on: connected to it.
    Live(UnixStream),
}

/// A leftover socket file is replaced only if nothing answers on it
/// (connect(2) gets ECONNREFUSED once its listener is gone). Any other file
/// is an error ending in `hint`, what to do instead.
pub fn clear_stale(path: &Path, hint: &str) -> Result<Existing> {
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => return Err(e).with_context(|| format!("cannot check {shown}")),
    };
    if !meta.file_type().is_socket() {
        bail!("{shown} exists and is not a socket; {hint}");
    }
    match connect_unix(path, Duration::from_secs(1)) {
        Ok(stream) => Ok(Existing::Live(stream)),
        Err(e) if e.raw_os_error() == Some(nix::libc::ECONNREFUSED) => {
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket {shown}"))?;
            Ok(Existing::Replaced)
        }
        Err(e) if e.raw_os_error() == Some(nix::libc::EACCES) => {
            bail!("{shown} belongs to another user; {hint}")
        }
        Err(e) => bail!("cannot check {shown}: {e}"),
    }
}

/// Connect within `timeout`: a connect(2) to a unix socket whose backlog
/// is full blocks, bounded by SO_SNDTIMEO (unix(7)).
pub fn connect_unix(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    let stream = UnixStream::from(fd);
    stream.set_write_timeout(Some(timeout))?;
    let addr = UnixAddr::new(path)?;
    connect(stream.as_raw_fd(), &addr).map_err(|e: Errno| std::io::Error::from(e))?;
    Ok(stream)
}
