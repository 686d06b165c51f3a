//! `--fdstore` against a stand-in for systemd's file descriptor store
//! (harness/fdstore.rs): graceexec's restarts, crashes and changed
//! command lines, as an operator would put them to it.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::thread::JoinHandle;

use nix::sys::signal::Signal;

use crate::harness::*;

pub(crate) fn outcomes(
    reqs: Vec<JoinHandle<Result<String, String>>>,
) -> Vec<Result<String, String>> {
    reqs.into_iter().map(|h| h.join().unwrap()).collect()
}

pub(crate) fn args<'a>(listen: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--name", "fs", "--fdstore", "--ready", "notify"];
    for l in listen {
        a.extend(["-l", l]);
    }
    a.extend_from_slice(more);
    a
}

/// The TCP addresses graceexec logged as bound, in order.
fn bound(ge: &Ge) -> Vec<SocketAddr> {
    ge.wait_log("generation 1 ready");
    let log = ge.log();
    let rest = log.lines().filter_map(|l| l.split_once("bound ").map(|(_, r)| r));
    rest.filter_map(|r| r.split_whitespace().next()?.parse().ok()).collect()
}

/// SIGTERM, once generation 1 is ready (a server signalled before it set
/// up its handlers would die of it).
pub(crate) fn stop(ge: &mut Ge) {
    ge.wait_ready(1);
    ge.signal(Signal::SIGTERM);
    assert_eq!(ge.wait_exit(), 0, "{}", ge.log());
}

#[test]
fn a_port_0_address_gets_its_port_back_tcp_and_udp() {
    let mut store = FakeStore::new(16);
    let listen = ["127.0.0.1:0", "udp://127.0.0.1:0"];
    let mut ge = store.start(&args(&listen, &[]), &[]);
    ge.wait_ready(1);
    let first: Vec<String> = ge
        .log()
        .lines()
        .filter(|l| l.contains(": bound "))
        .map(|l| l.split_once(": ").unwrap().1.to_string())
        .collect();
    assert_eq!(first.len(), 2, "{}", ge.log());
    store.wait_holding(5);
    stop(&mut ge);
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port: u16 = first[1]
        .split(':')
        .next_back()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Held by the store meanwhile: a datagram waits for the next start.
    udp.send_to(b"x", ("127.0.0.1", udp_port)).unwrap();
    let mut ge = store.start(&args(&listen, &[]), &[]);
    ge.wait_ready(1);
    let again: Vec<String> = ge
        .log()
        .lines()
        .filter(|l| l.contains(": bound "))
        .map(|l| l.split_once(": ").unwrap().1.to_string())
        .collect();
    assert_eq!(again, first);
    store.wait_holding(5);
    stop(&mut ge);
}

#[test]
fn after_an_upgrade_a_restart_still_takes_the_sockets_back() {
    let mut store = FakeStore::new(16);
    let dir = TempDir::new();
    let new = crate::upgrade::copy_of_graceexec(&dir, "graceexec-new");
    let mut ge = store.start(&args(&["127.0.0.1:0"], &[]), &[]);
    ge.wait_ready(1);
    let addr = ge.tcp_addr();
    let (code, _, err) = crate::upgrade::upgrade_to(&new);
    assert_eq!(code, 0, "{err}");
    let load = Load::start(addr, 8);
    load.wait_more(20);
    stop(&mut ge);
    let mut ge = store.start(&args(&["127.0.0.1:0"], &[]), &[]);
    ge.wait_ready(1);
    load.wait_more(20);
    load.finish().assert_clean();
    ge.wait_log("taken back from the file descriptor store");
    store.wait_holding(4);
    stop(&mut ge);
}

