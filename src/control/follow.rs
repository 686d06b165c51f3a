//! `graceexec events`: one line per event, as they happen, until the
//! instance exits (EOF: the control socket is close-on-exec).

use std::io::Write;
use std::time::Duration;

use super::client::{self, Which};
use super::protocol::{Answer, EventLine, Request};
use super::Fail;

/// Long enough to mean "until it exits"; a deadline the clock cannot overflow.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub fn events(w: Which, json: bool, since: Option<u64>) -> i32 {
    let dir = super::paths::default_dir();
    let (name, mut session) =
        match client::open_session(w, &dir, Request::Events { since }, FOREVER) {
            Ok(s) => s,
            Err(code) => return code,
        };
    let mut out = std::io::stdout().lock();
    let mut first = session.pending.take();
    loop {
        let reply =
            match first.take().map(|r| Ok(Some(r))).unwrap_or_else(|| session.session.next()) {
                Ok(Some(r)) => r,
                // The instance has exited.
                Ok(None) => return client::EXIT_OK,
                Err(Fail::Timeout) => continue,
                Err(e) => {
                    eprintln!("graceexec: lost {name}'s events: {e:?}");
                    return client::EXIT_FAILED;
                }
            };
        let line = match &reply.answer {
            Answer::Event(_) if json => reply.line().trim_end().to_string(),
            Answer::Event(e) => text(e.as_ref()),
            Answer::Lagged { missed } => {
                eprintln!("graceexec: fell behind {name}'s events ({missed} missed); dropped");
                return client::EXIT_FAILED;
            }
            Answer::Error { error } => {
                eprintln!("graceexec: {name}: {error}");
                return client::EXIT_FAILED;
            }
            _ => continue,
        };
        // A reader that has gone (`| head`) ends the command.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return client::EXIT_OK;
        }
    }
}

/// `12 09:31:02.114 reload_ready generation 4 (pid 20311) took 212 ms`.
fn text(e: &EventLine) -> String {
    let clock = e.time.get(11..23).unwrap_or(&e.time);
    let mut s = format!("{} {clock} {}", e.seq, e.event);
    if let Some(g) = e.generation {
        s.push_str(&format!(" generation {g}"));
    }
    if let Some(p) = e.pid {
        s.push_str(&format!(" (pid {p})"));
    }
    let mut extra = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            s.push_str(&format!(" {k} {v}"));
        }
    };
    extra("took", e.took_ms.map(|ms| format!("{ms} ms")));
    extra("with", e.how.clone());
    extra("in", e.delay_ms.map(|ms| format!("{ms} ms")));
    extra("from generation", e.from.map(|g| g.to_string()));
    extra("version", e.version.clone());
    if let Some(shares) = &e.shares {
        let list: Vec<String> = shares.iter().map(|(g, p)| format!("{g}: {p}%")).collect();
        s.push_str(&format!(" {}", list.join(", ")));
    }
    if let Some(why) = &e.why {
        s.push_str(&format!(": {why}"));
    }
    s
}
