//! Requests on loopback: one at a time (`get`, `info`), or as load from
//! many clients, bounded in count and time.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{wait_until, LONG};

fn exchange<S: Read + Write>(mut s: S, path: &str) -> std::io::Result<String> {
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(std::io::Error::other(format!("bad response: {resp:?}"))),
    }
}

/// One request on a new connection; the body of a 200 answer.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    exchange(s, path)
}

pub fn get_unix(path: &Path, url: &str) -> std::io::Result<String> {
    let s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    exchange(s, url)
}

/// A request sent on a new connection; its outcome comes later: the body
/// of a 200 answer, or what went wrong: a reset, or nothing within LONG
/// ("stranded": it waited in a socket no generation accepts from).
pub fn pending(addr: SocketAddr) -> JoinHandle<Result<String, String>> {
    request_on(TcpStream::connect(addr).unwrap())
}

/// `pending`'s request, on a connection made earlier.
pub fn request_on(mut s: TcpStream) -> JoinHandle<Result<String, String>> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    std::thread::spawn(move || {
        s.set_read_timeout(Some(LONG)).unwrap();
        let mut resp = String::new();
        match s.read_to_string(&mut resp) {
            Ok(_) => match resp.split_once("\r\n\r\n") {
                Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
                _ => Err(format!("answered {resp:?}")),
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err("stranded".into())
            }
            Err(e) => Err(e.to_string()),
        }
    })
}

/// The example server's `/info` as key=value pairs.
pub fn info(addr: SocketAddr) -> HashMap<String, String> {
    parse_info(&get(addr, "/info").unwrap())
}

pub fn parse_info(body: &str) -> HashMap<String, String> {
    body.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The pid in a `pid=P gen=G` body.
pub fn pid_of(body: &str) -> i32 {
    parse_info(&body.replace(' ', "\n"))["pid"].parse().unwrap()
}

/// Clients that each open a new connection per request, until stopped or
/// bounded by count and time.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    pids: Arc<Mutex<BTreeSet<i32>>>,
    threads: Vec<JoinHandle<()>>,
}

pub struct LoadResult {
    pub ok: u64,
    pub failed: Vec<String>,
    pub pids: BTreeSet<i32>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        Load::start_on(addr, clients, "/")
    }

    /// Each request is `GET path` (e.g. `/slow?ms=20`, so that requests are
    /// in flight when a server stops).
    pub fn start_on(addr: SocketAddr, clients: usize, path: &'static str) -> Load {
        const MAX_PER_CLIENT: u64 = 200_000;
        const MAX_TIME: Duration = Duration::from_secs(120);
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let pids = Arc::new(Mutex::new(BTreeSet::new()));
        let end = Instant::now() + MAX_TIME;
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed, pids) =
                    (stop.clone(), ok.clone(), failed.clone(), pids.clone());
                std::thread::spawn(move || {
                    for _ in 0..MAX_PER_CLIENT {
                        if stop.load(Ordering::SeqCst) || Instant::now() > end {
                            break;
                        }
                        match get(addr, path) {
                            Ok(body) => {
                                ok.fetch_add(1, Ordering::SeqCst);
                                pids.lock().unwrap().insert(pid_of(&body));
                            }
                            Err(e) => failed.lock().unwrap().push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load { stop, ok, failed, pids, threads }
    }

    pub fn served(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Wait until `n` more requests have been served.
    pub fn wait_more(&self, n: u64) {
        let target = self.served() + n;
        wait_until("load to make progress", LONG, || self.served() >= target);
    }

    pub fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        let pids = self.pids.lock().unwrap().clone();
        LoadResult { ok: self.ok.load(Ordering::SeqCst), failed, pids }
    }
}

impl LoadResult {
    /// No request failed, and some were served.
    pub fn assert_clean(&self) {
        assert!(
            self.failed.is_empty(),
            "{} of {} requests failed: {:?}",
            self.failed.len(),
            self.failed.len() as u64 + self.ok,
            &self.failed[..self.failed.len().min(5)]
        );
        assert!(self.ok > 0, "no request was served");
    }
}
