//! Replies as a person reads them: `graceexec status`, `list`, and the
//! one-line outcome of `reload`.

use std::time::Duration;

use super::protocol::{Answer, Reply, Status};

fn opt<T: ToString>(n: Option<T>) -> String {
    n.map_or_else(|| "-".into(), |n| n.to_string())
}

pub fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// An age in whole seconds, as `4m 1s`.
fn age(ms: u64) -> String {
    human(Duration::from_secs((ms + 500) / 1000))
}

/// Columns padded to their widest cell, two spaces apart.
pub fn table(rows: &[Vec<String>], indent: &str) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> =
                r.iter().enumerate().map(|(c, s)| format!("{s:<w$}", w = width[c])).collect();
            format!("{indent}{}", cells.join("  ").trim_end())
        })
        .collect()
}

pub fn status_text(name: &str, s: &Status) -> Vec<String> {
    let plural = if s.restarts == 1 { "" } else { "s" };
    let mut out = vec![format!(
        "{name}: pid {}, up {}, state {}, {} restart{plural}",
        s.pid,
        age(s.uptime_ms),
        s.state,
        s.restarts,
    )];
    out.push(format!("  command: {}", s.command.join(" ")));
    let sockets: Vec<Vec<String>> =
        s.sockets.iter().map(|k| vec![k.name.clone(), k.address.clone()]).collect();
    out.extend(table(&sockets, "  "));
    if s.generations.is_empty() {
        out.push("  no generation running".into());
    } else {
        let steered = s.generations.iter().any(|g| g.socket.is_some());
        let mut head = vec!["GEN", "PID", "PHASE", "AGE", "READY AFTER"];
        if steered {
            head.extend(["SOCKET", "SHARE", "QUEUED", "CONNS"]);
        }
        head.push("STATUS");
        let mut rows = vec![head.into_iter().map(String::from).collect::<Vec<_>>()];
        for g in &s.generations {
            let phase = if g.phase.is_empty() { g.state.clone() } else { g.phase.clone() };
            let mut row = vec![
                g.generation.to_string(),
                opt(g.pid),
                phase,
                age(g.age_ms),
                g.ready_ms.map_or_else(|| "-".into(), |ms| format!("{ms} ms")),
            ];
            if steered {
                row.push(opt(g.socket));
                row.push(g.share.map_or_else(|| "-".into(), |p| format!("{p}%")));
                row.push(opt(g.queued));
                row.push(opt(g.connections));
            }
            let waiting = g.waiting.as_ref().map(|w| format!("waiting: {w}"));
            row.push(waiting.or_else(|| g.status.clone()).unwrap_or_else(|| "-".into()));
            rows.push(row);
        }
        out.extend(table(&rows, "  "));
        if let Some(ms) = s.kept_for_ms {
            out.push(format!("  kept for a rollback: {} more", human(Duration::from_millis(ms))));
        }
    }
    if let Some(ms) = s.restart_in_ms {
        out.push(format!("  restarting in {}", human(Duration::from_millis(ms))));
    }
    if let Some(e) = s.exited.last() {
        out.push(format!(
            "last exit: generation {} (pid {}) with {}, {} ago",
            e.generation,
            e.pid,
            e.how,
            age(e.ago_ms)
        ));
    }
    out.push(match &s.last_reload {
        None => "last reload: none".into(),
        Some(r) if r.ok => format!(
            "last reload: generation {} ready after {} ms, {} ago",
            opt(r.generation),
            opt(r.ready_ms),
            age(r.ago_ms)
        ),
        Some(r) => format!(
            "last reload: failed {} ago: {}",
            age(r.ago_ms),
            r.error.as_deref().unwrap_or("unknown error")
        ),
    });
    out
}

/// The `list` row of one instance.
pub fn list_row(name: &str, control: &str, s: &Status) -> Vec<String> {
    let gen = s.generations.iter().filter(|g| g.state == "ready").map(|g| g.generation).max();
    let sockets: Vec<&str> = s.sockets.iter().map(|k| k.address.as_str()).collect();
    vec![
        name.to_string(),
        s.pid.to_string(),
        opt(gen),
        s.state.clone(),
        if sockets.is_empty() { "-".into() } else { sockets.join(",") },
        control.to_string(),
    ]
}

/// What `reload` prints: (stdout line, stderr lines); stderr lines mean
/// the reload failed.
pub fn reload_text(name: &str, r: &Reply) -> (Option<String>, Vec<String>) {
    match &r.answer {
        Answer::ReloadAccepted => (Some(format!("reload of {name} requested")), vec![]),
        Answer::Reloaded { generation, pid, ready_ms, share } => {
            let mut line = format!(
                "reloaded {name}: generation {generation} (pid {}) ready after {ready_ms} ms",
                opt(*pid)
            );
            if let Some(pct) = share {
                line.push_str(&format!(
                    "; a canary with {pct}% of new connections until `graceexec promote` or `rollback`"
                ));
            }
            (Some(line), vec![])
        }
        Answer::ReloadFailed { error, serving, stderr, .. } => {
            let mut msg = format!("graceexec: reload of {name} failed: {error}");
            if let Some(g) = serving {
                msg.push_str(&format!("; generation {g} keeps serving"));
            }
            let mut err = vec![msg];
            if !stderr.is_empty() {
                err.push("graceexec: last lines of its output:".into());
                err.extend(stderr.iter().map(|l| format!("  | {l}")));
            }
            (None, err)
        }
        Answer::Error { error } => {
            (None, vec![format!("graceexec: reload of {name} failed: {error}")])
        }
        other => (None, vec![format!("graceexec: {name} answered a reload with {other:?}")]),
    }
}
