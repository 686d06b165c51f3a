//! Files graceexec makes in directories other users can write: the pid
//! file's temporary, the pid file at exit, the notify directory. Each
//! attack is planted before graceexec starts by a shell that then execs
//! graceexec, so names built from graceexec's pid (`$$`) are known.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;

use crate::harness::*;

const NOBODY: u32 = 65534;

/// `sh -c SCRIPT sh ARGS...`, with output captured as `command` does.
/// SCRIPT ends with `exec "$@"`, so graceexec gets the shell's pid.
fn via_sh(script: &str, args: &[&str]) -> Command {
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(script).arg("sh").args(args);
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.env("XDG_RUNTIME_DIR", runtime_dir());
    c
}

/// The words that run a command as nobody; empty when the tests do not
/// run as root (the user running them is then "another user" enough: the
/// names collide the same way).
fn as_nobody() -> &'static str {
    if !nix::unistd::geteuid().is_root() {
        return "";
    }
    assert!(Path::new("/usr/bin/setpriv").exists(), "setpriv (util-linux) is needed as root");
    "/usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups"
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Wait until graceexec is ready or has exited; whether it is ready.
fn ready_or_exited(ge: &mut Ge) -> bool {
    let ready = format!("graceexec[{}]: generation 1 ready", ge.pid());
    wait_until("ready or exit", LONG, || ge.log().contains(&ready) || ge.try_status().is_some());
    ge.log().contains(&ready)
}

#[test]
#[ignore = "needs root: run with --ignored as root"]
fn a_planted_pid_file_temporary_is_neither_followed_nor_in_the_way() {
    assert!(nix::unistd::geteuid().is_root(), "this test plants files as nobody: run it as root");
    // 0777: anyone may replace anything. 1777: the /tmp rules, where
    // fs.protected_symlinks (if on) refuses root to follow nobody's link.
    for mode in [0o777, 0o1777] {
        let top = TempDir::new();
        chmod(&top.0, 0o755);
        let target = top.path("precious");
        std::fs::write(&target, "root's own\n").unwrap();
        let before = std::fs::metadata(&target).unwrap();
        let open = top.path("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, mode);
        let pid_file = open.join("ge.pid");
        // The old temporary name, `.ge.pid.PID.tmp`, and the pid file
        // itself, both as nobody's symlinks to root's file.
        let script = format!(
            r#"t=$1 d=$2; shift 2
            {} sh -c 'ln -s "$0" "$1/.ge.pid.$2.tmp" && ln -s "$0" "$1/ge.pid"' "$t" "$d" $$ || exit 99
            exec "$@""#,
            as_nobody()
        );
        let (srv, ge_bin) = (server(), bin());
        let args = [target.to_str().unwrap(), open.to_str().unwrap(), ge_bin.to_str().unwrap()];
        let ge_args = ["--pid-file", pid_file.to_str().unwrap(), "-l", "127.0.0.1:0"];
        let tail = ["--ready", "notify", "--", srv.to_str().unwrap()];
        let all: Vec<&str> = args.iter().chain(&ge_args).chain(&tail).copied().collect();
        let mut ge = Ge::spawn(via_sh(&script, &all), &[]);
        let planted = format!(".ge.pid.{}.tmp", ge.pid());
        let ready = ready_or_exited(&mut ge);

        let after = std::fs::metadata(&target).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "root's own\n", "mode {mode:o}");
        assert_eq!((after.ino(), after.uid(), after.mode()), (before.ino(), 0, before.mode()));
        // A name nobody else can know cannot be in the way: start-up goes on.
        assert!(ready, "mode {mode:o}: did not start:\n{}", ge.log());
        let meta = std::fs::symlink_metadata(&pid_file).unwrap();
        assert!(meta.file_type().is_file(), "mode {mode:o}: the pid file is not a plain file");
        assert_eq!(meta.uid(), 0);
        assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), format!("{}\n", ge.pid()));
        // nobody's link stays, untouched; nothing else of graceexec's.
        assert_eq!(names(&open), [planted.as_str(), "ge.pid"], "mode {mode:o}");
        let link = std::fs::symlink_metadata(open.join(&planted)).unwrap();
        assert!(link.file_type().is_symlink() && link.uid() == NOBODY);

        ge.signal(Signal::SIGTERM);
        assert_eq!(ge.wait_exit(), 0, "{}", ge.log());
        assert_eq!(names(&open), [planted.as_str()], "mode {mode:o}: the pid file is left");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "root's own\n");
    }
}

