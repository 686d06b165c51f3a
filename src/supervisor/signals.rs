//! What each signal sent to graceexec means. Every signal but the
//! synchronous ones (a fault of graceexec's own, which must kill it) is
//! blocked from main's first instruction and read from a signalfd, so each
//! one is decided here, in one place, as tini does.

use std::time::Instant;

use nix::libc;

use super::phase::Phase;
use super::{Action, Event, GenId, Supervisor};
use crate::units::{rt_range, signal_name, SigNo};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Reload,
    Stop,
    /// Passed on to the serving generation's main process.
    Forward,
    /// Dropped, with a log line (`quiet`: a debug line).
    Ignore {
        quiet: bool,
    },
}

/// The faults a process raises on itself (SIGSEGV...): never blocked, so
/// that a bug in graceexec kills it instead of looping on the fault.
pub const SYNCHRONOUS: [SigNo; 7] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGABRT,
    libc::SIGTRAP,
    libc::SIGSYS,
];

/// The rule for `sig`. Real-time signals have no meaning of their own, so
/// they are the application's: forwarded. SIGCHLD is the loop's (reaping).
pub fn rule(sig: SigNo) -> Rule {
    match sig {
        libc::SIGHUP | libc::SIGUSR2 => Rule::Reload,
        libc::SIGTERM | libc::SIGINT => Rule::Stop,
        libc::SIGUSR1 | libc::SIGWINCH | libc::SIGQUIT | libc::SIGTTIN | libc::SIGTTOU => {
            Rule::Forward
        }
        s if rt_range().contains(&s) => Rule::Forward,
        // A write to a closed pipe (EPIPE tells the writer), a resume
        // after SIGSTOP: nothing to do, nothing worth a line.
        libc::SIGPIPE | libc::SIGCONT | libc::SIGCHLD => Rule::Ignore { quiet: true },
        // ALRM, PWR, VTALRM, PROF, XCPU, XFSZ, URG, IO, STKFLT, TSTP...
        _ => Rule::Ignore { quiet: false },
    }
}

impl Supervisor {
    pub(super) fn on_signals(&mut self, now: Instant, mut p: Phase, batch: Vec<SigNo>) -> Phase {
        // A signalfd hands pending signals over lowest number first, not in
        // the order they came (HUP=1 before TERM=15): when a stop is in the
        // batch, a reload from it would only start a doomed candidate.
        let stopping = batch.iter().any(|s| rule(*s) == Rule::Stop);
        for sig in batch {
            let name = signal_name(sig);
            p = match rule(sig) {
                Rule::Reload if stopping => {
                    self.debug(format!("received {name}: dropped, a stop came with it"));
                    p
                }
                Rule::Reload => {
                    self.debug(format!("received {name}"));
                    self.step(now, p, Event::Reload { waiter: None, canary: None })
                }
                Rule::Stop => match p {
                    Phase::Stopping(s) => self.escalate(now, s),
                    Phase::Done => Phase::Done,
                    p => {
                        self.info(format!("received {name}: shutting down"));
                        self.shutdown(now, p, Vec::new())
                    }
                },
                Rule::Forward => {
                    self.forward(&p, sig);
                    p
                }
                Rule::Ignore { quiet: true } => {
                    self.debug(format!("received {name}: ignored"));
                    p
                }
                Rule::Ignore { quiet: false } => {
                    self.info(format!("received {name}: ignored"));
                    p
                }
            };
        }
        p
    }

    /// To the serving generation (both, in a split), or while stopping to
    /// the one that served.
    fn forward(&mut self, p: &Phase, signal: SigNo) {
        let to: Vec<GenId> = match p {
            Phase::Stopping(s) => {
                s.serving.filter(|g| self.draining.contains_key(g)).into_iter().collect()
            }
            Phase::Split(s) => vec![s.old.id, s.new.id],
            p => p.current().map(|c| c.id).into_iter().collect(),
        };
        if to.is_empty() {
            self.debug(format!("no serving generation to forward {} to", signal_name(signal)));
        }
        for gen in to {
            self.out.push(Action::Signal { gen, signal });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_has_a_rule_and_faults_are_never_blocked() {
        assert_eq!(rule(libc::SIGHUP), Rule::Reload);
        assert_eq!(rule(libc::SIGINT), Rule::Stop);
        assert_eq!(rule(libc::SIGRTMIN()), Rule::Forward);
        assert_eq!(rule(libc::SIGRTMAX()), Rule::Forward);
        for s in [libc::SIGALRM, libc::SIGPWR, libc::SIGVTALRM, libc::SIGXCPU, libc::SIGTSTP] {
            assert_eq!(rule(s), Rule::Ignore { quiet: false }, "{}", signal_name(s));
        }
        assert!(!SYNCHRONOUS.contains(&libc::SIGTERM));
    }
}
