//! The kernel's answers about real loopback sockets, v4 and v6: a
//! listener, an accepted connection, a queued one, one in TIME_WAIT, a
//! half-open one; each compared with what /proc/net/tcp{,6} says.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::steer::conns::{proc_accepted, proc_half_open, proc_held, proc_listening};
use crate::steer::diag::wire::{self, Filter, Sock, AF_INET, BC_S_GE, NLMSG_HDRLEN, REQ_LEN};
use crate::steer::diag::{self, *};

/// Every state a connection goes through (1 to 11), but LISTEN.
const CONNECTED: u32 = (1 << 12) - 2 - (1 << LISTEN);

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < end, "still not: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Every socket of both families in `states`, on local port `port`.
fn sockets(states: u32, port: u16) -> Vec<Sock> {
    let mut got = Vec::new();
    each(&Filter { states, sport: port, dport: 0, ports: None }, |s| got.push(*s)).unwrap();
    got
}

fn inode(s: &TcpStream) -> u64 {
    nix::sys::stat::fstat(s.as_fd()).unwrap().st_ino
}

fn held(ports: &[u16]) -> (Vec<u64>, Vec<u64>) {
    let (mut diag, mut proc) = (Vec::new(), Vec::new());
    diag::held(ports, &mut diag).unwrap();
    proc_held(ports, &mut proc).unwrap();
    // Both are read in parts while other tests' sockets come and go, so
    // a socket can be listed twice (seen here once in /proc/net/tcp6:
    // the seq_file resumes by position in the hash table). graceexec
    // uses them as sets (binary_search in conns.rs): compare sets.
    for v in [&mut diag, &mut proc] {
        v.sort_unstable();
        v.dedup();
    }
    (diag, proc)
}

fn both_accepted(server: SocketAddr, client: SocketAddr) -> Option<bool> {
    let diag = diag::accepted(server, client).unwrap();
    let proc = proc_accepted(server.port(), client.port()).unwrap();
    assert_eq!(diag, proc, "{server} from {client}");
    diag
}

fn both_half_open(ports: &[u16]) -> usize {
    let diag = diag::half_open(ports).unwrap();
    assert_eq!(diag, proc_half_open(ports).unwrap(), "{ports:?}");
    diag
}

