//! `--pid-file`: written atomically, removed at exit.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::log;

pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Write our pid to a temporary file next to `path`, then rename it
    /// over `path`: a reader sees the old content or the whole new one,
    /// never a half-written number (rename(2) is atomic).
    pub fn write(path: &Path) -> Result<PidFile> {
        let pid = std::process::id();
        let name = path.file_name().context("--pid-file needs a file name")?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{pid}.tmp"));
        let tmp = path.with_file_name(tmp_name);
        let written = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{pid}")?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot write the pid file {}", path.display()));
        }
        Ok(PidFile { path: path.to_path_buf(), pid })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only our own: a newer instance may have written its pid meanwhile.
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|s| s.trim().parse::<u32>().ok() == Some(self.pid));
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn(&format!("cannot remove the pid file {}: {e}", self.path.display()));
            }
        }
    }
}