#[test]
fn a_pid_file_swapped_for_a_fifo_neither_hangs_the_exit_nor_is_removed() {
    // Whoever can write the directory can swap the file; reading a fifo
    // (or following a link to one) to see whose pid it holds would block
    // graceexec's exit until someone opens it for writing.
    for through_link in [false, true] {
        let dir = TempDir::new();
        let pid_file = dir.path("ge.pid");
        let mut ge = Ge::start(
            &["--pid-file", pid_file.to_str().unwrap(), "-l", "127.0.0.1:0", "--ready", "notify"],
            &[],
        );
        ge.wait_log("generation 1 ready");
        assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), format!("{}\n", ge.pid()));
        let fifo = dir.path("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
        let swap = dir.path("swap");
        match through_link {
            true => std::os::unix::fs::symlink(&fifo, &swap).unwrap(),
            false => std::fs::rename(&fifo, &swap).unwrap(),
        }
        std::fs::rename(&swap, &pid_file).unwrap();
        ge.signal(Signal::SIGTERM);
        assert_eq!(ge.wait_exit(), 0, "{}", ge.log());
        let left = std::fs::symlink_metadata(&pid_file).expect("removed what it did not write");
        assert_eq!(left.file_type().is_symlink(), through_link);
    }
}

/// Removes what nobody planted in /tmp, whatever the test's outcome.
struct Planted(Vec<PathBuf>);

impl Drop for Planted {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir(p);
        }
    }
}

#[test]
fn pre_created_notify_directory_names_do_not_stop_start_up() {
    // The old names were `graceexec.PID.0` to `.99` under each of
    // $XDG_RUNTIME_DIR, $TMPDIR and /tmp: take all of them.
    let base = TempDir::new();
    chmod(&base.0, 0o1777);
    let script = format!(
        r#"d=$1; shift; i=0; names=
        while [ $i -lt 100 ]; do names="$names $d/graceexec.$$.$i /tmp/graceexec.$$.$i"; i=$((i+1)); done
        {} mkdir $names || exit 99
        exec "$@""#,
        as_nobody()
    );
    let (srv, ge_bin) = (server(), bin());
    let args = [base.0.to_str().unwrap(), ge_bin.to_str().unwrap(), "-v", "-l", "127.0.0.1:0"];
    let tail = ["--ready", "notify", "--", srv.to_str().unwrap()];
    let all: Vec<&str> = args.iter().chain(&tail).copied().collect();
    let dir = base.0.to_str().unwrap();
    let mut ge = Ge::spawn(via_sh(&script, &all), &[("XDG_RUNTIME_DIR", dir), ("TMPDIR", dir)]);
    let old_names = |pid: i32| (0..100).map(move |i| format!("graceexec.{pid}.{i}"));
    let _planted = Planted(old_names(ge.pid()).map(|n| Path::new("/tmp").join(n)).collect());

    assert!(ready_or_exited(&mut ge), "did not start:\n{}", ge.log());
    let planter =
        if nix::unistd::geteuid().is_root() { NOBODY } else { nix::unistd::geteuid().as_raw() };
    for base in [Path::new("/tmp"), &base.0] {
        let last = base.join(format!("graceexec.{}.99", ge.pid()));
        assert_eq!(std::fs::metadata(&last).map(|m| m.uid()).ok(), Some(planter), "{last:?}");
    }
    let needle = format!("graceexec[{}]: notify sockets in ", ge.pid());
    let log = ge.log();
    let notify_dir = PathBuf::from(log.split(&needle).nth(1).unwrap().lines().next().unwrap());
    assert_eq!(notify_dir.parent(), Some(base.0.as_path()));
    let name = notify_dir.file_name().unwrap().to_str().unwrap().to_string();
    assert!(!old_names(ge.pid()).any(|n| n == name), "{name} is a planted one");
    let meta = std::fs::symlink_metadata(&notify_dir).unwrap();
    assert!(meta.is_dir());
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (nix::unistd::geteuid().as_raw(), 0o700));
    // The server's socket is in it, under a name no other generation knows.
    let socket = PathBuf::from(&info(ge.tcp_addr())["notify_socket"]);
    assert_eq!(socket.parent(), Some(notify_dir.as_path()));
    let sock_name = socket.file_name().unwrap().to_str().unwrap();
    let random = sock_name.strip_prefix("notify-1-").and_then(|s| s.strip_suffix(".sock"));
    assert!(random.is_some_and(|r| r.len() == 16), "{sock_name}");

    ge.signal(Signal::SIGTERM);
    assert_eq!(ge.wait_exit(), 0, "{}", ge.log());
    assert!(!notify_dir.exists(), "the notify directory outlived graceexec");
    // The planted names are still there, nobody's, and only those.
    let mut left = names(&base.0);
    left.retain(|n| n != "graceexec"); // the control socket's directory
    let mut planted: Vec<String> = old_names(ge.pid()).collect();
    planted.sort();
    assert_eq!(left, planted);
}
