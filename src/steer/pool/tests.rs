//! The pool on real loopback sockets: where connections land.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::connect;

use super::*;
use crate::steer::bpf::Split;

const DEADLINE: Duration = Duration::from_secs(10);

fn pool(addr: &str, count: u32) -> Pool {
    Pool::bind(addr.parse().unwrap(), 1024, count).unwrap()
}

/// A client socket bound to `source` (port 0: any) before it connects,
/// as graceexec's probes are, so that its port is known in advance.
fn open_client(source: SocketAddr) -> OwnedFd {
    let family = if source.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    bind(fd.as_raw_fd(), &SockaddrStorage::from(source)).unwrap();
    fd
}

/// Accepts until `n` connections came in, from whichever socket; returns
/// the peers accepted on each socket.
fn accept_all(pool: &Pool, n: usize) -> Vec<Vec<SocketAddr>> {
    let listeners: Vec<TcpListener> = (0..pool.len())
        .map(|i| TcpListener::from(pool.socket(i).unwrap().try_clone_to_owned().unwrap()))
        .collect();
    let mut peers = vec![Vec::new(); listeners.len()];
    let end = Instant::now() + DEADLINE;
    while peers.iter().map(Vec::len).sum::<usize>() < n {
        assert!(Instant::now() < end, "accepted {peers:?} of {n}");
        let mut fds: Vec<_> =
            listeners.iter().map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN)).collect();
        poll(&mut fds, PollTimeout::from(100u16)).unwrap();
        let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
        for (i, l) in listeners.iter().enumerate().filter(|(i, _)| ready[*i]) {
            // Readable and accepted by nobody else: accept() returns at once.
            peers[i].push(l.accept().unwrap().1);
        }
    }
    peers
}

fn counts(peers: &[Vec<SocketAddr>]) -> Vec<usize> {
    peers.iter().map(Vec::len).collect()
}

fn wait_queue(pool: &Pool, index: u32, want: u32) {
    let end = Instant::now() + DEADLINE;
    while pool.queue_len(index).unwrap() != want {
        assert!(Instant::now() < end, "queue {index} stayed at {:?}", pool.queue_len(index));
        std::thread::yield_now();
    }
}

#[test]
fn port_0_binds_every_socket_to_one_port() {
    for addr in ["127.0.0.1:0", "[::1]:0"] {
        let p = pool(addr, 3);
        assert_ne!(p.addr().port(), 0);
        for i in 0..3 {
            assert_eq!(local_addr(p.socket(i).unwrap()), Ok(p.addr()), "{addr} socket {i}");
        }
        assert!(p.socket(3).is_none());
        // A server that binds the port itself still fails as it would today.
        let err = TcpListener::bind(p.addr()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}

#[test]
fn all_sends_every_connection_to_one_socket() {
    let p = pool("127.0.0.1:0", 3);
    // Before any route: the initial program holds everything on 0.
    let _c: Vec<_> = (0..10).map(|_| TcpStream::connect(p.addr()).unwrap()).collect();
    assert_eq!(counts(&accept_all(&p, 10)), [10, 0, 0]);
    p.attach(&Route::all(2)).unwrap();
    let _c: Vec<_> = (0..50).map(|_| TcpStream::connect(p.addr()).unwrap()).collect();
    assert_eq!(counts(&accept_all(&p, 50)), [0, 0, 50]);
}

#[test]
fn a_probe_goes_to_its_socket_and_nothing_else_does() {
    for (addr, any) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::1]:0", "[::1]:0")] {
        let p = pool(addr, 3);
        let probe = open_client(any.parse().unwrap());
        let port = local_addr(probe.as_fd()).unwrap().port();
        p.attach(&Route { probes: vec![(port, 2)], split: Split::All(1) }).unwrap();
        connect(probe.as_raw_fd(), &SockaddrStorage::from(p.addr())).unwrap();
        let _c: Vec<_> = (0..20).map(|_| TcpStream::connect(p.addr()).unwrap()).collect();
        let peers = accept_all(&p, 21);
        assert_eq!(counts(&peers), [0, 20, 1], "{addr}");
        assert_eq!(peers[2][0].port(), port);
    }
}

#[test]
fn the_longest_program_is_accepted_and_routes_its_last_probe() {
    let p = pool("127.0.0.1:0", 2);
    let source: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let probe = open_client(source);
    let port = local_addr(probe.as_fd()).unwrap().port();
    let mut probes: Vec<_> = (0..crate::steer::bpf::MAX_PROBES as u16 - 1)
        .map(|i| (port.wrapping_add(1 + i), 0))
        .collect();
    probes.push((port, 1));
    p.attach(&Route { probes, split: Split::All(0) }).unwrap();
    connect(probe.as_raw_fd(), &SockaddrStorage::from(p.addr())).unwrap();
    let _c = TcpStream::connect(p.addr()).unwrap();
    let peers = accept_all(&p, 2);
    assert_eq!(counts(&peers), [1, 1]);
    assert_eq!(peers[1][0].port(), port);
}

