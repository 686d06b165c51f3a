//! Steered generations: each generation on its own socket of a SO_REUSEPORT
//! group, new connections steered to the new one, the old one stopped only
//! once it has nothing left.

use std::net::TcpListener;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;

/// Requests that take 20 ms: a server stopped at a random instant has some
/// in flight.
const SLOW: &str = "/slow?ms=20";

/// Reload `reloads` times under 8 clients against a server that exits at
/// once on SIGTERM; what the clients saw.
fn reloads_of_an_abrupt_server(handover: &str, reloads: u32) -> LoadResult {
    let ge = Ge::start(
        &["-l", "127.0.0.1:0", "--ready", "notify", "--handover", handover],
        &[("EXAMPLE_TERM_ABRUPT", "1")],
    );
    ge.wait_ready(1);
    let load = Load::start_on(ge.tcp_addr(), 8, SLOW);
    load.wait_more(20);
    for gen in 2..=reloads + 1 {
        let (code, _, err) = ctl(&["reload"]);
        assert_eq!(code, 0, "{err}");
        // The old one has exited: whatever it had was answered or lost.
        ge.wait_exited(gen - 1);
        load.wait_more(20);
    }
    load.finish()
}

#[test]
fn a_server_that_drops_everything_on_sigterm_loses_nothing_when_steered() {
    let result = reloads_of_an_abrupt_server("steer", 10);
    result.assert_clean();
    assert!(result.pids.len() >= 10, "{:?}", result.pids);
}

#[test]
fn the_same_server_loses_requests_with_one_shared_socket() {
    // What steering is for: with one socket, the old server takes
    // connections until it is told to stop, and drops what it holds then.
    let result = reloads_of_an_abrupt_server("shared", 10);
    assert!(!result.failed.is_empty(), "no request failed in 10 reloads: {} served", result.ok);
}

#[test]
fn connections_made_while_the_first_generation_starts_are_all_served() {
    // Generation 1 holds before it accepts or says READY=1 until the test
    // lets it go, so the connections surely come while it starts (a slow
    // start raced the load's first connection).
    let dir = TempDir::new();
    let hold = dir.path("hold");
    let env = [("EXAMPLE_HOLD_GEN", "1"), ("EXAMPLE_HOLD_FILE", hold.to_str().unwrap())];
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify"], &env);
    let addr = ge.tcp_addr();
    let load = Load::start(addr, 4);
    let s = ge.wait_status("the four clients' connections to queue", |s| {
        s["generations"][0]["queued"] == 4
    });
    assert_eq!((&s["state"], load.served()), (&"starting".into(), 0), "{s}");
    std::fs::write(&hold, "").unwrap();
    ge.wait_ready(1);
    load.wait_more(20);
    load.finish().assert_clean();
}

#[test]
fn connections_queued_on_a_crashed_generation_are_answered_by_the_next() {
    let dir = TempDir::new();
    let stall = dir.path("stall");
    let env = [("EXAMPLE_STALL_FILE", stall.to_str().unwrap())];
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify"], &env);
    ge.wait_ready(1);
    let addr = ge.tcp_addr();
    // Generation 1 stops accepting: what comes now waits in its queue.
    std::fs::write(&stall, "").unwrap();
    let clients: Vec<_> = (0..5).map(|_| std::thread::spawn(move || get(addr, "/"))).collect();
    let s = ge.wait_status("five connections queued", |s| s["generations"][0]["queued"] == 5);
    assert_eq!(s["generations"][0]["socket"], 0, "{s}");
    // It dies before it accepts them: SIGKILL, nothing drained. Its
    // restart then accepts (the stall is over).
    kill(Pid::from_raw(ge.gen_pid(1)), Signal::SIGKILL).unwrap();
    ge.wait_exited(1);
    std::fs::remove_file(&stall).unwrap();
    ge.wait_ready(2);
    let pid2 = ge.gen_pid(2);
    for c in clients {
        let body = c.join().unwrap().expect("every queued connection is answered");
        assert_eq!(pid_of(&body), pid2);
    }
}

