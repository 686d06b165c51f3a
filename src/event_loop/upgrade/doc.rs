//! The upgrade document: everything the new image needs, as one versioned
//! JSON object in a memfd whose number the new image finds in
//! `GRACEEXEC_RESUME_FD`. Open files cross the exec as themselves (their
//! FD_CLOEXEC cleared) and the document names them by number.
//!
//! The rule for versions: a field added later gets `#[serde(default)]`
//! and the version stays; a change that old readers would misread bumps
//! `VERSION`, and `parse` keeps a reader for every older version, so that
//! any graceexec can be upgraded to any newer one. A binary that gets a
//! version newer than it knows refuses it in the dry run, and the running
//! image carries on.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::control::protocol::EventLine;
use crate::control::server::{ConnId, ServerOut};
use crate::output::CapturedOut;
use crate::sockets::SocketsOut;
use crate::supervisor::{Carried, GenId};
use crate::watch::WatchOut;
use crate::watchdog::WatchdogOut;

/// The newest version this build writes and reads.
pub const VERSION: u32 = 1;
/// The memfd holding the document, in the new image.
pub const RESUME_FD: &str = "GRACEEXEC_RESUME_FD";
/// Set when the new image could not take over and went back to the
/// previous one: why.
pub const FAILED: &str = "GRACEEXEC_UPGRADE_FAILED";
/// argv[1] of the dry run: `graceexec __upgrade-check`, the document at fd 3.
pub const CHECK_MODE: &str = "__upgrade-check";

/// A fresh token for a dry run. std's RandomState is seeded from the
/// kernel's randomness once per process and differs at each call after.
pub fn token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// What a dry run that can take `token`'s document over answers.
pub fn ok_line(version: &str, token: u64) -> String {
    format!("ok {version} {token}")
}

/// The version a dry run's `line` names, if it is the answer for `token`.
pub fn answered(line: &str, token: u64) -> Option<&str> {
    let (version, said) = line.strip_prefix("ok ")?.rsplit_once(' ')?;
    (said.parse() == Ok(token)).then_some(version)
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Doc {
    pub version: u32,
    /// The graceexec version that wrote it.
    pub writer: String,
    /// The process it belongs to: an upgrade keeps the pid.
    pub pid: u32,
    /// The `upgrade` client, answered by the image that takes over.
    pub requester: ConnId,
    /// A random number the dry run must say back (`ok VERSION TOKEN`):
    /// proof that it read this document, which a program that only prints
    /// `ok` never gives. Such a program, executed for real, would end the
    /// instance and every generation with it.
    pub token: u64,
    /// An fd of the binary that wrote the document, opened before the
    /// exec: where the new image goes back to if it cannot take over.
    pub previous: Option<i32>,
    pub log_level: u8,
    pub cfg: Config,
    pub sup: Carried,
    pub rt: LoopOut,
}

/// The event loop's part.
#[derive(Debug, Serialize, Deserialize)]
pub struct LoopOut {
    pub uptime: Duration,
    pub gens: Vec<GenOut>,
    /// Output pipes, of running generations and of gone ones whose
    /// orphans still hold them.
    pub outputs: Vec<(GenId, CapturedOut)>,
    pub tails: Vec<(GenId, Vec<String>)>,
    pub watched: Vec<String>,
    /// The `--watch` inotify instance (None without --watch).
    pub watch: Option<WatchOut>,
    pub events: Vec<EventLine>,
    pub next_seq: u64,
    pub followers: Vec<ConnId>,
    pub sockets: SocketsOut,
    pub control: ServerOut,
    pub notify_dir: PathBuf,
    pub watchdog: Option<WatchdogOut>,
    pub pid_file: Option<(PathBuf, u32)>,
    #[serde(default)]
    pub last_ok_reload: Option<f64>,
    /// graceexec's own stdout and stderr not written yet.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GenOut {
    pub id: GenId,
    pub leader: i32,
    pub main: i32,
    pub notify: (i32, PathBuf),
    pub status: Option<String>,
}

/// Read a document of any version this build knows.
pub fn parse(bytes: &[u8]) -> Result<Doc, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("the upgrade document is not JSON: {e}"))?;
    let version = v.get("version").and_then(serde_json::Value::as_u64);
    match version {
        Some(1) => {
            let mut d: Doc = serde_json::from_value(v)
                .map_err(|e| format!("cannot read the upgrade document (version 1): {e}"))?;
            // Written before park_at_stop (0.1.0): --fdstore says it.
            d.cfg.policy.park_at_stop |= d.cfg.fdstore;
            Ok(d)
        }
        Some(n) => Err(format!(
            "the upgrade document is version {n}; graceexec {} reads versions 1 to {VERSION}",
            env!("CARGO_PKG_VERSION")
        )),
        None => Err("the upgrade document has no version".into()),
    }
}

impl Doc {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("the upgrade document always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_version_is_refused_with_the_versions_this_build_reads() {
        let err = parse(br#"{"version": 2, "writer": "9.0.0"}"#).unwrap_err();
        assert!(err.contains("version 2") && err.contains("reads versions 1 to 1"), "{err}");
    }

    #[test]
    fn only_the_answer_with_the_token_counts() {
        let t = token();
        assert_ne!(t, token(), "each dry run gets its own");
        assert_eq!(answered(&ok_line("1.2.3", t), t), Some("1.2.3"));
        assert_eq!(answered(&ok_line("1.2.3", t), t.wrapping_add(1)), None);
        assert_eq!(answered("ok 9.9.9", t), None);
        assert_eq!(answered(&format!("ok {t}"), t), None, "no version");
    }

    /// What graceexec 0.1.0 handed its dry run (two sockets, --watch,
    /// --check, --pid-file, --metrics-file, --log-prefix, an `events`
    /// follower, after a reload): a later build must still read it, as the
    /// rule for versions above says. A change that fails this needs a new
    /// VERSION and a reader for this one.
    #[test]
    fn a_version_1_document_written_by_0_1_0_stays_readable() {
        let d = parse(include_bytes!("fixtures/v1-0.1.0.json")).unwrap();
        assert_eq!((d.version, d.writer.as_str()), (1, "0.1.0"));
        assert_eq!(d.cfg.name, "api");
        let rt = &d.rt;
        assert_eq!((rt.gens.len(), rt.followers.len(), rt.events.len()), (1, 1, 12));
        assert!(rt.watch.is_some() && rt.watchdog.is_some() && rt.pid_file.is_some());
        assert!(!d.cfg.policy.park_at_stop);
    }

    #[test]
    fn a_version_1_document_with_fdstore_but_no_park_at_stop_parks_at_stop() {
        let text = include_str!("fixtures/v1-0.1.0.json")
            .replace(r#""fdstore":false"#, r#""fdstore":true"#);
        assert!(!text.contains("park_at_stop"), "0.1.0 did not write it");
        let d = parse(text.as_bytes()).unwrap();
        assert!(d.cfg.fdstore && d.cfg.policy.park_at_stop);
    }

    #[test]
    fn a_document_without_a_version_or_not_json_is_refused() {
        assert!(parse(b"{}").unwrap_err().contains("no version"));
        assert!(parse(b"\x00garbage").unwrap_err().contains("not JSON"));
        let err = parse(br#"{"version": 1}"#).unwrap_err();
        assert!(err.contains("cannot read the upgrade document (version 1)"), "{err}");
    }
}