/// Regression: a stop signalled every generation at once: what waited in
/// their sockets (a server that accepts slowly, or a canary's) was left
/// behind for a start that serves one socket, and waited for good.
#[test]
fn a_restart_during_a_canary_serves_what_waited_in_both_sockets() {
    let dir = TempDir::new();
    let stall = dir.path("stall");
    let env = [("EXAMPLE_STALL_FILE", stall.to_str().unwrap())];
    let mut store = FakeStore::new(16);
    let listen = ["127.0.0.1:0"];
    let mut ge = store.start(&args(&listen, &["--drain-wait", "60s"]), &env);
    ge.wait_ready(1);
    let addr = ge.tcp_addr();
    let (code, _, err) = ctl(&["reload", "--canary", "50"]);
    assert_eq!(code, 0, "{err}");
    let (old, canary) = (ge.gen_pid(1), ge.gen_pid(2));
    // Both servers stop accepting; requests queue in both sockets.
    std::fs::write(&stall, "").unwrap();
    let before: Vec<_> = (0..16).map(|_| pending(addr)).collect();
    ge.wait_status("requests queued in both sockets", |s| {
        let q = |g: u64| {
            s["generations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["generation"] == g)
                .and_then(|x| x["queued"].as_u64())
                .unwrap_or(0)
        };
        q(1) > 0 && q(2) > 0 && q(1) + q(2) == 16
    });
    ge.signal(Signal::SIGTERM);
    ge.wait_log("new connections wait in socket 2 for the next start");
    std::fs::remove_file(&stall).unwrap();
    assert_eq!(ge.wait_exit(), 0, "{}", ge.log());
    let during: Vec<_> = (0..4).map(|_| pending(addr)).collect();
    let ge = store.start(&args(&listen, &[]), &env);
    let pid = ge.gen_pid(1);
    for r in outcomes(before) {
        let by = pid_of(&r.expect("answered"));
        assert!(by == old || by == canary, "answered by {by}, not the generation it waited for");
    }
    for r in outcomes(during) {
        assert_eq!(pid_of(&r.expect("answered")), pid);
    }
}

/// Regression: the stored sockets were matched to `--listen` by position.
/// An address moved to another position found another address's sockets,
/// and was bound anew while the store still held its own: the new pool
/// joined the old SO_REUSEPORT group, whose numbering shifted under it as
/// the old sockets closed, and every connection to it then waited in a
/// socket no generation accepts from.
#[test]
fn a_restart_with_listen_changed_serves_every_address_and_closes_the_removed_one() {
    let mut store = FakeStore::new(64);
    let mut ge = store.start(&args(&["127.0.0.1:0", "127.0.0.1:0"], &[]), &[]);
    let [gone, kept] = bound(&ge)[..] else { panic!("two addresses: {}", ge.log()) };
    store.wait_holding(8);
    stop(&mut ge);
    // Meanwhile, a client of the address that stays waits for an answer.
    let waiting = pending(kept);

    // `kept` moves from position 1 to 0, `gone` goes, a new one comes.
    let kept_arg = kept.to_string();
    let mut ge = store.start(&args(&[&kept_arg, "127.0.0.1:0"], &[]), &[]);
    let now = bound(&ge);
    assert_eq!(now[0], kept, "{}", ge.log());
    let pid = ge.gen_pid(1);
    for addr in &now {
        assert_eq!(pid_of(&get(*addr, "/").unwrap()), pid, "{addr}");
    }
    assert_eq!(pid_of(&waiting.join().unwrap().expect("answered")), pid);
    // Stored again under the positions they have now, and nothing else.
    let (want_0, want_1) = (Some(kept), Some(now[1]));
    let restored = poll_until(LONG, || {
        store.names().len() == 8
            && (0..4).all(|s| store.addr_of(&format!("graceexec-0-{s}")) == want_0)
            && (0..4).all(|s| store.addr_of(&format!("graceexec-1-{s}")) == want_1)
    });
    assert!(restored, "the store holds {:?}", store.names());
    let refused = TcpStream::connect(gone).map(|_| ()).map_err(|e| e.kind());
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused), "{gone} is closed everywhere");
    assert!(!ge.log().contains("does not fit"), "{}", ge.log());
    stop(&mut ge);
}

/// Regression: `--handover` changed between runs: the stored socket did
/// not fit, and graceexec bound the address anew while the store still
/// held it, and could not.
#[test]
fn a_socket_stored_with_another_handover_is_taken_back_as_it_was() {
    let mut store = FakeStore::new(16);
    let mut ge = store.start(&args(&["127.0.0.1:0"], &["--handover", "shared"]), &[]);
    let addr = ge.tcp_addr();
    store.wait_holding(1);
    stop(&mut ge);
    let waiting = pending(addr);
    let mut ge = store.start(&args(&["127.0.0.1:0"], &[]), &[]);
    ge.wait_ready(1);
    assert_eq!(pid_of(&waiting.join().unwrap().expect("answered")), ge.gen_pid(1));
    ge.wait_log("stored as one socket, which every generation shares");
    stop(&mut ge);
    let waiting = pending(addr);
    let mut ge = store.start(&args(&["127.0.0.1:0"], &[]), &[]);
    assert_eq!(pid_of(&waiting.join().unwrap().expect("answered")), ge.gen_pid(1));
    stop(&mut ge);
}