#[test]
fn a_quarter_share_is_a_quarter_of_the_connections() {
    let p = pool("127.0.0.1:0", 2);
    p.attach(&Route { probes: vec![], split: Split::Share { a: 0, b: 1, b_per_million: 250_000 } })
        .unwrap();
    for _ in 0..400 {
        TcpStream::connect(p.addr()).unwrap();
    }
    let got = counts(&accept_all(&p, 400));
    // 100 expected, standard deviation 8.7: a band of over 4.5 of them.
    assert!((60..=140).contains(&got[1]), "{got:?}");
}

#[test]
fn queue_len_counts_what_nobody_accepted() {
    for addr in ["127.0.0.1:0", "[::1]:0"] {
        let p = pool(addr, 2);
        p.attach(&Route::all(1)).unwrap();
        let _c: Vec<_> = (0..5).map(|_| TcpStream::connect(p.addr()).unwrap()).collect();
        wait_queue(&p, 1, 5);
        assert_eq!(p.queue_len(0).unwrap(), 0);
        assert_eq!(counts(&accept_all(&p, 5)), [0, 5]);
        assert_eq!(p.queue_len(1).unwrap(), 0, "{addr}");
        assert!(p.queue_len(2).is_err());
    }
}

#[test]
fn a_refused_program_leaves_the_old_route() {
    let p = pool("127.0.0.1:0", 2);
    p.attach(&Route::all(1)).unwrap();
    // No `ret` at the end: the kernel's checker rejects it.
    let bad = Program::from_insns(vec![crate::steer::bpf::Insn { code: 0x20, jt: 0, jf: 0, k: 0 }]);
    assert!(matches!(p.attach_program(&bad), Err(PoolError::Refused(_))));
    let e = p.attach(&Route::all(2)).unwrap_err();
    assert!(matches!(e, PoolError::Route(RouteError::Index { index: 2, sockets: 2 })), "{e}");
    let _c: Vec<_> = (0..10).map(|_| TcpStream::connect(p.addr()).unwrap()).collect();
    assert_eq!(counts(&accept_all(&p, 10)), [0, 10]);
}

#[test]
fn grown_sockets_take_the_next_index() {
    let mut p = pool("[::1]:0", 1);
    assert_eq!(p.grow().unwrap(), 1);
    assert_eq!(p.grow().unwrap(), 2);
    let _c: Vec<_> = (0..5).map(|_| TcpStream::connect(p.addr()).unwrap()).collect();
    assert_eq!(counts(&accept_all(&p, 5)), [5, 0, 0]);
    p.attach(&Route::all(2)).unwrap();
    let _c: Vec<_> = (0..5).map(|_| TcpStream::connect(p.addr()).unwrap()).collect();
    assert_eq!(counts(&accept_all(&p, 5)), [0, 0, 5]);
}

/// The kernel behaviour the pool avoids by never closing a socket: with
/// [A, B, C], closing A moves C to index 0.
#[test]
fn closing_a_socket_moves_the_last_into_its_slot() {
    let mut p = pool("127.0.0.1:0", 3);
    drop(p.sockets.remove(0)); // the pool's vector is now [B, C]
                               // In the kernel's group: [C, B]. `All(0)` now means C.
    p.attach(&Route::all(0)).unwrap();
    let _c: Vec<_> = (0..10).map(|_| TcpStream::connect(p.addr()).unwrap()).collect();
    assert_eq!(counts(&accept_all(&p, 10)), [0, 10]);
}

/// Also the figure "ready -> program switched": one setsockopt, median of
/// 1000 (printed; run with --nocapture).
#[test]
fn the_last_of_many_switches_wins() {
    let p = pool("127.0.0.1:0", 3);
    let share = |b| Split::Share { a: 0, b, b_per_million: 100_000 };
    let routes = [
        Route { probes: vec![(40_000, 2)], split: share(1) },
        Route { probes: vec![(40_001, 1)], split: share(2) },
    ];
    let (mut build, mut set) = (Vec::with_capacity(1000), Vec::with_capacity(1000));
    for i in 0..1000 {
        let start = Instant::now();
        let program = Program::build(&routes[i % 2], p.family(), p.len()).unwrap();
        let built = Instant::now();
        p.attach_program(&program).unwrap();
        build.push(built - start);
        set.push(built.elapsed());
    }
    build.sort();
    set.sort();
    eprintln!(
        "build: median {:?}; setsockopt: median {:?}, 99th {:?}",
        build[500], set[500], set[990]
    );
    p.attach(&Route::all(1)).unwrap();
    let _c: Vec<_> = (0..10).map(|_| TcpStream::connect(p.addr()).unwrap()).collect();
    assert_eq!(counts(&accept_all(&p, 10)), [0, 10, 0]);
}
