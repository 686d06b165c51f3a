//! `graceexec events` and `--metrics-file`: what happened, in order, for
//! people and for monitoring.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::harness::*;

/// `graceexec events --json --since 0` for instance `name`, running.
pub(crate) fn follow(name: &str) -> Child {
    let mut c = command(&["events", "--json", "--since", "0", "--name", name]);
    c.stdout(Stdio::piped());
    c.spawn().unwrap()
}

/// Read events from `child` until one satisfies `last`; all read so far.
pub(crate) fn read_until(child: &mut Child, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(serde_json::from_str::<Value>(&line).unwrap()).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        let ev = rx.recv_timeout(LONG).expect("the event stream ended or stalled");
        let done = last(&ev);
        seen.push(ev);
        if done {
            return seen;
        }
    }
}

/// The (event, generation) pairs, in order.
pub(crate) fn kinds(events: &[Value]) -> Vec<(String, Option<u64>)> {
    events
        .iter()
        .map(|e| (e["event"].as_str().unwrap().to_string(), e["generation"].as_u64()))
        .collect()
}

/// Whether `want` appears in `got` in this order (other events between).
pub(crate) fn in_order(got: &[(String, Option<u64>)], want: &[(&str, Option<u64>)]) -> bool {
    let mut it = got.iter();
    want.iter().all(|(k, g)| it.any(|(gk, gg)| gk == k && gg == g))
}

/// The delays (ms) of the first `n` crash restarts instance `name`
/// scheduled, from its `restart_scheduled` events: typed, where the log's
/// "restarting in 100ms" is wording.
pub(crate) fn restart_delays(name: &str, n: usize) -> Vec<u64> {
    let mut events = follow(name);
    let seen = std::cell::Cell::new(0);
    let all = read_until(&mut events, |e| {
        seen.set(seen.get() + usize::from(e["event"] == "restart_scheduled"));
        seen.get() == n
    });
    let _ = events.kill();
    let _ = events.wait();
    let delays = all.iter().filter(|e| e["event"] == "restart_scheduled");
    delays.map(|e| e["delay_ms"].as_u64().expect("a delay_ms")).collect()
}

fn is(e: &Value, kind: &str, gen: u64) -> bool {
    e["event"] == kind && e["generation"] == gen
}

#[test]
fn a_good_reload_tells_its_steps_in_order() {
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify", "--name", "ev1"], &[]);
    ge.wait_ready(1);
    let mut events = follow("ev1");
    assert_eq!(ctl(&["reload", "--name", "ev1"]).0, 0);
    let seen = read_until(&mut events, |e| is(e, "exited", 1));
    let want = [
        ("started", Some(1)),
        ("ready", Some(1)),
        ("reload_requested", None),
        ("reload_started", Some(2)),
        ("started", Some(2)),
        ("ready", Some(2)),
        ("reload_ready", Some(2)),
        ("shares", None),
        ("drained", Some(1)),
        ("stopping", Some(1)),
        ("exited", Some(1)),
    ];
    assert!(in_order(&kinds(&seen), &want), "{:#?}", kinds(&seen));
    for e in &seen {
        assert!(
            e["mono_ms"].as_u64().is_some() && e["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{e}"
        );
    }
    let started = seen.iter().find(|e| is(e, "started", 2)).unwrap();
    assert_eq!(started["pid"], ge.gen_pid(2));
    let _ = events.kill();
}

#[test]
fn a_failed_reload_and_a_crash_restart_tell_theirs() {
    let ge = Ge::start(
        &["-l", "127.0.0.1:0", "--ready", "notify", "--name", "ev2"],
        &[("EXAMPLE_FAIL_GEN", "2")],
    );
    ge.wait_ready(1);
    let mut events = follow("ev2");
    assert_eq!(ctl(&["reload", "--name", "ev2"]).0, 1);
    kill(Pid::from_raw(ge.gen_pid(1)), Signal::SIGKILL).unwrap();
    let seen = read_until(&mut events, |e| is(e, "ready", 3));
    let want = [
        ("reload_started", Some(2)),
        ("started", Some(2)),
        ("exited", Some(2)),
        ("reload_failed", Some(2)),
        ("exited", Some(1)),
        ("restart_scheduled", None),
        ("started", Some(3)),
        ("ready", Some(3)),
    ];
    assert!(in_order(&kinds(&seen), &want), "{:#?}", kinds(&seen));
    let failed = seen.iter().find(|e| is(e, "reload_failed", 2)).unwrap();
    assert!(failed["why"].as_str().unwrap().contains("exited with status 3"), "{failed}");
    let crash = seen.iter().find(|e| is(e, "exited", 1)).unwrap();
    assert_eq!(
        (crash["how"].as_str(), crash["code"].as_i64()),
        (Some("signal SIGKILL"), Some(137))
    );
    let _ = events.kill();
}

#[test]
fn a_stalled_follower_does_not_delay_reloads() {
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify", "--name", "ev3"], &[]);
    ge.wait_ready(1);
    // A follower that reads nothing at all: stopped.
    let mut stalled = follow("ev3");
    kill(Pid::from_raw(stalled.id() as i32), Signal::SIGSTOP).unwrap();
    for gen in 2..=40 {
        let (code, _, err) = ctl(&["reload", "--name", "ev3", "--timeout", "20s"]);
        assert_eq!(code, 0, "reload to generation {gen}: {err}");
    }
    let _ = kill(Pid::from_raw(stalled.id() as i32), Signal::SIGKILL);
    let _ = stalled.wait();
}

/// A follower that reconnects passes the last number it saw and gets what
/// came after it, no more; one without `--since` gets only what is new.
#[test]
fn since_replays_what_came_after_and_no_since_only_what_is_new() {
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify", "--name", "ev6"], &[]);
    ge.wait_ready(1);
    assert_eq!(ctl(&["reload", "--name", "ev6"]).0, 0);
    let mut all = follow("ev6");
    let seen = read_until(&mut all, |e| is(e, "reload_ready", 2));
    let last = seen.last().unwrap()["seq"].as_u64().unwrap();
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "--since 0 replays all, numbered from 1");
    let _ = all.kill();
    let spawn = |args: &[&str]| {
        let mut c = command(&[&["events", "--json", "--name", "ev6"], args].concat());
        c.stdout(Stdio::piped());
        c.spawn().unwrap()
    };
    let mut resumed = spawn(&["--since", &(last - 2).to_string()]);
    let first = read_until(&mut resumed, |_| true);
    assert_eq!(first[0]["seq"], last - 1, "{first:?}");
    let _ = resumed.kill();
    let mut live = spawn(&[]);
    // Nothing is replayed: its first line is one of a reload asked from
    // here on (until one is seen: `status` cannot tell when the follower
    // is registered), numbered after what came before.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let first = read_until(&mut live, |_| true);
        let _ = tx.send(());
        let _ = live.kill();
        first
    });
    wait_until("the follower to see a reload", LONG, || {
        assert_eq!(ctl(&["reload", "--name", "ev6"]).0, 0);
        rx.try_recv().is_ok()
    });
    let first = reader.join().unwrap();
    assert!(first[0]["seq"].as_u64() > Some(last), "{first:?}");
}