fn listener_accepted_queued_and_time_wait(ip: &str) {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let to = listener.local_addr().unwrap();
    let port = to.port();
    let me = |s: &TcpStream| s.local_addr().unwrap();
    let at = |s: &TcpStream| me(s).port();

    // TIME_WAIT on the server side: it closes first, then the client.
    let client = TcpStream::connect(to).unwrap();
    let (server, _) = listener.accept().unwrap();
    let tw = me(&client);
    drop(server);
    assert_eq!((&client).read(&mut [0]).unwrap(), 0, "the server's FIN");
    drop(client);
    let time_wait = Sock { state: TIME_WAIT, ip: to.ip(), sport: port, dport: tw.port(), inode: 0 };
    wait_for("TIME_WAIT", || sockets(1 << TIME_WAIT, port) == [time_wait]);

    let accepted = TcpStream::connect(to).unwrap();
    let (server, _) = listener.accept().unwrap();
    let queued = TcpStream::connect(to).unwrap();
    let in_queue = |s: &Sock| s.dport == at(&queued);
    wait_for("the queued one", || sockets(1 << ESTABLISHED, port).iter().any(in_queue));

    // Each /proc read costs as much as the TIME_WAIT sockets of every
    // other test and program on the machine: only as many as needed.
    let (diag, proc) = held(&[port]);
    assert_eq!(diag, [inode(&server)], "held, from sock_diag");
    assert_eq!(proc, diag, "held, from /proc");
    let only_diag = |ports: &[u16]| -> Vec<u64> {
        let mut got = Vec::new();
        diag::held(ports, &mut got).unwrap();
        got
    };
    assert_eq!(only_diag(&[port, 1, 65535]), [inode(&server)], "one of three ports");
    assert!(only_diag(&[port.wrapping_add(1)]).is_empty());
    assert!(only_diag(&[]).is_empty());
    // The client ends of the connections hold their own ports.
    let (diag, proc) = held(&[at(&accepted), at(&queued)]);
    assert_eq!((diag.len(), diag), (2, proc));

    assert_eq!(both_accepted(to, me(&accepted)), Some(true));
    assert_eq!(both_accepted(to, me(&queued)), Some(false));
    assert_eq!(both_accepted(to, tw), Some(true), "closed by the server");
    // No such connection: the kernel's lookup finds the listener.
    assert_eq!(both_accepted(to, to), None);
    // Nothing at all there: a lookup that fails, then a look at listeners.
    let mut nothing = to;
    nothing.set_port(port.wrapping_add(1));
    assert_eq!(diag::accepted(nothing, me(&accepted)).unwrap(), None);
    // The addresses count too, not only the ports (which /proc goes by).
    if let SocketAddr::V4(_) = to {
        let mut other = me(&queued);
        other.set_ip([127, 0, 0, 2].into());
        assert_eq!(diag::accepted(to, other).unwrap(), None);
    }
    assert_eq!(both_half_open(&[port]), 0);

    // The client closes the queued one: CLOSE_WAIT, still queued. Then the
    // server accepts it.
    queued.shutdown(std::net::Shutdown::Write).unwrap();
    let close_wait = |s: &Sock| s.state == CLOSE_WAIT && s.dport == at(&queued);
    wait_for("CLOSE_WAIT", || sockets(CONNECTED, port).iter().any(close_wait));
    assert_eq!(both_accepted(to, me(&queued)), Some(false));
    let (taken, _) = listener.accept().unwrap();
    assert_eq!(both_accepted(to, me(&queued)), Some(true));
    let (diag, proc) = held(&[port]);
    let mut want = vec![inode(&server), inode(&taken)];
    want.sort();
    assert_eq!((diag.clone(), proc), (want.clone(), want));

    // What the kernel dumps of the listener: it, for LISTEN only.
    let listening = sockets(1 << LISTEN, port);
    assert_eq!(listening.len(), 1);
    assert_eq!(listening[0].inode as u64, inode_of_listener(&listener));
    assert_eq!(listening[0].ip, to.ip());
    // Among every listener, with its address: from sock_diag and /proc
    // alike (other tests' listeners come and go meanwhile).
    let mine = (to, inode_of_listener(&listener));
    let (mut diag, mut proc) = (Vec::new(), Vec::new());
    diag::listening(&mut diag).unwrap();
    proc_listening(&mut proc).unwrap();
    assert!(diag.contains(&mine), "{mine:?} in {diag:?}");
    assert!(proc.contains(&mine), "{mine:?} in {proc:?}");
}

fn inode_of_listener(l: &TcpListener) -> u64 {
    nix::sys::stat::fstat(l.as_fd()).unwrap().st_ino
}

#[test]
fn v4_agrees_with_proc() {
    listener_accepted_queued_and_time_wait("127.0.0.1");
}

#[test]
fn v6_agrees_with_proc() {
    listener_accepted_queued_and_time_wait("::1");
}

/// A perl listener with TCP_DEFER_ACCEPT: the kernel drops the
/// handshake's last ACK until data comes with one, so the server side of
/// a connection stays a request socket (SYN_RECV) while the client's is
/// established. Killed on drop.
struct Deferring(Child);

