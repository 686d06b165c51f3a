//! What one query costs, via /proc and via sock_diag, next to 20,000
//! TIME_WAIT sockets. A measurement, not a check: it asserts only that
//! both paths agree, and prints the times.
//!
//! It runs in a network namespace of its own (`unshare -n`, so root), the
//! test binary started again inside it: the TIME_WAIT sockets it makes
//! die with the namespace instead of lingering a minute on the machine.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};

use crate::steer::conns::{proc_accepted, proc_half_open, proc_held};
use crate::steer::diag::wire::{Filter, Sock, BOTH};
use crate::steer::diag::{self, dump, each_family, HELD};

const INSIDE: &str = "GRACEEXEC_DIAG_BENCH_NETNS";
const TIME_WAITS: usize = 20_000;
const RUNS: usize = 50;

#[test]
#[ignore = "a measurement: needs root (unshare -n); run with --ignored --nocapture, best --release"]
fn one_query_next_to_20000_time_wait_sockets() {
    if std::env::var_os(INSIDE).is_some() {
        return measure();
    }
    assert!(nix::unistd::geteuid().is_root(), "unshare -n needs root");
    eprintln!("{} TIME_WAIT in the machine's namespace", time_waits());
    let exe = std::env::current_exe().unwrap();
    let name = "steer::diag::tests::bench::one_query_next_to_20000_time_wait_sockets";
    let status = Command::new("unshare")
        .args(["-n", "sh", "-c", r#"ip link set lo up && exec "$0" "$@""#])
        .arg(exe)
        .args([name, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
}

fn time_waits() -> usize {
    let stat = std::fs::read_to_string("/proc/net/sockstat").unwrap();
    let tcp = stat.lines().find(|l| l.starts_with("TCP:")).unwrap();
    let mut words = tcp.split_whitespace();
    words.find(|&w| w == "tw").unwrap();
    words.next().unwrap().parse().unwrap()
}

/// Median wall time and mean CPU time (user + system) of `RUNS` calls.
fn cost(mut query: impl FnMut()) -> (Duration, Duration) {
    let cpu = || {
        let r = getrusage(UsageWho::RUSAGE_THREAD).unwrap();
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::from_micros(tv.tv_sec() as u64 * 1_000_000 + tv.tv_usec() as u64)
        };
        t(r.user_time()) + t(r.system_time())
    };
    let start = cpu();
    let mut took: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            query();
            t.elapsed()
        })
        .collect();
    took.sort();
    (took[RUNS / 2], (cpu() - start) / RUNS as u32)
}

fn report(what: &str, proc: (Duration, Duration), diag: (Duration, Duration)) {
    eprintln!(
        "{what:>10}: /proc median {:>9.3?} (cpu {:>9.3?}), sock_diag median {:>9.3?} (cpu {:>9.3?}), {:.0}x",
        proc.0,
        proc.1,
        diag.0,
        diag.1,
        proc.0.as_secs_f64() / diag.0.as_secs_f64()
    );
}

fn queries(to: SocketAddr, from: SocketAddr) {
    let port = to.port();
    let held = |f: fn(&[u16], &mut Vec<u64>) -> std::io::Result<()>| {
        let mut v = Vec::new();
        f(&[port], &mut v).unwrap();
        v.len()
    };
    assert_eq!(held(proc_held), held(diag::held));
    assert_eq!(proc_accepted(port, from.port()).unwrap(), diag::accepted(to, from).unwrap());
    assert_eq!(proc_half_open(&[port]).unwrap(), diag::half_open(&[port]).unwrap());
    report(
        "held",
        cost(|| assert_eq!(held(proc_held), 1)),
        cost(|| assert_eq!(held(diag::held), 1)),
    );
    // `held`'s dump, one per family (what a kernel without the older
    // request, which dumps both at once, needs) against one for both.
    let filter = Filter { states: HELD, sport: 0, dport: 0, ports: Some(&[port]) };
    let per_family = cost(|| each_family(&filter, &mut |_: &Sock| {}).unwrap());
    let both = cost(|| dump(BOTH, &filter, &mut |_: &Sock| {}).unwrap());
    eprintln!("  per family {per_family:.3?}, both at once {both:.3?} (median, cpu)");
    report(
        "accepted",
        cost(|| assert_eq!(proc_accepted(port, from.port()).unwrap(), Some(true))),
        cost(|| assert_eq!(diag::accepted(to, from).unwrap(), Some(true))),
    );
    report(
        "half_open",
        cost(|| assert_eq!(proc_half_open(&[port]).unwrap(), 0)),
        cost(|| assert_eq!(diag::half_open(&[port]).unwrap(), 0)),
    );
}

fn measure() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = listener.local_addr().unwrap();
    let port = to.port();
    // What the queries look for: one connection, accepted and held.
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (_server, _) = listener.accept().unwrap();
    let from = client.local_addr().unwrap();

    eprintln!("{} TIME_WAIT in this namespace", time_waits());
    queries(to, from);

    // Half with the server closing first (TIME_WAIT on the served port,
    // as a busy server's are), half with the client closing first; from
    // eight source addresses, as a connect() from one would soon reuse the
    // ports of its TIME_WAIT sockets.
    let end = Instant::now() + Duration::from_secs(120);
    let mut made = 0;
    while time_waits() < TIME_WAITS && made < 3 * TIME_WAITS && Instant::now() < end {
        for _ in 0..1000 {
            let c = connect_from([127, 0, 0, 2 + (made % 8) as u8], to);
            let (s, _) = listener.accept().unwrap();
            let (first, then) = if made % 2 == 0 { (s, c) } else { (c, s) };
            drop(first);
            let _ = std::io::Read::read(&mut &then, &mut [0]);
            drop(then);
            made += 1;
        }
    }
    let tw = time_waits();
    eprintln!("{tw} TIME_WAIT in this namespace after {made} connections");
    assert!(tw >= TIME_WAITS, "only {tw} TIME_WAIT sockets");
    queries(to, from);
}

fn connect_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let SocketAddr::V4(to) = to else { unreachable!() };
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    let [a, b, c, d] = ip;
    bind(fd.as_raw_fd(), &SockaddrIn::new(a, b, c, d, 0)).unwrap();
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).unwrap();
    TcpStream::from(fd)
}