/// Regression: killed while a canary split new connections, graceexec
/// left the split in the kernel; the next start took the socket where
/// most waited, and those in the canary's socket waited for good.
#[test]
fn connections_queued_in_a_canarys_socket_when_graceexec_is_killed_are_not_stranded() {
    let mut store = FakeStore::new(16);
    let mut ge = store.start(&args(&["127.0.0.1:0"], &[]), &[]);
    ge.wait_ready(1);
    let addr = ge.tcp_addr();
    store.wait_holding(4);
    let (code, _, err) = ctl(&["reload", "--canary", "25"]);
    assert_eq!(code, 0, "{err}");
    ge.signal(Signal::SIGKILL);
    wait_until("graceexec to die", LONG, || ge.try_status().is_some());
    // The split is still the group's program: a quarter go to the canary's.
    let reqs: Vec<_> = (0..40).map(|_| pending(addr)).collect();
    let ge = store.start(&args(&["127.0.0.1:0"], &[]), &[]);
    let pid = ge.gen_pid(1);
    let got = outcomes(reqs);
    assert!(!got.iter().any(|r| r.as_ref().is_err_and(|e| e == "stranded")), "{got:?}");
    let answered = got.iter().filter(|r| r.as_ref().is_ok_and(|b| pid_of(b) == pid)).count();
    assert!(answered >= 20, "the larger share is served: {got:?}");
    if answered < 40 {
        ge.wait_log("which no generation takes now, reset");
    }
}

/// Regression: stopped while its first generation was still starting,
/// graceexec parked new connections in another socket than the one where
/// those of the last restart waited for that generation; the next start
/// serves one of the two, and the others were reset.
#[test]
fn a_restart_while_the_first_generation_starts_keeps_what_waited_for_it() {
    let mut store = FakeStore::new(16);
    let listen = ["127.0.0.1:0"];
    let mut ge = store.start(&args(&listen, &[]), &[]);
    let addr = ge.tcp_addr();
    stop(&mut ge);
    let first: Vec<_> = (0..4).map(|_| pending(addr)).collect();
    // Held before it accepts anything, until it is told to stop.
    let dir = TempDir::new();
    let hold = dir.path("never");
    let held = [("EXAMPLE_HOLD_FILE", hold.to_str().unwrap()), ("EXAMPLE_HOLD_GEN", "1")];
    let mut ge = store.start(&args(&listen, &[]), &held);
    ge.gen_pid(1);
    ge.signal(Signal::SIGTERM);
    ge.wait_exit();
    let second: Vec<_> = (0..4).map(|_| pending(addr)).collect();
    let mut ge = store.start(&args(&listen, &[]), &[]);
    let pid = ge.gen_pid(1);
    for r in outcomes(first).into_iter().chain(outcomes(second)) {
        assert_eq!(pid_of(&r.expect("answered")), pid);
    }
    stop(&mut ge);
}

/// Regression: the pools were stored one after the other, so a store
/// smaller than them all (FileDescriptorStoreMax=) kept no socket of the
/// last addresses, which then refused connections across a restart.
#[test]
fn a_store_smaller_than_the_pools_keeps_every_address() {
    let mut store = FakeStore::new(4);
    let mut ge = store.start(&args(&["127.0.0.1:0", "127.0.0.1:0"], &[]), &[]);
    let addrs = bound(&ge);
    store.wait_holding(4);
    assert_eq!(
        stored_slots(&store.names()).into_values().collect::<Vec<_>>(),
        [vec![0, 1], vec![0, 1]]
    );
    stop(&mut ge);
    let reqs: Vec<_> = addrs.iter().flat_map(|a| (0..4).map(|_| pending(*a))).collect();
    let mut ge = store.start(&args(&["127.0.0.1:0", "127.0.0.1:0"], &[]), &[]);
    assert_eq!(bound(&ge), addrs);
    let pid = ge.gen_pid(1);
    for r in outcomes(reqs) {
        assert_eq!(pid_of(&r.expect("answered")), pid);
    }
    // The pools grew back to four sockets before any privilege was
    // dropped: a reload gets a socket of its own.
    let load = Load::start(addrs[1], 4);
    load.wait_more(20);
    assert_eq!(ctl(&["reload"]).0, 0);
    load.wait_more(20);
    load.finish().assert_clean();
    assert!(!ge.log().contains("shares socket"), "{}", ge.log());
    stop(&mut ge);
}

