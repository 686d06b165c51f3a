//! Owning every signal from main's first instruction (tini's rule): all of
//! them are blocked, except the synchronous faults, and read from a
//! signalfd by the event loop; the supervisor decides what each one means
//! (supervisor/signals.rs). Children start with an empty mask (spawn).

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::supervisor::SYNCHRONOUS;

/// Every signal but the synchronous faults.
fn owned() -> SigSet {
    let mut set = SigSet::all();
    for s in SYNCHRONOUS {
        if let Ok(sig) = Signal::try_from(s) {
            set.remove(sig);
        }
    }
    set
}

/// Block them; returns the mask that was in place, for the client
/// commands to restore (they must die of Ctrl-C like any command).
pub fn block_all() -> nix::Result<SigSet> {
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&owned()), Some(&mut old))?;
    Ok(old)
}

pub fn restore(mask: &SigSet) {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(mask), None);
}

/// The signalfd that reads what `block_all` blocked.
pub fn signalfd() -> nix::Result<SignalFd> {
    SignalFd::with_flags(&owned(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

/// Orphans of graceexec's children are re-parented to graceexec, which
/// reaps them (prctl(2), PR_SET_CHILD_SUBREAPER).
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}
