//! Unix, abstract and UDP sockets; stale socket files; cleanup.

use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::harness::*;

#[test]
fn serves_a_unix_socket_and_removes_it_on_exit() {
    let dir = TempDir::new();
    let path = dir.path("app.sock");
    let arg = format!("unix:{}", path.display());
    let mut ge = Ge::start(&["-l", &arg, "--unix-mode", "660"], &[]);
    ge.wait_ready(1);
    let pid = ge.gen_pid(1);
    assert_eq!(pid_of(&get_unix(&path, "/").unwrap()), pid);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o660);
    ge.signal(Signal::SIGHUP);
    ge.wait_ready(2);
    assert_eq!(pid_of(&get_unix(&path, "/").unwrap()), ge.gen_pid(2));
    ge.signal(Signal::SIGTERM);
    assert_eq!(ge.wait_exit(), 0);
    assert!(!path.exists(), "the socket file is removed on exit");
}

#[test]
fn replaces_a_stale_socket_file_but_not_a_live_one_or_a_regular_file() {
    let dir = TempDir::new();
    let path = dir.path("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let arg = format!("unix:{}", path.display());
    let ge = Ge::start(&["-l", &arg], &[]);
    ge.wait_ready(1);
    assert!(get_unix(&path, "/").is_ok());

    // A second instance on the same, live, path is refused.
    let srv = server();
    let srv = srv.to_str().unwrap();
    let second = ["--name", "second", "-l", &arg, "--", srv];
    let (code, err) = run_to_end(command(&second));
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("a running server answers on"), "{err}");
    assert!(get_unix(&path, "/").is_ok(), "the running instance's socket is intact");

    let file = dir.path("plain");
    std::fs::write(&file, b"data").unwrap();
    let arg = format!("unix:{}", file.display());
    let third = ["--name", "third", "-l", &arg, "--", srv];
    let (code, err) = run_to_end(command(&third));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("exists and is not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
}

#[test]
fn serves_an_abstract_unix_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("graceexec-test-{}", std::process::id());
    let arg = format!("unix:@{name}");
    let ge = Ge::start(&["-l", &arg], &[]);
    ge.wait_ready(1);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let s = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
    use std::io::{Read, Write};
    let mut s = s;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.contains(&format!("pid={}", ge.gen_pid(1))), "{resp}");
}

#[test]
fn serves_udp_across_a_reload() {
    let ge = Ge::start(&["-l", "dns=udp://127.0.0.1:0", "-l", "127.0.0.1:0"], &[]);
    ge.wait_ready(1);
    let log = ge.log();
    let udp: std::net::SocketAddr = log
        .lines()
        .find_map(|l| l.split("bound udp://").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ask = |client: &UdpSocket| {
        client.send_to(b"ping", udp).unwrap();
        let mut buf = [0u8; 128];
        let (n, _) = client.recv_from(&mut buf).unwrap();
        pid_of(std::str::from_utf8(&buf[..n]).unwrap().trim())
    };
    assert_eq!(ask(&client), ge.gen_pid(1));
    assert_eq!(
        info(ge.tcp_addr())["listen_fdnames"],
        "dns:tcp-".to_string() + &ge.tcp_addr().port().to_string()
    );
    ge.signal(Signal::SIGHUP);
    ge.wait_ready(2);
    ge.wait_stopping(1);
    wait_until("generation 2 to answer on udp", LONG, || ask(&client) == ge.gen_pid(2));
}

#[test]
fn binds_ipv6_loopback() {
    let ge = Ge::start(&["-l", "[::1]:0"], &[]);
    ge.wait_ready(1);
    let addr = ge.tcp_addr();
    assert!(addr.is_ipv6());
    assert_eq!(pid_of(&get(addr, "/").unwrap()), ge.gen_pid(1));
}

#[test]
fn localhost_binds_ipv4_loopback() {
    // glibc lists ::1 first for localhost; 127.0.0.1 clients must get in.
    let ge = Ge::start(&["-l", "localhost:0"], &[]);
    ge.wait_ready(1);
    let addr = ge.tcp_addr();
    assert_eq!(addr.ip(), std::net::Ipv4Addr::LOCALHOST);
    assert!(get(addr, "/").is_ok());
}
