//! The queries' rules; then, in `kernel`, the real kernel's answers on
//! loopback sockets compared with /proc's, and in `bench` what each costs.

use super::*;

#[test]
fn queued_is_the_handshake_or_the_queue() {
    assert!(is_queued(SYN_RECV, 0));
    assert!(is_queued(ESTABLISHED, 0) && is_queued(CLOSE_WAIT, 0));
    assert!(!is_queued(ESTABLISHED, 9) && !is_queued(CLOSE_WAIT, 9));
    for closed in [FIN_WAIT1, FIN_WAIT2, TIME_WAIT, LAST_ACK, CLOSING] {
        assert!(!is_queued(closed, 0), "{closed}");
    }
}

#[test]
fn only_lasting_errors_mean_unavailable() {
    let e = |n: Errno| io::Error::from_raw_os_error(n as i32);
    for gone in [Errno::EPROTONOSUPPORT, Errno::ENOENT, Errno::EINVAL, Errno::EACCES] {
        assert!(unavailable(&e(gone)), "{gone}");
    }
    for passing in [Errno::EAGAIN, Errno::ENOBUFS, Errno::EMFILE, Errno::EINTR] {
        assert!(!unavailable(&e(passing)), "{passing}");
    }
    assert!(!unavailable(&wire::invalid("x")));
}

mod bench;
mod kernel;