#[test]
fn an_http_probe_of_the_served_port_reaches_the_candidate() {
    // Generation 2 answers /health with 503. A probe that reached
    // generation 1 (200) would call it ready.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let probe = format!("http://127.0.0.1:{port}/health");
    let ge = Ge::start(
        &["-l", &listen, "--ready", &probe, "--ready-timeout", "2s"],
        &[("EXAMPLE_UNHEALTHY_GEN", "2")],
    );
    ge.wait_ready(1);
    let (code, _, err) = ctl(&["reload"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not ready within 2s (last probe: HTTP status 503)"), "{err}");
    // A healthy candidate passes the same probe.
    let (code, _, err) = ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_server_that_never_accepts_on_its_socket_is_never_ready() {
    for ready in [&["--ready", "accept"][..], &[]] {
        let mut args = vec!["-l", "127.0.0.1:0", "--ready-timeout", "1s"];
        args.extend(ready);
        let mut ge = Ge::start(&args, &[("EXAMPLE_IGNORE_FDS", "1")]);
        assert_eq!(ge.wait_exit(), 1);
        let log = ge.log();
        assert!(log.contains("was not ready within 1s (nothing accepted on fd 3 yet); "), "{log}");
    }
}

/// What the issue promised `status` says while such a server starts, seen
/// from a live instance rather than a rendered fixture.
#[test]
fn status_says_a_candidate_that_never_accepts_waits_for_its_first_accept() {
    let ge = Ge::start(&["-l", "127.0.0.1:0"], &[("EXAMPLE_IGNORE_FDS", "1")]);
    // Then what it does instead (it listens on a port of its own):
    // diagnose.rs.
    let waiting = "nothing accepted on fd 3 yet";
    let s = ge.wait_status("the candidate's wait", |s| {
        s["generations"][0]["waiting"].as_str().is_some_and(|w| w.starts_with(waiting))
    });
    assert_eq!(
        (&s["state"], &s["generations"][0]["state"]),
        (&"starting".into(), &"starting".into())
    );
    let (code, out, err) = ctl(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("waiting: {waiting}")), "{out}");
}

#[test]
fn status_shows_each_generations_socket_queue_and_share() {
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify"], &[]);
    ge.wait_ready(1);
    let s = ge.wait_status("generation 1 to serve", |s| s["state"] == "serving");
    let g = &s["generations"][0];
    assert_eq!((g["socket"].as_u64(), g["share"].as_f64()), (Some(0), Some(100.0)), "{s}");
    assert_eq!(g["queued"], 0, "{s}");
    assert_eq!(s["sockets"][0]["steered"], true, "{s}");
    assert_eq!(ctl(&["reload"]).0, 0);
    let s =
        ge.wait_status("generation 2 alone", |s| s["generations"].as_array().unwrap().len() == 1);
    let g = &s["generations"][0];
    assert_eq!((g["generation"].as_u64(), g["socket"].as_u64()), (Some(2), Some(1)), "{s}");
}

#[test]
fn with_shared_sockets_nothing_is_steered() {
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--handover", "shared"], &[]);
    ge.wait_ready(1);
    let s = ge.wait_status("generation 1 to serve", |s| s["state"] == "serving");
    assert_eq!(s["sockets"][0]["steered"], false, "{s}");
    assert!(s["generations"][0]["socket"].is_null(), "{s}");
}

#[test]
fn steers_on_ipv6_loopback_too() {
    let ge = Ge::start(&["-l", "[::1]:0", "--ready", "notify"], &[("EXAMPLE_TERM_ABRUPT", "1")]);
    ge.wait_ready(1);
    let s = ge.wait_status("serving", |s| s["state"] == "serving");
    assert_eq!(s["sockets"][0]["steered"], true, "{s}");
    let load = Load::start_on(ge.tcp_addr(), 4, SLOW);
    load.wait_more(20);
    for gen in 2..=4 {
        assert_eq!(ctl(&["reload"]).0, 0);
        ge.wait_exited(gen - 1);
        load.wait_more(10);
    }
    load.finish().assert_clean();
}

/// Generations that hold on to a long request stay alive, draining, until
/// `--drain-wait`: with five of them and four sockets per group, the pool
/// grows by one.
#[test]
fn more_generations_than_sockets_grow_the_pool_and_lose_nothing() {
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "notify", "--drain-wait", "1m"], &[]);
    ge.wait_ready(1);
    let addr = ge.tcp_addr();
    let mut held = Vec::new();
    for gen in 2..=6 {
        // A request that keeps the serving generation busy past its reload.
        held.push(std::thread::spawn(move || get(addr, "/slow?ms=8000")));
        wait_until("the long request to be in flight", LONG, || info(addr)["in_flight"] == "2");
        assert_eq!(ctl(&["reload"]).0, 0);
        ge.wait_ready(gen);
    }
    let s = ge.wait_status("six generations", |s| s["generations"].as_array().unwrap().len() == 6);
    let sockets: Vec<u64> =
        s["generations"].as_array().unwrap().iter().filter_map(|g| g["socket"].as_u64()).collect();
    let mut distinct = sockets.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 6, "each its own socket: {s}");
    // One more, under load, while the five draining ones hold on.
    let load = Load::start(addr, 4);
    load.wait_more(20);
    assert_eq!(ctl(&["reload"]).0, 0);
    load.wait_more(20);
    load.finish().assert_clean();
    for h in held {
        assert!(h.join().unwrap().is_ok(), "a long request held through the reloads");
    }
}

/// Under --user the pool cannot grow (the group is root's, the port
/// privileged): the sixth generation shares a socket, with one line, and
/// nothing is lost.
#[test]
#[ignore = "needs root, for --user and a privileged port: run with --ignored as root"]
fn under_user_the_pool_is_bound_before_the_drop_and_sharing_is_the_fallback() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root");
    let port = (700..1000)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free privileged port");
    let listen = format!("127.0.0.1:{port}");
    let args = ["-l", &listen, "--ready", "notify", "--user", "nobody", "--drain-wait", "1m"];
    let ge = Ge::start(&args, &[]);
    ge.wait_ready(1);
    let addr = ge.tcp_addr();
    let s = ge.wait_status("serving", |s| s["state"] == "serving");
    assert_eq!(s["sockets"][0]["steered"], true, "{s}");
    let mut held = Vec::new();
    for gen in 2..=5 {
        held.push(std::thread::spawn(move || get(addr, "/slow?ms=8000")));
        wait_until("the long request to be in flight", LONG, || info(addr)["in_flight"] == "2");
        assert_eq!(ctl(&["reload"]).0, 0);
        ge.wait_ready(gen);
    }
    ge.wait_log("generation 5: no socket of its own left; it shares socket");
    let load = Load::start(addr, 4);
    load.wait_more(20);
    assert_eq!(ctl(&["reload"]).0, 0);
    load.wait_more(20);
    load.finish().assert_clean();
    for h in held {
        assert!(h.join().unwrap().is_ok());
    }
}
