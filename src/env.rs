//! What every process graceexec starts is given: one builder for the
//! generations, the `--check` command and `exec:` probes, so that they all
//! see the same environment (the `--user` identity's HOME and USER
//! included), and none sees graceexec's own socket-activation variables.
//!
//! Also the working directory they start in, re-resolved at each start.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Variables graceexec sets itself; any inherited value is dropped, so a
/// graceexec started by systemd (or by another graceexec) never passes its
/// own NOTIFY_SOCKET or LISTEN_* on.
const OWN_VARS: [&str; 10] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "GRACEEXEC_GENERATION",
    "GRACEEXEC_PID",
    "SERVER_STARTER_PORT",
    "SERVER_STARTER_GENERATION",
    "GRACEEXEC_RESUME_FD",
    "GRACEEXEC_UPGRADE_FAILED",
];

pub type Vars = Vec<(OsString, OsString)>;

#[derive(Clone, Debug)]
pub struct Env {
    base: Vars,
    /// LISTEN_FDS and LISTEN_FDNAMES.
    fds: usize,
    names: String,
    /// SERVER_STARTER_PORT under `--compat server-starter`.
    server_starter: Option<String>,
}

impl Env {
    /// `inherited` minus graceexec's own variables, with `overrides` (the
    /// `--user` identity) on top and `remove` dropped.
    pub fn new(
        inherited: impl IntoIterator<Item = (OsString, OsString)>,
        overrides: Vars,
        remove: &[String],
        dir: &Workdir,
    ) -> Env {
        let mut base: Vars = inherited
            .into_iter()
            .filter(|(k, _)| {
                !OWN_VARS.iter().any(|o| k == o) && !remove.iter().any(|o| k == o.as_str())
            })
            .filter(|(k, _)| !overrides.iter().any(|(o, _)| o == k))
            .collect();
        base.extend(overrides);
        // A shell sets PWD to where it is; so does graceexec, for the
        // directory the process starts in.
        if let Some(d) = dir.path() {
            base.retain(|(k, _)| k != "PWD");
            base.push(("PWD".into(), d.as_os_str().to_owned()));
        }
        Env { base, fds: 0, names: String::new(), server_starter: None }
    }

    /// The sockets every generation gets.
    pub fn with_sockets(mut self, names: &[&str], server_starter: Option<String>) -> Env {
        self.fds = names.len();
        self.names = names.join(":");
        self.server_starter = server_starter;
        self
    }

    fn with(&self, extra: &[(&str, &OsStr)]) -> Vars {
        let mut v = self.base.clone();
        v.extend(extra.iter().map(|(k, val)| (OsString::from(k), val.to_os_string())));
        v
    }

    /// A generation's, without LISTEN_PID (spawn sets it in the child).
    pub fn generation(&self, gen: u32, notify: &Path) -> Vars {
        let (fds, gen) = (self.fds.to_string(), gen.to_string());
        let mut extra: Vec<(&str, &OsStr)> = vec![
            ("LISTEN_FDS", fds.as_ref()),
            ("LISTEN_FDNAMES", self.names.as_ref()),
            ("NOTIFY_SOCKET", notify.as_os_str()),
            ("GRACEEXEC_GENERATION", gen.as_ref()),
        ];
        if let Some(ports) = &self.server_starter {
            extra.push(("SERVER_STARTER_PORT", ports.as_ref()));
            extra.push(("SERVER_STARTER_GENERATION", gen.as_ref()));
        }
        self.with(&extra)
    }

    /// The `--check` command's, before generation `next` would start.
    pub fn check(&self, next: u32) -> Vars {
        self.with(&[("GRACEEXEC_GENERATION", next.to_string().as_ref())])
    }

    /// An `exec:` probe's, for generation `gen` whose main process is `pid`.
    pub fn probe(&self, gen: u32, pid: i32) -> Vars {
        let (gen, pid) = (gen.to_string(), pid.to_string());
        self.with(&[("GRACEEXEC_GENERATION", gen.as_ref()), ("GRACEEXEC_PID", pid.as_ref())])
    }
}

