//! systemd's side of sd_notify, --check, --watch, --compat, --user, and the
//! generated completions.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::harness::*;

/// A test-owned NOTIFY_SOCKET, as systemd would give graceexec.
struct FakeSystemd {
    _dir: TempDir,
    sock: UnixDatagram,
    path: String,
}

impl FakeSystemd {
    fn new() -> FakeSystemd {
        let dir = TempDir::new();
        let path = dir.path("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(LONG)).unwrap();
        FakeSystemd { _dir: dir, sock, path: path.to_str().unwrap().to_string() }
    }
    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).expect("a notify message within the deadline");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
    /// The next message's first line (the state, or STATUS=).
    fn next_state(&self) -> String {
        self.next().lines().next().unwrap_or_default().to_string()
    }
}

#[test]
fn systemd_hears_ready_reloading_ready_and_stopping_in_order() {
    let sd = FakeSystemd::new();
    let mut ge = Ge::start(
        &["-l", "127.0.0.1:0", "--ready", "notify"],
        &[("NOTIFY_SOCKET", &sd.path), ("EXAMPLE_FAIL_GEN", "3")],
    );
    let m = sd.next();
    assert!(m.starts_with("READY=1\nSTATUS=serving: generation 1 (pid "), "{m}");

    assert_eq!(ctl(&["reload"]).0, 0);
    let m = sd.next();
    let usec = m.lines().find_map(|l| l.strip_prefix("MONOTONIC_USEC=")).unwrap_or("");
    assert!(m.starts_with("RELOADING=1\n") && usec.parse::<u64>().is_ok(), "{m}");
    assert_eq!(sd.next_state(), "READY=1");

    // A failed reload also ends with READY=1: the old generation serves.
    assert_eq!(ctl(&["reload"]).0, 1);
    assert_eq!(sd.next_state(), "RELOADING=1");
    let m = sd.next();
    assert!(m.starts_with("READY=1\nSTATUS=serving: generation 2"), "{m}");
    assert!(m.contains("reload failed"), "{m}");

    ge.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(sd.next_state(), "STOPPING=1");
    ge.wait_exit();
}

/// Issue 10: systemd's STATUS= shows both generations of a split, and the
/// one left after the promote.
#[test]
fn systemd_hears_a_canarys_shares_and_its_promotion() {
    let sd = FakeSystemd::new();
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify"], &[("NOTIFY_SOCKET", &sd.path)]);
    assert!(sd.next().starts_with("READY=1\nSTATUS=serving: generation 1 (pid "));
    assert_eq!(ctl(&["reload", "--canary", "25"]).0, 0);
    let (old, new) = (ge.gen_pid(1), ge.gen_pid(2));
    let split = format!(
        "STATUS=serving: generation 1 (pid {old}) (75.0%), generation 2 (pid {new}) (25.0%)"
    );
    let mut seen = Vec::new();
    while !seen.last().is_some_and(|m: &String| m.contains(&split)) {
        seen.push(sd.next());
        assert!(seen.len() < 10, "no split status in {seen:#?}");
    }
    assert_eq!(ctl(&["promote"]).0, 0);
    let m = sd.next();
    assert_eq!(m, format!("STATUS=serving: generation 2 (pid {new})"), "after {seen:#?}");
}

#[test]
fn check_failure_fails_the_reload_and_starts_nothing() {
    let dir = TempDir::new();
    let ok = dir.path("config-ok");
    let check = format!("echo config broken >&2; test -e {}", ok.display());
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify", "--check", &check], &[]);
    ge.wait_ready(1);
    let (code, _, err) = ctl(&["reload"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("exited with status 1"), "{err}");
    assert!(err.contains("  | config broken"), "{err}");
    assert_eq!(ge.started(), 1, "{}", ge.log());

    std::fs::write(&ok, "").unwrap();
    let (code, out, err) = ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("generation 2"), "{out}");
}

#[test]
fn watch_reloads_when_the_file_is_replaced() {
    let dir = TempDir::new();
    let watched = dir.path("release");
    std::fs::write(&watched, "v1").unwrap();
    let w = watched.to_str().unwrap();
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify", "--watch", w], &[]);
    ge.wait_ready(1);
    std::fs::write(&watched, "v2").unwrap();
    ge.wait_ready(2);
    // The log says which file it was, not "a watched file changed".
    ge.wait_log(&format!("{w} changed: reloading"));
    // Replaced by a rename, as a deploy that copies then moves does.
    let tmp = dir.path("release.new");
    std::fs::write(&tmp, "v3").unwrap();
    std::fs::rename(&tmp, &watched).unwrap();
    ge.wait_ready(3);
}

