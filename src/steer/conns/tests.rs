//! The /proc parsers on sample text, and one count of real connections
//! held by a real process group.

use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

#[test]
fn pgrp_is_counted_from_the_last_paren() {
    let cat = b"32305 (cat) R 32299 32299 16117 0 -1 4194304 102 0 0 0 0 0 0 0 20 0 1 0 74174";
    assert_eq!(stat_pgrp(cat), Some(32299));
    assert_eq!(stat_pgrp(b"7 (a) b) c ) S 1 42 42 0 -1\n"), Some(42));
    assert_eq!(stat_pgrp(b"7 (x)) S 1 9"), Some(9));
    for bad in [&b""[..], b"5 (x) S 1", b"no paren here 1 2 3", b"5 (x) S 1 -", b"5 (x"] {
        assert_eq!(stat_pgrp(bad), None, "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn only_socket_links_have_inodes() {
    assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
    for bad in [&b"pipe:[12345]"[..], b"socket:[]", b"socket:[12a]", b"/dev/null", b"socket:[1"] {
        assert_eq!(socket_inode(bad), None, "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn pids_are_digits() {
    assert_eq!(pid(b"1"), Some(1));
    assert_eq!(pid(b"4194304"), Some(4194304));
    for bad in [&b""[..], b"self", b"12a", b"-1", b"99999999999"] {
        assert_eq!(pid(bad), None);
    }
}

const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1661 1 0000000043b01c63 100 0 0 10 0
   1: 0100007F:1F90 0100007F:A33D 01 00000000:00000000 00:00000000 00000000     0        0 7001 1 0000000008d9ab9b 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:A33E 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000008d9ab9c 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:A340 06 00000000:00000000 03:00000934 00000000     0        0 0 3 000000005ac5f129
   4: 0100007F:1F90 0100007F:A341 08 00000000:00000000 00:00000000 00000000  1000        0 7002 1 000000005ac5f12a 20 4 30 10 -1
   5: 0100007F:A33F 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 7003 1 000000005ac5f12b 20 4 30 10 -1
   6: 0100007F:0050 0100007F:A342 01 00000000:00000000 00:00000000 00000000     0        0 7004 1 000000005ac5f12c 20 4 30 10 -1
";

const TCP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 8001 1 0000000074bb4348 100 0 0 10 0
   1: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:9AFC 01 00000000:00000000 00:00000000 00000000     0        0 8002 1 00000000713dc074 20 4 30 10 -1
";

#[test]
fn rows_parse_v4_and_v6() {
    let v4: Vec<_> = TCP.lines().map(|l| row(l.as_bytes())).collect();
    assert_eq!(v4[0], None); // the header
                             // The samples are of a little-endian machine's.
    let ip = IpAddr::from([127, 0, 0, 1]);
    assert_eq!(v4[1], Some(Row { ip, port: 8080, remote: 0, state: 0x0a, inode: 1661 }));
    assert_eq!(v4[5], Some(Row { ip, port: 8080, remote: 0xa341, state: 0x08, inode: 7002 }));
    assert_eq!(v4[6], Some(Row { ip, port: 0xa33f, remote: 8080, state: 0x01, inode: 7003 }));
    let v6: Vec<_> = TCP6.lines().map(|l| row(l.as_bytes())).collect();
    assert_eq!(v6[0], None);
    let ip = std::net::Ipv6Addr::LOCALHOST.into();
    assert_eq!(v6[2], Some(Row { ip, port: 8080, remote: 0x9afc, state: 0x01, inode: 8002 }));
    assert_eq!(
        ip_of(b"B80D0120000000000000000007000000:0050"),
        Some("2001:db8::7".parse().unwrap())
    );
    for bad in [&b"0100007F"[..], b"100007F:1F90", b"0100007G:1F90", b"0100007F0100007F:0050"] {
        assert_eq!(ip_of(bad), None, "{}", String::from_utf8_lossy(bad));
    }
    for bad in ["", "   0: 0100007F:1F90 00000000:0000 0A", "   0: 0100007F 0 0A 0 0 0 0 0 1"] {
        assert_eq!(row(bad.as_bytes()), None, "{bad}");
    }
}

#[test]
fn connections_are_the_held_non_listening_ones_on_the_ports() {
    let connections = |table: &[u8], ports: &[u16], out: &mut Vec<u64>| {
        let rows = table.split(|&b| b == b'\n').filter_map(row);
        out.extend(rows.filter(|r| is_connection(r, ports)).map(|r| r.inode));
    };
    let mut out = Vec::new();
    connections(TCP.as_bytes(), &[8080], &mut out);
    // Not: the listener, a queued connection and one in TIME_WAIT (no
    // inode), a client whose *remote* port is 8080, another port.
    assert_eq!(out, [7001, 7002]);
    connections(TCP6.as_bytes(), &[8080], &mut out);
    assert_eq!(out, [7001, 7002, 8002]);
    out.clear();
    connections(TCP.as_bytes(), &[80, 443], &mut out);
    assert_eq!(out, [7004]);
    out.clear();
    connections(TCP.as_bytes(), &[], &mut out);
    assert!(out.is_empty());
}

#[test]
fn known_sockets_keep_their_class_and_new_ones_come_from_the_tables() {
    let mut out = Vec::new();
    // 5 was a connection, 6 not; 7 and 8 are new, and the tables (read
    // now) have 7 and 5 (which they no longer need to).
    classify(&[5, 6, 7, 8], &[(4, true), (5, true), (6, false)], &[1, 7], &mut out);
    assert_eq!(out, [(5, true), (6, false), (7, true), (8, false)]);
    // Gone from the group: forgotten.
    classify(&[], &out.clone(), &[], &mut out);
    assert!(out.is_empty());
}

/// Kills and reaps on drop, so a failed assertion leaves no process.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sleep` in process group `pgrp` (0: its own), holding the given
/// sockets as its stdin, stdout and stderr.
fn holder(pgrp: i32, fds: [OwnedFd; 3]) -> Reaped {
    let [i, o, e] = fds;
    let child = Command::new("sleep")
        .arg("1000")
        .process_group(pgrp)
        .stdin(Stdio::from(i))
        .stdout(Stdio::from(o))
        .stderr(Stdio::from(e))
        .spawn()
        .expect("sleep");
    Reaped(child)
}

fn wait_count(scanner: &mut Scanner, pgrp: i32, ports: &[u16], want: usize) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let got = scanner.count(pgrp, ports).unwrap();
        if got == want {
            return;
        }
        assert!(Instant::now() < end, "group {pgrp} holds {got}, not {want}");
        std::thread::yield_now();
    }
}

fn procs() -> usize {
    fs::read_dir("/proc")
        .unwrap()
        .filter(|e| pid(e.as_ref().unwrap().file_name().as_bytes()).is_some())
        .count()
}

#[test]
fn counts_what_a_real_group_holds() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _clients: Vec<_> =
        (0..2).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let (one, _) = listener.accept().unwrap();
    let (two, _) = listener.accept().unwrap();
    let mut scanner = Scanner::new();
    let own = nix::unistd::getpgrp().as_raw();
    assert_eq!(scanner.count(own, &[port]).unwrap(), 2);

    // Leader: connection one. Then a member: one again (shared), the
    // listener, two.
    let null = || OwnedFd::from(File::open("/dev/null").unwrap());
    let one = OwnedFd::from(one);
    let leader = holder(0, [one.try_clone().unwrap(), null(), null()]);
    let pgrp = leader.0.id() as i32;
    wait_count(&mut scanner, pgrp, &[port], 1);
    let lfd = OwnedFd::from(listener.try_clone().unwrap());
    let member = holder(pgrp, [one, lfd, OwnedFd::from(two)]);
    wait_count(&mut scanner, pgrp, &[port], 2);
    // Handed over: the test keeps the listener and the client ends, none a
    // server-side connection on `port`.
    assert_eq!(scanner.count(own, &[port]).unwrap(), 0);
    assert_eq!(scanner.count(pgrp, &[port.wrapping_add(1)]).unwrap(), 0);
    assert_eq!(scanner.count(pgrp + 1_000_000, &[port]).unwrap(), 0);
    let mut took: Vec<_> = (0..100)
        .map(|_| {
            let start = Instant::now();
            assert_eq!(scanner.count(pgrp, &[port]).unwrap(), 2);
            start.elapsed()
        })
        .collect();
    took.sort();
    eprintln!("count with 2 held, {} in /proc: median {:?}", procs(), took[50]);

    drop(leader);
    assert_eq!(scanner.count(pgrp, &[port]).unwrap(), 2, "the member holds both");
    drop(member);
    assert_eq!(scanner.count(pgrp, &[port]).unwrap(), 0);
}

#[test]
fn a_missing_sock_diag_turns_to_proc_for_good() {
    use std::cell::Cell;
    use std::sync::atomic::AtomicBool;
    let err = |e: nix::errno::Errno| io::Error::from_raw_os_error(e as i32);
    let off = AtomicBool::new(false);
    let asked = Cell::new(0);
    let ask = |r: io::Result<u8>| {
        asked.set(asked.get() + 1);
        r
    };
    assert!(via(&off, || ask(Err(err(nix::errno::Errno::EPROTONOSUPPORT)))).is_none());
    assert!(via(&off, || ask(Ok(1))).is_none(), "from then on, /proc");
    assert_eq!(asked.get(), 1, "and sock_diag is not asked again");

    // A passing failure is that query's answer only.
    let on = AtomicBool::new(false);
    let again = via(&on, || ask(Err(err(nix::errno::Errno::EAGAIN)))).unwrap();
    assert_eq!(again.unwrap_err().raw_os_error(), Some(nix::errno::Errno::EAGAIN as i32));
    assert_eq!(via(&on, || ask(Ok(3))).unwrap().unwrap(), 3);
}
