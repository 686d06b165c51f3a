//! What `graceexec upgrade` carries over, pinned where it is cheap: the
//! open files (no fd gained or lost over many upgrades), the pid file and
//! a unix socket file, a kept generation, a held partial output line, a
//! signal sent while the new image starts, and graceexec's own
//! NOTIFY_SOCKET.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;

use crate::events::follow;
use crate::harness::*;
use crate::upgrade::{copy_of_graceexec, exe, serving_under_load, upgrade_to};
use crate::upgrade_more::script;

/// graceexec's open files, but for connections accepted on its control
/// socket: `status` clients come and go, and graceexec holds each one
/// until it has read its end, so counting them would make the count
/// depend on when it was taken. They show in /proc/net/unix with the
/// control socket's path, not listening (flags without __SO_ACCEPTCON).
fn fds(pid: i32) -> Vec<String> {
    let control = runtime_dir().join("graceexec/server.sock");
    let net = std::fs::read_to_string("/proc/net/unix").unwrap();
    let accepted: Vec<String> = net
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let connected = f.get(3) != Some(&"00010000");
            let ours = f.get(7).is_some_and(|p| std::path::Path::new(p) == control);
            (ours && connected).then(|| format!("socket:[{}]", f[6]))
        })
        .collect();
    let mut out: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.display().to_string())
        .filter(|t| !accepted.contains(t))
        .collect();
    out.sort();
    out
}

fn fd_count(pid: i32) -> usize {
    fds(pid).len()
}

/// Every line `from` gives, as it comes, until it closes.
fn collect_lines(from: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// Two copies of graceexec to upgrade between, so each upgrade really
/// changes the binary.
fn two_copies(dir: &TempDir) -> [PathBuf; 2] {
    [copy_of_graceexec(dir, "graceexec-a"), copy_of_graceexec(dir, "graceexec-b")]
}

#[test]
fn twenty_upgrades_keep_the_fd_count_the_pid_file_and_the_unix_socket() {
    let dir = TempDir::new();
    let copies = two_copies(&dir);
    let (pid_file, sock) = (dir.path("ge.pid"), dir.path("web.sock"));
    let unix = format!("unix:{}", sock.display());
    let args = ["-l", &unix, "--pid-file", pid_file.to_str().unwrap()];
    let (mut ge, load) = serving_under_load(&args, &[]);
    let mut events = follow("server");
    let seen = collect_lines(events.stdout.take().unwrap());
    let server = ge.gen_pid(1);
    // The follower's connection is open from here on. `status` clients
    // come and go, so the counts are compared once they are gone.
    let kinds = |kind: &str| seen.lock().unwrap().iter().filter(|l| l.contains(kind)).count();
    wait_until("the follower to see the start", LONG, || kinds("\"started\"") == 1);
    let before_fds = fds(ge.pid());
    let before = before_fds.len();
    let raw = std::fs::read_dir(format!("/proc/{}/fd", ge.pid())).unwrap().count();
    assert!(before < raw, "the follower's connection is left out of the count");
    for i in 0..20 {
        let (code, _, err) = upgrade_to(&copies[i % 2]);
        assert_eq!(code, 0, "upgrade {i}: {err}");
    }
    assert_eq!(exe(ge.pid()), copies[1]);
    let mut last = 0;
    let same = poll_until(LONG, || {
        last = fd_count(ge.pid());
        last == before
    });
    assert!(
        same,
        "{before} fds before 20 upgrades, {last} after: {before_fds:?} then {:?}",
        fds(ge.pid())
    );
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), ge.pid().to_string());
    assert_eq!(pid_of(&get_unix(&sock, "/").unwrap()), server);
    assert_eq!(ge.gen_pid(1), server);
    wait_until("the follower to see every upgrade", LONG, || kinds("\"upgraded\"") == 20);
    load.finish().assert_clean();
    let (code, _, err) = ctl(&["stop"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ge.wait_exit(), 0);
    assert!(!pid_file.exists(), "the pid file is removed at the exit");
    assert!(!sock.exists(), "the socket file is removed at the exit");
    let _ = events.wait();
}

