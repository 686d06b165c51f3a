//! `--fdstore`: a pool the store kept with a socket missing.

use crate::fdstore::{args, outcomes, stop};
use crate::harness::*;

/// Regression: a pool stored with a socket missing in the middle was not
/// taken back at all, and bound anew beside the one the store held.
#[test]
fn a_pool_stored_with_a_socket_missing_is_taken_back_below_the_gap() {
    let mut store = FakeStore::new(16);
    let mut ge = store.start(&args(&["127.0.0.1:0"], &[]), &[]);
    let addr = ge.tcp_addr();
    store.wait_holding(4);
    store.forget("graceexec-0-2");
    stop(&mut ge);
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