/// prometheus_client's own parser, from the interpreter setup.sh prepared.
fn python() -> String {
    let recorded = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/python-for-tests");
    std::fs::read_to_string(recorded)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "python3".into())
}

#[test]
#[ignore = "needs prometheus_client (scripts/setup.sh installs it): run with --ignored"]
fn the_metrics_file_parses_and_its_counters_match_the_events() {
    let dir = TempDir::new();
    let file = dir.path("graceexec.prom");
    let f = file.to_str().unwrap();
    let ge = Ge::start(
        &["-l", "127.0.0.1:0", "--ready", "notify", "--name", "ev4", "--metrics-file", f],
        &[("EXAMPLE_FAIL_GEN", "3")],
    );
    ge.wait_ready(1);
    assert_eq!(ctl(&["reload", "--name", "ev4"]).0, 0);
    assert_eq!(ctl(&["reload", "--name", "ev4"]).0, 1);
    kill(Pid::from_raw(ge.gen_pid(2)), Signal::SIGKILL).unwrap();
    ge.wait_ready(4);
    let parse = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        out[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
print(json.dumps(out))
"#;
    let mut seen = Value::Null;
    wait_until("the metrics to show the restart", LONG, || {
        let out = std::process::Command::new(python()).args(["-c", parse, f]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        seen = serde_json::from_slice(&out.stdout).unwrap();
        seen[r#"graceexec_restarts_total{"name": "ev4"}"#] == 1.0
    });
    let m = |k: &str| seen[k].as_f64().unwrap_or(-1.0);
    assert_eq!(m(r#"graceexec_up{"name": "ev4"}"#), 1.0, "{seen}");
    assert_eq!(m(r#"graceexec_reloads_total{"name": "ev4", "result": "ok"}"#), 1.0, "{seen}");
    assert_eq!(m(r#"graceexec_reloads_total{"name": "ev4", "result": "failed"}"#), 1.0, "{seen}");
    assert_eq!(m(r#"graceexec_last_reload_successful{"name": "ev4"}"#), 0.0, "{seen}");
    assert_eq!(m(r#"graceexec_generation{"name": "ev4"}"#), 4.0, "{seen}");
    // The time of the last *successful* reload (the convention's meaning),
    // not of the failed one that came after it.
    let ok_at = m(r#"graceexec_last_reload_success_timestamp_seconds{"name": "ev4"}"#);
    let s = status_json("ev4").unwrap();
    let failed_at = s["last_reload_unix"].as_f64().unwrap();
    assert!(ok_at > 0.0 && ok_at < failed_at, "{seen}\n{s}");
    assert!((s["last_reload_ok_unix"].as_f64().unwrap() - ok_at).abs() < 0.002, "{s}");
    // The same counts as `status --prometheus`.
    let (code, text, _) = ctl(&["status", "--name", "ev4", "--prometheus"]);
    assert_eq!(code, 0);
    assert!(text.contains("graceexec_reloads_total{name=\"ev4\",result=\"failed\"} 1"), "{text}");
}