#[test]
fn a_kept_generation_survives_an_upgrade_and_rollback_returns_to_it() {
    let dir = TempDir::new();
    let new = copy_of_graceexec(&dir, "graceexec-new");
    let (ge, load) = serving_under_load(&["--keep-old", "5m"], &[]);
    let addr = ge.tcp_addr();
    let old = ge.gen_pid(1);
    let (code, _, err) = ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = upgrade_to(&new);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 generations kept"), "{out}");
    let s = ge.status().unwrap();
    assert!(s["kept_for_ms"].as_u64().is_some_and(|ms| ms > 0), "{s}");
    let (code, _, err) = ctl(&["rollback"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(pid_of(&get(addr, "/").unwrap()), old, "generation 1 serves again");
    ge.wait_exited(2);
    load.wait_more(20);
    load.finish().assert_clean();
}

#[test]
fn a_partial_line_is_held_across_an_upgrade() {
    // Half a line on each stream before the upgrade, the rest after it:
    // each comes out as one line, prefixed once. A subshell of the server
    // writes them, into the same pipes.
    let dir = TempDir::new();
    let new = copy_of_graceexec(&dir, "graceexec-new");
    let go = dir.path("go");
    let (a, b) = (dir.path("a"), dir.path("b"));
    let wait = |f: &PathBuf| format!("while [ ! -e {} ]; do sleep 0.02; done", f.display());
    let body = format!(
        "({}; printf 'err-first' >&2; printf 'out-first'; touch {}\n\
         {}; printf ' err-second\\n' >&2; printf ' out-second\\n') &\nexec {} \"$@\"\n",
        wait(&a),
        b.display(),
        wait(&go),
        server().display()
    );
    let script = script(&dir, "server.sh", &body);
    let mut ge = Ge::spawn(
        command(&[
            "-l",
            "127.0.0.1:0",
            "--ready",
            "notify",
            "--log-prefix",
            "--",
            script.to_str().unwrap(),
        ]),
        &[],
    );
    // Its own lines are out (they come before READY=1): the half lines
    // are the only bytes in the pipes.
    ge.wait_ready(1);
    let server = ge.gen_pid(1);
    std::fs::write(&a, "").unwrap();
    wait_until("the half lines", LONG, || b.exists());
    let (code, _, err) = upgrade_to(&new);
    assert_eq!(code, 0, "{err}");
    std::fs::write(&go, "").unwrap();
    for want in ["err-first err-second", "out-first out-second"] {
        let line = format!("[gen 1 pid {server}] {want}");
        let found = poll_until(LONG, || ge.log().lines().any(|l| l == line));
        assert!(found, "no line {line:?} in the log:\n{}", ge.log());
    }
    let (code, _, err) = ctl(&["stop"]);
    assert_eq!(code, 0, "{err}");
    ge.wait_exit();
}

#[test]
fn a_sighup_sent_as_the_new_image_starts_still_reloads() {
    // Signals stay pending across execve: one that comes while the new
    // image starts is read by its signalfd.
    let dir = TempDir::new();
    let copies = two_copies(&dir);
    let (mut ge, load) = serving_under_load(&[], &[]);
    for i in 0..5u32 {
        let runtime = runtime_dir();
        let binary = copies[i as usize % 2].to_str().unwrap().to_string();
        let client =
            std::thread::spawn(move || ctl_in(&runtime, &["upgrade", "--binary", binary.as_str()]));
        wait_until("the exec", LONG, || ge.log().matches("executing").count() > i as usize);
        ge.signal(Signal::SIGHUP);
        let (code, _, err) = client.join().unwrap();
        assert_eq!(code, 0, "upgrade {i}: {err}");
        ge.wait_ready(i as u64 + 2);
        ge.assert_up("the reload");
    }
    load.finish().assert_clean();
}

#[test]
fn systemd_still_hears_reloads_after_an_upgrade() {
    let dir = TempDir::new();
    let new = copy_of_graceexec(&dir, "graceexec-new");
    let path = dir.path("notify.sock");
    let sd = UnixDatagram::bind(&path).unwrap();
    sd.set_read_timeout(Some(LONG)).unwrap();
    let next = || {
        let mut buf = [0u8; 4096];
        let n = sd.recv(&mut buf).expect("a notify message within the deadline");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ge = Ge::start(
        &["-l", "127.0.0.1:0", "--ready", "notify"],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    assert!(next().starts_with("READY=1\n"));
    let (code, _, err) = upgrade_to(&new);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ctl(&["reload"]).0, 0);
    assert!(next().starts_with("RELOADING=1\n"));
    let m = next();
    assert!(m.starts_with("READY=1\nSTATUS=serving: generation 2"), "{m}");
    drop(ge);
}
