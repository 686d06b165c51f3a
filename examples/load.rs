//! Bounded HTTP load generator for the graceexec demo. Every request uses a
//! fresh connection, so a server that drops a single accepted connection
//! during a reload shows up as a failed request. It also reports the longest
//! time in which no request got an answer (from the start of the load to the
//! first answer and from the last answer to the end included), and counts the
//! failures by class.

use std::collections::BTreeMap;
use std::env;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::exit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: load --addr 127.0.0.1:8080 [--clients 32] [--seconds 10] \
                     [--max-requests 1000000] [--wait-secs 10] [--stop-file PATH]";
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ERRORS: usize = 5;

struct Args {
    addr: SocketAddr,
    clients: usize,
    run_for: Duration,
    max_requests: u64,
    wait: Duration,
    /// Stop early once this file exists (checked every few milliseconds).
    stop_file: Option<PathBuf>,
}

/// A failed request: its class (what is counted) and the full message.
struct Failure {
    class: String,
    detail: String,
}

impl Failure {
    fn io(stage: &str, e: &io::Error) -> Failure {
        Failure { class: format!("{stage}: {:?}", e.kind()), detail: format!("{stage}: {e}") }
    }

    fn other(class: &str, detail: String) -> Failure {
        Failure { class: class.to_string(), detail }
    }
}

#[derive(Default)]
struct Tally {
    /// Requests claimed so far; claiming before sending keeps the total
    /// within --max-requests however many clients race for the last one.
    claimed: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    pids: Mutex<Vec<u32>>,
    errors: Mutex<Vec<String>>,
    classes: Mutex<BTreeMap<String, u64>>,
    /// Nanoseconds from the start of the load to the latest answer.
    last_ok_ns: AtomicU64,
    /// The longest time between two answers, and when it ended.
    max_gap_ns: AtomicU64,
    max_gap_end_ns: AtomicU64,
    stop: AtomicBool,
}

impl Tally {
    /// Records an answer that arrived `now_ns` after the start.
    fn answered_at(&self, now_ns: u64) {
        let prev = self.last_ok_ns.fetch_max(now_ns, SeqCst);
        self.gap_ended(prev, now_ns);
    }

    fn gap_ended(&self, from_ns: u64, to_ns: u64) {
        let gap = to_ns.saturating_sub(from_ns);
        if self.max_gap_ns.fetch_max(gap, SeqCst) < gap {
            self.max_gap_end_ns.store(to_ns, SeqCst);
        }
    }
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("load: {e}; {USAGE}");
        exit(2);
    });
    if let Err(e) = wait_for(args.addr, args.wait) {
        eprintln!("load: {e}");
        exit(1);
    }

    let tally = Tally::default();
    let start = Instant::now();
    let deadline = start + args.run_for;
    thread::scope(|scope| {
        if let Some(path) = &args.stop_file {
            scope.spawn(|| watch_stop_file(path, &tally, deadline));
        }
        let clients: Vec<_> = (0..args.clients)
            .map(|_| scope.spawn(|| client(&args, &tally, start, deadline)))
            .collect();
        for client in clients {
            let _ = client.join();
        }
        // Also ends the watcher when the clients stopped on their own.
        tally.stop.store(true, SeqCst);
    });
    let end_ns = nanos_since(start);
    tally.gap_ended(tally.last_ok_ns.load(SeqCst), end_ns);

    let (ok, failed) = (tally.ok.load(SeqCst), tally.failed.load(SeqCst));
    let pids = tally.pids.into_inner().unwrap_or_else(PoisonError::into_inner);
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!("requests served: {ok}");
    println!("requests failed: {failed}");
    println!("pids that served: {}", pids.join(" "));
    for error in tally.errors.into_inner().unwrap_or_else(PoisonError::into_inner) {
        println!("error: {error}");
    }
    let ms = |ns: u64| ns / 1_000_000;
    println!(
        "longest gap without an answer: {} ms (ended {} ms into the load of {} ms)",
        ms(tally.max_gap_ns.load(SeqCst)),
        ms(tally.max_gap_end_ns.load(SeqCst)),
        ms(end_ns)
    );
    for (class, count) in tally.classes.into_inner().unwrap_or_else(PoisonError::into_inner) {
        println!("failures of class {class}: {count}");
    }
    exit(if failed == 0 && ok > 0 { 0 } else { 1 });
}

