//! `--fdstore`: a pool the store kept with a socket missing. The sockets
//! graceexec does not take back must leave their SO_REUSEPORT group before
//! it grows the pool or binds the address anew, since the store lets go
//! of them only later (harness/fdstore.rs holds them until it reads).

use crate::fdstore::{args, outcomes, stop};
use crate::harness::*;

/// Run graceexec once with one steered address (and `more`) under
/// `store`, have the store lose `name`, and stop: the address.
fn stored_without(store: &mut FakeStore, name: &str, more: &[&str]) -> std::net::SocketAddr {
    let mut ge = store.start(&args(&["127.0.0.1:0"], more), &[]);
    let addr = ge.tcp_addr();
    store.wait_holding(4);
    store.forget(name);
    stop(&mut ge);
    addr
}

/// Regression: a pool stored with a socket missing in the middle was not
/// taken back at all, and bound anew beside the one the store held.
#[test]
fn a_pool_stored_with_a_socket_missing_is_taken_back_below_the_gap() {
    let mut store = FakeStore::new(16);
    let addr = stored_without(&mut store, "graceexec-0-2", &[]);
    let reqs: Vec<_> = (0..4).map(|_| pending(addr)).collect();
    let mut ge = store.start(&args(&["127.0.0.1:0"], &[]), &[]);
    let pid = ge.gen_pid(1);
    for r in outcomes(reqs) {
        assert_eq!(pid_of(&r.expect("answered")), pid);
    }
    ge.wait_log("1 stored socket(s) above index 1 closed");
    for _ in 0..20 {
        assert_eq!(pid_of(&get(addr, "/").unwrap()), pid);
    }
    store.wait_holding(4);
    stop(&mut ge);
}

/// Regression: a stored socket above a gap was closed by graceexec, but
/// the store still held it when graceexec grew the pool back, so the new
/// sockets joined the group behind it; once the manager dropped it, the
/// kernel moved the last new socket into its place, and a generation given
/// socket 2 was steered to socket 3, which no generation holds.
#[test]
fn a_pool_taken_back_below_a_gap_keeps_its_numbering_once_the_store_lets_go() {
    let mut store = FakeStore::new(16);
    let more = ["--keep-old", "10m"];
    let addr = stored_without(&mut store, "graceexec-0-2", &more);
    let mut ge = store.start(&args(&["127.0.0.1:0"], &more), &[]);
    ge.wait_ready(1);
    // The manager acts on the removal of socket 3 only now, after the
    // pool grew back (systemd does within milliseconds: after, too).
    store.wait_holding(4);
    // Generation 1 kept, then generation 2 kept: generation 3 gets socket 2.
    for gen in [2, 3] {
        let (code, _, err) = ctl(&["reload"]);
        assert_eq!(code, 0, "{err}");
        ge.wait_ready(gen);
    }
    let s = ge.wait_status("generation 3 serving", |s| s["state"] == "serving");
    let g3 = s["generations"].as_array().unwrap().iter().find(|g| g["generation"] == 3).unwrap();
    assert_eq!(g3["socket"], 2, "{s}");
    let pid = ge.gen_pid(3);
    for _ in 0..10 {
        assert_eq!(pid_of(&get(addr, "/").expect("answered")), pid);
    }
    stop(&mut ge);
}

/// Regression: a pool whose socket 0 was not stored is bound anew, but
/// the store still held the others when graceexec bound: the new pool
/// joined their group behind them, and once the manager dropped them,
/// the kernel's numbering no longer matched the pool's, and no connection
/// reached generation 1.
#[test]
fn a_pool_stored_without_socket_0_is_bound_anew_in_a_group_of_its_own() {
    let mut store = FakeStore::new(16);
    let addr = stored_without(&mut store, "graceexec-0-0", &[]);
    // The same address, given as it is: the stored sockets fit it.
    let listen = addr.to_string();
    let mut ge = store.start(&args(&[&listen], &[]), &[]);
    ge.wait_ready(1);
    ge.wait_log("the stored socket does not fit (socket 0 of the group was not stored)");
    // The manager acts on the removals only now, after the bind.
    store.wait_holding(4);
    let pid = ge.gen_pid(1);
    for _ in 0..10 {
        assert_eq!(pid_of(&get(addr, "/").expect("answered")), pid);
    }
    stop(&mut ge);
}