/// Regression: the sockets were sent to the store without waiting, and a
/// unix datagram socket queues few messages (net.unix.max_dgram_qlen, 10
/// unless raised): a manager busy for a moment lost the rest, and those
/// sockets did not survive the restart. (Where the limit is higher than
/// the messages of a start, this passes either way.)
#[test]
fn a_busy_service_manager_still_gets_every_socket() {
    let mut store = FakeStore::busy(64);
    let listen = ["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "udp://127.0.0.1:0"];
    let mut ge = store.start(&args(&listen, &[]), &[]);
    ge.wait_ready(1);
    store.wait_holding(13);
    assert!(!ge.log().contains("cannot reach"), "{}", ge.log());
    stop(&mut ge);
}

/// Regression: started without --listen (a unit moved to socket
/// activation, or --listen dropped), graceexec served the sockets an
/// earlier run had stored as if the socket unit had passed them: every
/// generation got them all, and the store kept them.
#[test]
fn without_listen_the_sockets_an_earlier_run_stored_are_not_served_and_are_removed() {
    let mut store = FakeStore::new(16);
    let mut ge = store.start(&args(&["127.0.0.1:0"], &[]), &[]);
    let old = ge.tcp_addr();
    stop(&mut ge);
    // A socket unit's socket, passed along with the store.
    let unit = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unit.local_addr().unwrap();
    store.hold("http", unit.into());
    let mut ge = store.start(&["--name", "fs", "--ready", "notify"], &[]);
    ge.wait_ready(1);
    let info = info(addr);
    assert_eq!((info["listen_fds"].as_str(), info["listen_fdnames"].as_str()), ("1", "http"));
    ge.wait_log("not serving the 4 socket(s) an earlier graceexec stored with --listen");
    let alone = poll_until(LONG, || store.names() == ["http"]);
    assert!(alone, "the store holds {:?}", store.names());
    let refused = TcpStream::connect(old).map(|_| ()).map_err(|e| e.kind());
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused), "{old} is closed everywhere");
    stop(&mut ge);
    // With only what graceexec stored, there is nothing to listen on.
    store.forget("http");
    let mut ge = store.start(&args(&["127.0.0.1:0"], &[]), &[]);
    stop(&mut ge);
    let mut ge = store.start(&["--name", "fs", "--ready", "notify"], &[]);
    assert_eq!(ge.wait_exit(), 2, "{}", ge.log());
    assert!(ge.log().contains("nothing to listen on"), "{}", ge.log());
    let empty = poll_until(LONG, || store.names().is_empty());
    assert!(empty, "the store holds {:?}", store.names());
}

/// Regression: without --fdstore (dropped from the unit), graceexec still
/// took back what an earlier run stored, but removed nothing: a stored
/// address no longer listed stayed held, its port bound, by the manager.
#[test]
fn without_fdstore_a_stored_address_no_longer_listed_is_still_removed() {
    let mut store = FakeStore::new(16);
    let mut ge = store.start(&args(&["127.0.0.1:0", "127.0.0.1:0"], &[]), &[]);
    let [kept, gone] = bound(&ge)[..] else { panic!("two addresses: {}", ge.log()) };
    store.wait_holding(8);
    stop(&mut ge);
    let waiting = pending(kept);
    let kept_arg = kept.to_string();
    let mut ge = store.start(&["--name", "fs", "--ready", "notify", "-l", &kept_arg], &[]);
    assert_eq!(pid_of(&waiting.join().unwrap().expect("answered")), ge.gen_pid(1));
    let left = poll_until(LONG, || store.names().len() == 4);
    assert!(left, "the store holds {:?}", store.names());
    assert_eq!(store.addr_of("graceexec-0-0"), Some(kept));
    let refused = TcpStream::connect(gone).map(|_| ()).map_err(|e| e.kind());
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused), "{gone} is closed everywhere");
    stop(&mut ge);
}