/// Another file in the watched file's directory changes nothing. That
/// nothing happened needs a witness that the 300 ms debounce could have
/// fired: a reload whose candidate is never ready, which fails only after
/// --ready-timeout (2 s) on graceexec's own clock. A reload armed by the
/// unrelated write would have come due during it and, merged into its
/// follow-up, started generation 3 as soon as generation 2 failed.
#[test]
fn watch_ignores_other_files_in_the_same_directory() {
    let dir = TempDir::new();
    let watched = dir.path("release");
    std::fs::write(&watched, "v1").unwrap();
    let name = "watch-other";
    let w = watched.to_str().unwrap();
    let args = ["-l", "127.0.0.1:0", "--ready", "notify", "--ready-timeout", "2s", "--watch", w];
    let mut args = args.to_vec();
    args.extend(["--name", name]);
    let mut ge = Ge::start(&args, &[("EXAMPLE_NEVER_READY_GEN", "2")]);
    wait_ready(&mut ge, name, 1);
    std::fs::write(dir.path("other"), "x").unwrap();
    let (code, _, err) = ctl(&["reload", "--name", name]);
    assert_eq!(code, 1, "generation 2 is never ready: {err}");
    let status = status_json(name).unwrap();
    assert!(!gens_in_status(&status).contains(&3), "a reload followed: {status}");
    // The watched file still reloads, and its reload is the only other one.
    std::fs::write(&watched, "v2").unwrap();
    wait_ready(&mut ge, name, 3);
    let status = status_json(name).unwrap();
    assert!(gens_in_status(&status).iter().all(|g| *g <= 3), "{status}");
}

#[test]
fn server_starter_port_names_each_address_and_fd() {
    let dir = TempDir::new();
    let sock = dir.path("s.sock");
    let unix = format!("unix:{}", sock.display());
    let ge = Ge::start(
        &["-l", "127.0.0.1:0", "-l", &unix, "--compat", "server-starter", "--ready", "notify"],
        &[],
    );
    ge.wait_ready(1);
    let i = info(ge.tcp_addr());
    let expected = format!("{}=3;{}=4", ge.tcp_addr(), sock.display());
    assert_eq!(i["server_starter_port"], expected);
    assert_eq!(i["server_starter_generation"], "1");
}

/// Server::Starter's own parser reads what graceexec exports.
#[test]
#[ignore = "needs perl's Server::Starter (scripts/setup.sh installs it as root): run with --ignored"]
fn server_starter_perl_module_reads_the_ports() {
    let has_module = std::process::Command::new("perl")
        .args(["-MServer::Starter", "-e1"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(has_module, "perl's Server::Starter is not installed: run scripts/setup.sh");
    let script = "use Server::Starter qw(server_ports); my $p = server_ports(); \
                  print STDERR map({ \"perl saw $_ => $p->{$_}\\n\" } sort keys %$p); sleep 60";
    let mut c = command(&["-l", "127.0.0.1:0", "--compat", "server-starter", "--", "perl"]);
    c.args(["-e", script]);
    let ge = Ge::spawn(c, &[]);
    ge.wait_log("perl saw ");
    ge.wait_log(&format!("perl saw {} => 3", ge.tcp_addr()));
}

#[test]
#[ignore = "needs root, for --user: run with --ignored as root"]
fn user_drops_graceexec_and_every_generation() {
    assert!(nix::unistd::geteuid().is_root(), "--user needs root");
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify", "--user", "nobody", "-v"], &[]);
    ge.wait_ready(1);
    let uid_of = |pid: i32| {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = s.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
        line.split_whitespace().nth(1).unwrap().parse::<u32>().unwrap()
    };
    assert_eq!(uid_of(ge.pid()), 65534, "graceexec itself dropped");
    assert_eq!(uid_of(ge.gen_pid(1)), 65534);
    // Started after the drop, by exec'ing graceexec's binary as nobody.
    assert_eq!(uid_of(ge.watchdog_pid()), 65534, "the watchdog runs as nobody");
    // Reloads work after the drop: no bind is needed.
    assert_eq!(ctl(&["reload"]).0, 0);
    assert_eq!(uid_of(ge.gen_pid(2)), 65534);
    assert!(get(ge.tcp_addr(), "/").is_ok());
}

#[test]
fn user_that_does_not_exist_is_a_usage_error() {
    let (code, err) = run_to_end(command(&["-l", "0", "--user", "no-such-user-x", "--", "true"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no such user"), "{err}");
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn completions_are_up_to_date() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (shell, file) in
        [("bash", "graceexec.bash"), ("zsh", "_graceexec"), ("fish", "graceexec.fish")]
    {
        let out = command(&["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let committed = std::fs::read(root.join("completions").join(file)).unwrap_or_default();
        assert!(
            committed == out.stdout,
            "completions/{file} is out of date: run scripts/generate.sh and commit the result"
        );
    }
}

#[test]
fn reload_by_signal_still_works_with_a_control_socket() {
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify"], &[]);
    ge.wait_ready(1);
    ge.signal(nix::sys::signal::Signal::SIGHUP);
    ge.wait_ready(2);
    wait_until("status to show the reload", Duration::from_secs(10), || {
        ctl(&["status", "--json"]).1.contains("\"generation\":2")
    });
}
