//! The child's start: exactly the systemd socket-activation contract.

use std::os::fd::AsRawFd;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;

#[test]
fn child_gets_exactly_the_systemd_contract() {
    let dir = TempDir::new();
    let sock = dir.path("s.sock");
    // An fd graceexec inherits without FD_CLOEXEC, like a deploy script's
    // pipe: it must not reach the server.
    let (leak_r, leak_w) = nix::unistd::pipe().unwrap();
    let unix_arg = format!("unix:{}", sock.display());
    let server = server();
    let mut c =
        command(&["-l", "web=127.0.0.1:0", "-l", &unix_arg, "--", server.to_str().unwrap()]);
    // Values graceexec itself received must not be passed on.
    c.env("LISTEN_FDS", "9").env("LISTEN_PID", "1").env("LISTEN_FDNAMES", "bogus");
    c.env("NOTIFY_SOCKET", "/nonexistent/notify");
    let ge = Ge::spawn(c, &[]);
    drop(leak_r);
    let pid = ge.gen_pid(1);
    ge.wait_ready(1);
    let info = info(ge.tcp_addr());
    assert!(leak_w.as_raw_fd() > 2);

    assert_eq!(info["pid"], pid.to_string());
    assert_eq!(info["listen_pid"], pid.to_string(), "LISTEN_PID is the child's own pid");
    assert_eq!(info["listen_fds"], "2");
    assert_eq!(info["listen_fdnames"], "web:unix-s.sock");
    assert_eq!(info["fds"], "0,1,2,3,4", "the sockets at 3 and 4 and no other fd");
    assert_eq!(info["cloexec"], "");
    assert_eq!(info["gen"], "1");
    let notify = &info["notify_socket"];
    assert!(notify.contains("/notify-1-") && notify.ends_with(".sock"), "{notify}");
    // Both sockets are listening.
    let body = get_unix(&sock, "/").unwrap();
    assert_eq!(pid_of(&body), pid);
}

#[test]
fn each_generation_has_its_own_notify_socket_and_number() {
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify"], &[]);
    ge.wait_ready(1);
    let first = info(ge.tcp_addr());
    ge.signal(nix::sys::signal::Signal::SIGHUP);
    ge.wait_ready(2);
    ge.wait_exited(1);
    let second = info(ge.tcp_addr());
    assert_eq!(second["gen"], "2");
    assert_eq!(second["listen_pid"], second["pid"]);
    assert_ne!(first["notify_socket"], second["notify_socket"]);
}

/// Regression: a server that made its socket non-blocking (most event
/// loops do, the example server too) left it so for the next generation
/// given the same socket of the pool, since O_NONBLOCK belongs to the open
/// description: a server that accepts in blocking mode (Python's
/// `socket.accept()`) then failed with EAGAIN after its first connection,
/// and was restarted into the same socket, in a loop.
#[test]
fn a_generation_gets_its_socket_blocking_whatever_an_earlier_one_made_it() {
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify"], &[]);
    ge.wait_ready(1);
    assert_eq!(info(ge.tcp_addr())["nonblock"], "", "as bound");
    for gen in [2, 3] {
        ge.signal(nix::sys::signal::Signal::SIGHUP);
        ge.wait_ready(gen);
        ge.wait_exited(gen as u32 - 1);
    }
    // Generation 3 has socket 0, which generation 1 made non-blocking.
    let s =
        ge.wait_status("generation 3 alone", |s| s["generations"].as_array().unwrap().len() == 1);
    assert_eq!(
        (&s["generations"][0]["generation"], &s["generations"][0]["socket"]),
        (&3.into(), &0.into()),
        "{s}"
    );
    assert_eq!(info(ge.tcp_addr())["nonblock"], "");
}

/// Regression: a socket every generation shares (`--handover shared`,
/// UDP, unix, a kernel that cannot steer) kept the O_NONBLOCK a crashed
/// generation set, for the generation its restart brought: the same
/// EAGAIN loop for a server that accepts in blocking mode, where no
/// running generation holds the socket any more.
#[test]
fn a_crash_restart_gets_a_shared_socket_blocking() {
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify", "--handover", "shared"], &[]);
    ge.wait_ready(1);
    assert_eq!(info(ge.tcp_addr())["nonblock"], "", "as bound");
    kill(Pid::from_raw(ge.gen_pid(1)), Signal::SIGKILL).unwrap();
    ge.wait_ready(2);
    assert_eq!(info(ge.tcp_addr())["nonblock"], "");
}

#[test]
fn adopts_sockets_from_systemd_activation_and_passes_names_on() {
    // The outer graceexec plays systemd: it passes LISTEN_FDS, LISTEN_PID
    // and LISTEN_FDNAMES to the inner one, which has no --listen.
    let server = server();
    let bin = bin();
    let outer = Ge::spawn(
        command(&[
            "-l",
            "api=127.0.0.1:0",
            "--",
            bin.to_str().unwrap(),
            "--",
            server.to_str().unwrap(),
        ]),
        &[],
    );
    let inner = outer.gen_pid(1);
    let addr = outer.tcp_addr();
    wait_until("the inner server to answer", LONG, || get(addr, "/").is_ok());
    let info = info(addr);
    assert_eq!(info["listen_fdnames"], "api");
    assert_eq!(info["listen_fds"], "1");
    assert_eq!(info["listen_pid"], info["pid"]);
    assert_ne!(info["pid"], inner.to_string(), "served by the inner graceexec's child");
    assert_eq!(info["fds"], "0,1,2,3");
    outer.wait_log(&format!("graceexec[{inner}]: bound 127.0.0.1:{} as api", addr.port()));
}