impl Drop for Deferring {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const DEFERRING: &str = r#"
use IO::Socket::IP; use Socket qw(IPPROTO_TCP TCP_DEFER_ACCEPT);
my $s = IO::Socket::IP->new(LocalHost => $ARGV[0], LocalPort => 0, Listen => 8) or die "$@";
setsockopt($s, IPPROTO_TCP, TCP_DEFER_ACCEPT, 60) or die "$!";
$| = 1; print $s->sockport, "\n";
<STDIN>;
"#;

fn deferring(ip: &str) -> (Deferring, u16) {
    let mut c = Command::new("perl");
    c.args(["-e", DEFERRING, ip]).stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = Deferring(c.spawn().expect("perl"));
    let mut line = String::new();
    BufReader::new(child.0.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().parse().unwrap_or_else(|_| panic!("perl said {line:?}"));
    (child, port)
}

fn half_open_then_queued(ip: &str) {
    let (_perl, port) = deferring(ip);
    let to = SocketAddr::new(ip.parse().unwrap(), port);
    let mut client = TcpStream::connect(to).unwrap();
    let from = client.local_addr().unwrap();
    wait_for("SYN_RECV", || diag::half_open(&[port]).unwrap() == 1);
    assert_eq!(both_half_open(&[1, port]), 1);
    assert_eq!(diag::half_open(&[port.wrapping_add(1)]).unwrap(), 0);
    assert_eq!(both_accepted(to, from), Some(false), "not even queued yet");
    // A request socket is dumped only for SYN_RECV, as SYN_RECV, inode 0.
    let request = Sock { state: SYN_RECV, ip: to.ip(), sport: port, dport: from.port(), inode: 0 };
    assert_eq!(sockets(!(1 << SYN_RECV) & !(1 << LISTEN), port), []);
    assert_eq!(sockets(1 << SYN_RECV, port), [request]);

    // Data completes the handshake: queued, established, no inode.
    client.write_all(b"x").unwrap();
    wait_for("the queue", || diag::half_open(&[port]).unwrap() == 0);
    assert_eq!(both_half_open(&[port]), 0);
    assert_eq!(both_accepted(to, from), Some(false));
    let queued = Sock { state: ESTABLISHED, ..request };
    assert_eq!(sockets(1 << ESTABLISHED, port), [queued]);
}

#[test]
fn v4_half_open_agrees_with_proc() {
    half_open_then_queued("127.0.0.1");
}

#[test]
fn v6_half_open_agrees_with_proc() {
    half_open_then_queued("::1");
}

#[test]
fn the_kernel_filters_by_port_and_audits_the_program() {
    let listeners: Vec<_> = (0..2).map(|_| TcpListener::bind(("127.0.0.1", 0)).unwrap()).collect();
    let [p1, p2] = [0, 1].map(|i| listeners[i].local_addr().unwrap().port());
    let _c: Vec<_> =
        [p1, p1, p1, p2, p2].map(|p| TcpStream::connect(("127.0.0.1", p)).unwrap()).into();
    // What the kernel sends, before any test here.
    let raw = |ports: &[u16]| {
        let filter = Filter { states: CONNECTED, sport: 0, dport: 0, ports: Some(ports) };
        let mut got = Vec::new();
        dump(AF_INET, &filter, &mut |s: &Sock| got.push(s.sport)).unwrap();
        got.sort();
        got
    };
    assert_eq!(raw(&[p1]), [p1; 3]);
    assert_eq!(raw(&[1, p2, 3]), [p2; 2]);
    let mut both = [p1, p1, p1, p2, p2];
    both.sort();
    assert_eq!(raw(&[p2, p1]), both);

    // A `no` that is not a multiple of 4: refused as a whole, EINVAL,
    // which sends conns.rs to /proc.
    let filter = Filter { states: CONNECTED, sport: 0, dport: 0, ports: Some(&[p1, p2]) };
    let mut req = wire::dump_request(1, AF_INET, &filter);
    let first_op = NLMSG_HDRLEN + REQ_LEN + 4;
    assert_eq!(req[first_op], BC_S_GE);
    req[first_op + 2] += 2;
    let e = ask(&req, true, &mut |_: &Sock| panic!("an answer")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(Errno::EINVAL as i32), "{e}");
    assert!(unavailable(&e));
}

#[test]
fn one_dump_of_both_families_is_the_two_dumps() {
    let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let v6 = TcpListener::bind("[::1]:0").unwrap();
    let to = [v4.local_addr().unwrap(), v6.local_addr().unwrap()];
    let clients = to.map(|to| TcpStream::connect(to).unwrap());
    let (accepted, _) = v6.accept().unwrap();
    let ports = to.map(|to| to.port());
    let filter =
        Filter { states: CONNECTED | 1 << LISTEN, sport: 0, dport: 0, ports: Some(&ports) };
    // Other tests' sockets may have the same local port in the other
    // family (a client's ephemeral port is any free one), and come and go
    // between the two dumps: keep this test's own. The queued connection
    // has no inode yet; it is known by its client's port.
    let held = [inode_of_listener(&v4), inode_of_listener(&v6), inode(&accepted)];
    let from = clients.each_ref().map(|c| c.local_addr().unwrap().port());
    let ours = move |s: &Sock| {
        held.contains(&(s.inode as u64)) || (s.inode == 0 && from.contains(&s.dport))
    };
    let (mut one, mut two) = (Vec::new(), Vec::new());
    dump(wire::BOTH, &filter, &mut |s: &Sock| one.extend(ours(s).then_some(*s))).unwrap();
    each_family(&filter, &mut |s: &Sock| two.extend(ours(s).then_some(*s))).unwrap();
    one.sort_by_key(|s| (s.sport, s.dport, s.state));
    two.sort_by_key(|s| (s.sport, s.dport, s.state));
    assert_eq!(one, two);
    // Per port: the listener and the server side of the connection.
    for port in ports {
        assert_eq!(one.iter().filter(|s| s.sport == port).count(), 2, "{one:?}");
    }
}