/// Where the processes start.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Workdir {
    /// graceexec's own working directory, as it is.
    Inherit,
    /// A path changed into by name at each start: `--chdir`, or the
    /// logical directory graceexec was started in (`$PWD`, when it names
    /// the same directory as "."), so that a deploy that repoints a
    /// `current` symlink is followed by the next start rather than the
    /// directory resolved once at start-up.
    Path(PathBuf),
}

impl Workdir {
    /// From `--chdir` (relative to the logical directory) or `$PWD`.
    pub fn detect(chdir: Option<&Path>) -> Workdir {
        let logical = std::env::var_os("PWD").map(PathBuf::from).filter(|p| same_as_cwd(p));
        match (chdir, logical) {
            (Some(c), _) if c.is_absolute() => Workdir::Path(c.to_path_buf()),
            (Some(c), Some(l)) => Workdir::Path(l.join(c)),
            (Some(c), None) => match std::env::current_dir() {
                Ok(cwd) => Workdir::Path(cwd.join(c)),
                Err(_) => Workdir::Path(c.to_path_buf()),
            },
            // Only worth following when it goes through a symlink.
            (None, Some(l)) if std::fs::canonicalize(&l).is_ok_and(|c| c != l) => Workdir::Path(l),
            (None, _) => Workdir::Inherit,
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            Workdir::Inherit => None,
            Workdir::Path(p) => Some(p),
        }
    }

    /// COMMAND as a path to exec: a relative path with a slash is relative
    /// to the working directory, not to graceexec's own.
    pub fn join(&self, command: &Path) -> PathBuf {
        match self.path() {
            Some(d) if command.is_relative() => d.join(command),
            _ => command.to_path_buf(),
        }
    }
}

/// POSIX: $PWD is used only if it is absolute, has no `.` or `..`
/// component, and names the current directory.
fn same_as_cwd(p: &Path) -> bool {
    use std::path::Component;
    let clean = p.is_absolute()
        && p.components().all(|c| !matches!(c, Component::CurDir | Component::ParentDir));
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    clean && id(p).is_some() && id(p) == id(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &Vars) -> Vec<(String, String)> {
        v.iter().map(|(k, v)| (k.to_string_lossy().into(), v.to_string_lossy().into())).collect()
    }

    #[test]
    fn one_builder_for_generations_checks_and_probes() {
        let inherited = [
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("LISTEN_FDS", "2"),
            ("FOO", "bar"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let user = vec![("HOME".into(), "/home/app".into())];
        let env = Env::new(inherited, user, &["XDG_RUNTIME_DIR".into()], &Workdir::Inherit)
            .with_sockets(&["web", "admin"], None);
        let g = vars(&env.generation(3, Path::new("/tmp/n.sock")));
        assert!(g.contains(&("LISTEN_FDS".into(), "2".into())));
        assert!(g.contains(&("NOTIFY_SOCKET".into(), "/tmp/n.sock".into())));
        assert!(g.contains(&("LISTEN_FDNAMES".into(), "web:admin".into())));
        assert_eq!(g.iter().filter(|(k, _)| k == "NOTIFY_SOCKET").count(), 1);
        for v in [vars(&env.probe(3, 42)), vars(&env.check(4))] {
            assert!(v.contains(&("FOO".into(), "bar".into())));
            assert!(v.contains(&("HOME".into(), "/home/app".into())));
            assert!(
                !v.iter().any(|(k, _)| k == "NOTIFY_SOCKET" || k.starts_with("LISTEN_")),
                "{v:?}"
            );
        }
        assert!(vars(&env.probe(3, 42)).contains(&("GRACEEXEC_PID".into(), "42".into())));
    }

    #[test]
    fn relative_commands_follow_the_working_directory() {
        let w = Workdir::Path("/srv/app/current".into());
        assert_eq!(w.join(Path::new("./server")), Path::new("/srv/app/current/./server"));
        assert_eq!(w.join(Path::new("/bin/x")), Path::new("/bin/x"));
        assert_eq!(Workdir::Inherit.join(Path::new("./server")), Path::new("./server"));
    }
}
