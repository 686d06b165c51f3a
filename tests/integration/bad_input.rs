//! Bad input: one line, the documented exit code, nothing left behind.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use crate::harness::*;

fn one_line(err: &str) {
    assert_eq!(err.lines().count(), 1, "expected one line:\n{err}");
    assert!(err.starts_with("graceexec"), "{err}");
}

fn srv() -> String {
    server().to_str().unwrap().to_string()
}

/// A start that must fail: run with a pid file and a control socket in a
/// temp dir, and a command that would leave a marker file if it ever ran.
struct Attempt {
    dir: TempDir,
}

impl Attempt {
    fn new() -> Attempt {
        let dir = TempDir::new();
        // Writable by the unprivileged user of `as_nobody` too, so a marker
        // that is missing proves the command never ran.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        Attempt { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path(name)
    }

    fn marker_command(&self) -> Vec<String> {
        let touch = format!("touch {}", self.path("marker").display());
        vec!["/bin/sh".into(), "-c".into(), touch]
    }

    /// `graceexec --pid-file .. --control .. ARGS`; `ARGS` holds the `--`.
    fn args(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec![
            "--pid-file".to_string(),
            self.path("ge.pid").display().to_string(),
            "--control".to_string(),
            self.path("ctl.sock").display().to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        all
    }

    /// Run `c` to its end and check that it failed with `code` and one
    /// line on stderr containing `needle`, and left nothing behind.
    fn check(&self, c: Command, code: i32, needle: &str) -> String {
        // output() also waits for EOF on graceexec's stderr: a child still
        // holding it would keep this waiting.
        let (got, err) = run_to_end(c);
        assert_eq!(got, code, "{err}");
        one_line(&err);
        assert!(err.contains(needle), "{needle:?} not in: {err}");
        for name in ["ge.pid", "ctl.sock", "marker"] {
            assert!(!self.path(name).exists(), "{name} left behind after: {err}");
        }
        // No socket file, nor any other file the attempt made.
        let left: Vec<_> = std::fs::read_dir(&self.dir.0).unwrap().flatten().collect();
        assert!(left.is_empty(), "left behind: {left:?} after {err}");
        err
    }

    /// With the marker command after `--`.
    fn run(&self, args: &[&str], code: i32, needle: &str) -> String {
        let mut all = self.args(args);
        all.push("--".into());
        all.extend(self.marker_command());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.check(command(&refs), code, needle)
    }
}

#[test]
fn a_bad_address_is_a_usage_error() {
    let long_name = format!("{}=80", "n".repeat(256));
    let cases = [
        ("nope", "'nope' has no port"),
        ("127.0.0.1:99999", "'99999' is not a port number"),
        ("ftp://x:1", "unknown scheme in 'ftp://x:1'"),
        ("unix:", "unix: needs a path"),
        ("unix:@", "unix:@ needs a name"),
        ("unix://tmp/s.sock", "'unix://tmp/s.sock': write unix:/path with one slash"),
        ("unix:///tmp/s.sock", "write unix:/path with one slash"),
        ("[::1]", "'1]' is not a port number"),
        (":", "'' is not a port number"),
        ("udp://127.0.0.1:-1", "'-1' is not a port number"),
        ("web=", "'' has no port"),
        ("x y=80", "'x y' is not a valid socket name"),
        (&long_name, "is not a valid socket name"),
    ];
    for (bad, needle) in cases {
        let a = Attempt::new();
        a.run(&["-l", bad], 2, needle);
    }
}

#[test]
fn other_usage_errors_exit_2_with_one_line() {
    let cases: [(&[&str], &str); 12] = [
        (&["-l", "127.0.0.1:0", "--ready", "whenever"], "whenever"),
        (&["-l", "127.0.0.1:0", "--stop-signal", "KILL"], "KILL cannot be caught"),
        (&["-l", "127.0.0.1:0", "--stop-signal", "SIGSTOP"], "SIGSTOP cannot be caught"),
        (&["-l", "127.0.0.1:0", "--stop-signal", "FOO"], "'FOO' is not a signal"),
        (&["-l", "127.0.0.1:0", "--stop-signal", "99"], "'99' is not a signal"),
        (&["-l", "127.0.0.1:0", "--stop-timeout", "soon"], "'soon'"),
        (&["-l", "127.0.0.1:0", "--stop-timeout=-1s"], "'-1s'"),
        (&["-l", "127.0.0.1:0", "--stop-timeout", ""], "--stop-timeout"),
        (&["-l", "127.0.0.1:0", "--ready-timeout", "1x"], "unknown time unit"),
        (&["-l", "127.0.0.1:0", "--ready-timeout", "400days"], "at most 365 days"),
        (&["-l", "127.0.0.1:0", "--ready", "delay:forever"], "forever"),
        (&["-l", "127.0.0.1:0", "--unix-mode", "999"], "'999' is not an octal mode"),
    ];
    for (args, needle) in cases {
        Attempt::new().run(args, 2, needle);
    }
    // No --listen and no sockets from systemd.
    Attempt::new().run(&[], 2, "nothing to listen on");
}

#[test]
fn an_empty_or_missing_command_is_a_usage_error() {
    let a = Attempt::new();
    let nothing = a.args(&["-l", "127.0.0.1:0", "--"]);
    let refs: Vec<&str> = nothing.iter().map(String::as_str).collect();
    a.check(command(&refs), 2, "<COMMAND>");
    let missing = a.args(&["-l", "127.0.0.1:0"]);
    let refs: Vec<&str> = missing.iter().map(String::as_str).collect();
    a.check(command(&refs), 2, "<COMMAND>");
    // Regression: `-- ""` was "command not found:  (not in PATH)", exit 127,
    // or with no --name a complaint about the instance name.
    for name in [&[][..], &["--name", "x"][..]] {
        let mut args = a.args(name);
        args.extend(["-l", "127.0.0.1:0", "--", ""].map(String::from));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        a.check(command(&refs), 2, "COMMAND is empty");
    }
}

#[test]
fn listen_given_twice_is_a_usage_error() {
    // Regression: a name given twice went out twice in LISTEN_FDNAMES, and
    // an address given twice failed as "Address already in use; is another
    // server on it?".
    let a = Attempt::new();
    a.run(&["-l", "web=127.0.0.1:0", "-l", "web=127.0.0.1:0"], 2, "name 'web' is given twice");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    a.run(&["-l", &port, "-l", &format!("b={port}")], 2, &format!("{port} is given twice"));
    let unix = format!("unix:{}", a.path("s.sock").display());
    a.run(&["-l", &unix, "-l", &unix], 2, "is given twice");
}

#[test]
fn a_port_in_use_exits_1_and_leaves_nothing_behind() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let a = Attempt::new();
    // The unix socket is bound first, and must be removed again.
    let unix = format!("unix:{}", a.path("first.sock").display());
    a.run(&["-l", &unix, "-l", &addr], 1, &format!("cannot bind {addr}: Address already in use"));
}

