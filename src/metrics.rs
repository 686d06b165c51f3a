//! `--metrics-file` and `status --prometheus`: the instance in the
//! Prometheus text exposition format, for node_exporter's textfile
//! collector. The file is replaced atomically (a temporary file renamed
//! over it), so the collector never reads half of it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use nix::fcntl::OFlag;

use crate::control::protocol::Status;

/// A label value, escaped as the format wants (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The metrics of instance `name`; `up` is 0 as graceexec exits.
pub fn render(name: &str, s: &Status, up: bool) -> String {
    let l = format!("{{name=\"{}\"}}", label(name));
    let mut out = String::new();
    let mut metric = |help: &str, kind: &str, key: &str, lines: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {key} {help}\n# TYPE {key} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{key}{labels} {value}");
        }
    };
    let one = |v: String| vec![(l.clone(), v)];
    metric(
        "Whether the graceexec instance runs.",
        "gauge",
        "graceexec_up",
        &one(u8::from(up).to_string()),
    );
    let serving = s.generations.iter().filter(|g| g.phase == "serving").map(|g| g.generation).max();
    metric(
        "The generation that serves (0: none).",
        "gauge",
        "graceexec_generation",
        &one(serving.unwrap_or(0).to_string()),
    );
    let with = |result: &str| format!("{{name=\"{}\",result=\"{result}\"}}", label(name));
    metric(
        "Reloads, by whether the new generation became ready.",
        "counter",
        "graceexec_reloads_total",
        &[(with("ok"), s.reloads_ok.to_string()), (with("failed"), s.reloads_failed.to_string())],
    );
    if let Some(r) = &s.last_reload {
        metric(
            "Whether the last reload succeeded.",
            "gauge",
            "graceexec_last_reload_successful",
            &one(u8::from(r.ok).to_string()),
        );
    }
    if let Some(t) = s.last_reload_ok_unix {
        metric(
            "When the last successful reload ended, in seconds since the epoch.",
            "gauge",
            "graceexec_last_reload_success_timestamp_seconds",
            &one(format!("{t:.3}")),
        );
    }
    metric(
        "Restarts after the serving generation died.",
        "counter",
        "graceexec_restarts_total",
        &one(s.restarts.to_string()),
    );
    let ready = s.generations.iter().filter(|g| g.phase == "serving").find_map(|g| g.ready_ms);
    if let Some(ms) = ready {
        metric(
            "How long the serving generation took to be ready.",
            "gauge",
            "graceexec_ready_seconds",
            &one(format!("{:.3}", ms as f64 / 1000.0)),
        );
    }
    let draining = s.generations.iter().filter(|g| g.phase == "draining").count();
    metric(
        "Generations stopping.",
        "gauge",
        "graceexec_draining_generations",
        &one(draining.to_string()),
    );
    out
}

/// Replace `path` with `text` at once: a temporary file of a name nobody
/// can guess (O_EXCL|O_NOFOLLOW), renamed over it.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let name = path.file_name().context("not a file name")?.to_string_lossy().into_owned();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", crate::notify::random_hex()));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.context("cannot replace it")
}
