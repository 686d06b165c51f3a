//! The mistakes a new user makes first, as the README's quick start would
//! lead them to make them: each is told what to do on a line of its own,
//! with the documented exit code, and leaves no pid file, control socket
//! or process behind.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::harness::*;

/// A start that must fail, with its pid file in `dir`, and a command that
/// would leave a marker file there if it ever ran.
struct Try {
    dir: TempDir,
}

impl Try {
    fn new() -> Try {
        Try { dir: TempDir::new() }
    }

    fn marker(&self) -> String {
        format!("touch {}", self.dir.path("marker").display())
    }

    /// `graceexec --pid-file DIR/ge.pid ARGS`.
    fn command(&self, args: &[&str]) -> Command {
        let pid_file = self.dir.path("ge.pid").display().to_string();
        let mut all = vec!["--pid-file", &pid_file];
        all.extend(args);
        command(&all)
    }

    /// Run `c` to its end: it exits with `code`, some line of its stderr
    /// has each of `needles`, and nothing is left in `dir` but `keep`, nor
    /// in the control socket directory.
    fn check(&self, c: Command, code: i32, needles: &[&str], keep: &[&str]) -> String {
        let (got, err) = run_to_end(c);
        assert_eq!(got, code, "{err}");
        let line = err.lines().find(|l| needles.iter().all(|n| l.contains(n)));
        assert!(line.is_some(), "no line with {needles:?} in:\n{err}");
        let left: Vec<_> = std::fs::read_dir(&self.dir.0)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !keep.contains(&n.as_str()))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?} after:\n{err}");
        let sockets = runtime_dir().join("graceexec");
        let sockets: Vec<_> = std::fs::read_dir(sockets).into_iter().flatten().flatten().collect();
        assert!(sockets.is_empty(), "control sockets left behind: {sockets:?}");
        err
    }
}

fn executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn usage_mistakes_are_one_line_with_the_fix() {
    let t = Try::new();
    let marker = t.marker();
    // The server command without `--` before it.
    let c = t.command(&["--listen", "127.0.0.1:0", "/bin/sh", "-c", &marker]);
    let err = t.check(c, 2, &["put `--` before the server command"], &[]);
    assert_eq!(err.lines().count(), 1, "{err}");
    // A misspelt command.
    let err = t.check(command(&["relaod", "--name", "web"]), 2, &["did you mean 'reload'?"], &[]);
    assert_eq!(err.lines().count(), 1, "{err}");
    // A misspelt option: clap's hint "use '-- --listne'" would make the
    // typo the server's command, and is left out.
    let c = t.command(&["--listne", "127.0.0.1:0", "--", "/bin/sh", "-c", &marker]);
    let err = t.check(c, 2, &["'--listne'", "a similar argument exists: '--listen'"], &[]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("-- --listne"), "{err}");
}

#[test]
fn a_command_in_the_current_directory_is_told_to_write_dot_slash() {
    let t = Try::new();
    let app = TempDir::new();
    executable(&app.path("server"), &format!("#!/bin/sh\n{}\n", t.marker()));
    let mut c = t.command(&["--listen", "127.0.0.1:0", "--", "server"]);
    c.current_dir(&app.0).env("PWD", &app.0);
    let needle = "command not found: server (not in PATH); to run the file here, write ./server";
    let err = t.check(c, 127, &[needle], &[]);
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// The issue's `python3 -m http.server`: a server that binds the port
/// graceexec already holds.
#[test]
fn a_server_that_binds_the_port_itself_is_told_to_take_fd_3() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let t = Try::new();
    let listen = format!("127.0.0.1:{port}");
    let args = ["--listen", &listen, "--", "python3", "-m", "http.server", "--bind", "127.0.0.1"];
    let mut args = args.to_vec();
    args.push(&port);
    let hint = ["Address already in use", "binds the port itself", "fd 3 (LISTEN_FDS"];
    t.check(t.command(&args), 1, &hint, &[]);
}

#[test]
fn a_wrapper_script_without_exec_is_told_to_exec() {
    let t = Try::new();
    let app = TempDir::new();
    // The server runs as the script's child: its pid is not LISTEN_PID,
    // and it says so.
    let wrapper = app.path("run-server");
    executable(&wrapper, &format!("#!/bin/sh\n{}\n", server().display()));
    let c = t.command(&["--listen", "127.0.0.1:0", "--", wrapper.to_str().unwrap()]);
    t.check(c, 1, &["it mentions LISTEN_PID", "end it with `exec server ...`"], &[]);
    // The script starts its server in the background and exits: the
    // group still runs, and graceexec stops what is left.
    let pid_file = t.dir.path("background.pid");
    let script = format!("#!/bin/sh\nsleep 600 &\necho $! > {}\n", pid_file.display());
    executable(&wrapper, &script);
    let c = t.command(&["--listen", "127.0.0.1:0", "--", wrapper.to_str().unwrap()]);
    let hint = ["process group still runs", "end it with `exec server ...`"];
    t.check(c, 1, &hint, &["background.pid"]);
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    wait_until("the script's background process to be gone", LONG, || !running(pid));
}