#[test]
fn a_unix_path_in_a_missing_directory_exits_1() {
    let a = Attempt::new();
    let missing = a.path("missing").join("s.sock");
    let arg = format!("unix:{}", missing.display());
    a.run(&["-l", &arg], 1, &format!("cannot bind {arg}: No such file or directory"));
}

#[test]
fn a_unix_path_longer_than_sun_path_exits_1() {
    let a = Attempt::new();
    // sun_path holds 108 bytes with the NUL: 108 bytes of path is one too many.
    let prefix = format!("{}/", a.dir.0.display());
    let long = format!("{prefix}{}", "s".repeat(108 - prefix.len()));
    assert_eq!(long.len(), 108);
    let arg = format!("unix:{long}");
    a.run(&["-l", &arg], 1, "File name too long");
    // 107 bytes fit: the limit is the kernel's, not one of our own.
    let fits = format!("unix:{}", &long[..107]);
    let ge = Ge::spawn(command(&["-l", &fits, "--", &srv()]), &[]);
    ge.wait_ready(1);
}

#[test]
#[ignore = "needs port 1 privileged (net.ipv4.ip_unprivileged_port_start > 1) and, as root, setpriv: run with --ignored"]
fn a_privileged_port_without_root_exits_1() {
    // CI runs as root, so drop to nobody for this one; as any other user,
    // run as is.
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start");
    let start = start.ok().and_then(|s| s.trim().parse::<u32>().ok());
    assert!(
        start.is_some_and(|p| p > 1),
        "net.ipv4.ip_unprivileged_port_start={start:?} lets anyone bind port 1"
    );
    let a = Attempt::new();
    let mut args = a.args(&["-l", "127.0.0.1:1", "--"]);
    args.extend(a.marker_command());
    let c = if nix::unistd::geteuid().is_root() {
        let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("running as root, setpriv is needed to drop privileges");
        let mut c = Command::new(setpriv);
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(bin()).args(&args);
        c.env("XDG_RUNTIME_DIR", &a.dir.0).stdin(std::process::Stdio::null());
        c
    } else {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        command(&refs)
    };
    a.check(c, 1, "cannot bind 127.0.0.1:1: Permission denied");
}

#[test]
fn a_missing_command_exits_127_before_binding() {
    for cmd in ["/nonexistent/server", "no-such-command-graceexec"] {
        let a = Attempt::new();
        let unix = format!("unix:{}", a.path("s.sock").display());
        let err = a.run(&["-l", &unix, "--", cmd], 127, "command not found");
        assert!(err.contains(cmd), "{err}");
    }
}

#[test]
fn a_command_that_is_not_executable_exits_126() {
    let a = Attempt::new();
    let file = TempDir::new();
    let text = file.path("server.sh");
    let script = format!("#!/bin/sh\ntouch {}\n", a.path("marker").display());
    std::fs::write(&text, script).unwrap();
    for cmd in [text.to_str().unwrap(), "/tmp"] {
        let unix = format!("unix:{}", a.path("s.sock").display());
        a.run(&["-l", &unix, "--", cmd], 126, "cannot execute");
    }
}

#[test]
fn a_udp_port_in_use_is_detected() {
    // Regression: SO_REUSEADDR on UDP let a second socket bind the same
    // address, so the second instance silently took the datagrams over.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let arg = format!("udp://{}", taken.local_addr().unwrap());
    Attempt::new().run(&["-l", &arg], 1, "Address already in use");
}

#[test]
fn a_wrong_listen_fds_from_systemd_is_one_line_not_an_abort() {
    // Regression: the fd named by LISTEN_FDS was closed, so graceexec took
    // its own signalfd for it, closed it and aborted.
    let script =
        format!("exec 3>&-; LISTEN_PID=$$ LISTEN_FDS=1 exec {} -- {}", bin().display(), srv());
    let mut c = std::process::Command::new("/bin/sh");
    c.arg("-c").arg(script);
    let (code, err) = run_to_end(c);
    assert_eq!(code, 1, "{err}");
    one_line(&err);
    assert!(err.contains("inherited fd 3 is not open"), "{err}");
}
