//! One configuration for the run form, from the command line: what the
//! supervisor decides with (its `Policy`) and what the loop needs to start
//! generations.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{Cli, Restart};
use crate::env::{Vars, Workdir};
use crate::readiness::Mode;
use crate::supervisor::Policy;
use crate::sys::spawn::SpawnError;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Config {
    pub name: String,
    /// COMMAND and its arguments; argv[0] is COMMAND as written.
    pub command: Vec<OsString>,
    pub policy: Policy,
    pub ready: Option<Mode>,
    pub verbose: bool,
    pub log_prefix: bool,
    pub check: Option<String>,
    pub workdir: Workdir,
    /// Set for every process graceexec starts (`--user`'s HOME, USER...).
    pub user_env: Vars,
    /// Inherited variables not passed on.
    pub env_remove: Vec<String>,
    /// SERVER_STARTER_PORT's value under `--compat server-starter`, once
    /// the sockets are bound.
    pub server_starter: Option<String>,
    pub metrics_file: Option<PathBuf>,
    /// `--watch`'s paths, watched anew by an upgraded image.
    pub watch: Vec<PathBuf>,
    /// Sockets go to systemd's file descriptor store (fdstore.rs).
    #[serde(default)]
    pub fdstore: bool,
}

impl Config {
    pub fn new(cli: &Cli, name: String) -> Config {
        Config {
            name,
            command: cli.command.clone(),
            policy: Policy {
                ready: Mode::policy(cli.ready.as_ref()),
                ready_timeout: cli.ready_timeout,
                stop_timeout: cli.stop_timeout,
                stop_signal: cli.stop_signal,
                restart: cli.restart == Restart::Always,
                check: cli.check.is_some(),
                // Set once the sockets are bound: whether any is steered.
                steer: false,
                drain_wait: cli.drain_wait,
                // Set with `fdstore`.
                park_at_stop: false,
                keep_old: cli.keep_old,
                promote_after: cli.promote_after,
                ramp: cli.ramp,
                nag_every: Duration::from_secs(5),
            },
            ready: cli.ready.clone(),
            verbose: cli.verbose,
            log_prefix: cli.log_prefix,
            check: cli.check.clone(),
            workdir: Workdir::detect(cli.chdir.as_deref()),
            user_env: Vec::new(),
            env_remove: Vec::new(),
            server_starter: None,
            metrics_file: cli.metrics_file.clone(),
            watch: cli.watch.clone(),
            fdstore: false,
        }
    }

    /// Find COMMAND the way a shell would, anew at every start: in PATH if
    /// it has no slash, else relative to the working directory.
    pub fn resolve_command(&self) -> Result<PathBuf, SpawnError> {
        let command = &self.command[0];
        let shown = command.to_string_lossy();
        let has_slash = shown.contains('/');
        let found = if has_slash {
            let p = self.workdir.join(command.as_ref());
            std::fs::metadata(&p).ok().filter(|m| m.is_file()).map(|_| p)
        } else {
            which::which(command).ok()
        };
        match found {
            Some(p) => {
                let mode = std::fs::metadata(&p).map(|m| m.permissions().mode()).unwrap_or(0);
                if mode & 0o111 == 0 {
                    return Err(SpawnError {
                        code: 126,
                        message: format!(
                            "cannot execute {shown}: Permission denied (not an executable file)"
                        ),
                    });
                }
                Ok(p)
            }
            None if has_slash => {
                let p = self.workdir.join(command.as_ref());
                match std::fs::metadata(&p) {
                    Ok(m) if m.is_dir() => Err(SpawnError {
                        code: 126,
                        message: format!("cannot execute {shown}: it is a directory"),
                    }),
                    _ => Err(SpawnError {
                        code: 127,
                        message: format!("command not found: {shown}: No such file"),
                    }),
                }
            }
            None => {
                // A shell needs ./server for a file in the current
                // directory; so does graceexec, but it can say so.
                let here = self.workdir.join(std::path::Path::new(".").join(command).as_path());
                let hint = match std::fs::metadata(&here) {
                    Ok(m) if m.is_file() => format!("; to run the file here, write ./{shown}"),
                    _ => String::new(),
                };
                Err(SpawnError {
                    code: 127,
                    message: format!("command not found: {shown} (not in PATH){hint}"),
                })
            }
        }
    }
}