fn nanos_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Ends the load once the stop file exists (or at the deadline).
fn watch_stop_file(path: &std::path::Path, tally: &Tally, deadline: Instant) {
    while Instant::now() < deadline && !tally.stop.load(SeqCst) {
        if path.exists() {
            tally.stop.store(true, SeqCst);
            return;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        clients: 32,
        run_for: Duration::from_secs(10),
        max_requests: 1_000_000,
        wait: Duration::from_secs(10),
        stop_file: None,
    };
    let mut addr_given = false;
    let mut argv = env::args().skip(1);
    while let Some(flag) = argv.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            exit(0);
        }
        let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => (args.addr, addr_given) = (parse_addr(&value)?, true),
            "--clients" => args.clients = parse_count(&flag, &value, 10_000)?,
            "--seconds" => args.run_for = parse_secs(&flag, &value)?,
            "--max-requests" => args.max_requests = parse_count(&flag, &value, u64::MAX)?,
            "--wait-secs" => args.wait = parse_secs(&flag, &value)?,
            "--stop-file" => args.stop_file = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    if !addr_given {
        return Err("--addr is required".to_string());
    }
    Ok(args)
}

/// Only literal loopback addresses: resolving a name could send a DNS query
/// off the machine, and this tool must never generate load on a real network.
fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    let bad = || format!("--addr {value:?} is not an IP:PORT address");
    let addr = match value.strip_prefix("localhost:") {
        Some(port) => SocketAddr::from((Ipv4Addr::LOCALHOST, port.parse().map_err(|_| bad())?)),
        None => value.parse().map_err(|_| bad())?,
    };
    if !addr.ip().to_canonical().is_loopback() {
        return Err(format!("refusing --addr {addr}: only loopback addresses are allowed"));
    }
    Ok(addr)
}

fn parse_count<T: TryFrom<u64>>(flag: &str, value: &str, max: u64) -> Result<T, String> {
    let bad = || format!("{flag} wants a whole number from 1 to {max}, not {value:?}");
    let n: u64 = value.parse().map_err(|_| bad())?;
    if n == 0 || n > max {
        return Err(bad());
    }
    T::try_from(n).map_err(|_| bad())
}

fn parse_secs(flag: &str, value: &str) -> Result<Duration, String> {
    let secs: f64 = value.parse().map_err(|_| format!("{flag} wants seconds, not {value:?}"))?;
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("{flag} wants a positive number of seconds, not {value:?}")),
    }
}

fn wait_for(addr: SocketAddr, wait: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    loop {
        // connect_timeout rejects a zero timeout, so never let it reach zero.
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = left.clamp(Duration::from_millis(20), Duration::from_secs(1));
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                let secs = wait.as_secs_f64();
                return Err(format!("{addr} did not accept a connection within {secs}s: {e}"));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn client(args: &Args, tally: &Tally, start: Instant, deadline: Instant) {
    while Instant::now() < deadline
        && !tally.stop.load(SeqCst)
        && tally.claimed.fetch_add(1, SeqCst) < args.max_requests
    {
        match request(args.addr) {
            Ok(pid) => {
                tally.answered_at(nanos_since(start));
                tally.ok.fetch_add(1, SeqCst);
                let mut pids = tally.pids.lock().unwrap_or_else(PoisonError::into_inner);
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
            Err(Failure { class, detail }) => {
                tally.failed.fetch_add(1, SeqCst);
                let mut classes = tally.classes.lock().unwrap_or_else(PoisonError::into_inner);
                *classes.entry(class).or_default() += 1;
                drop(classes);
                let mut errors = tally.errors.lock().unwrap_or_else(PoisonError::into_inner);
                if errors.len() < MAX_ERRORS && !errors.contains(&detail) {
                    errors.push(detail);
                }
            }
        }
    }
}

/// One request on a new connection; returns the pid that answered it.
fn request(addr: SocketAddr) -> Result<u32, Failure> {
    let mut conn = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| Failure::io("connect", &e))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| conn.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| Failure::io("socket setup", &e))?;
    conn.write_all(REQUEST).map_err(|e| Failure::io("send", &e))?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response).map_err(|e| Failure::io("read", &e))?;
    if response.is_empty() {
        let detail = "connection closed without a response".to_string();
        return Err(Failure::other("closed without a response", detail));
    }
    let text = String::from_utf8_lossy(&response);
    if !text.starts_with("HTTP/1.1 200") {
        let status = text.lines().next().unwrap_or_default();
        return Err(Failure::other("bad status", format!("unexpected status line {status:?}")));
    }
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let pid = body.split_whitespace().find_map(|word| word.strip_prefix("pid="));
    pid.and_then(|pid| pid.parse().ok()).ok_or_else(|| {
        Failure::other("no pid in body", format!("no pid=<n> in response body {body:?}"))
    })
}
