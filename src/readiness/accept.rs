//! `--ready accept`: the candidate has accepted a connection on each of its
//! own sockets. Only steered sockets can tell: graceexec sends a probe
//! connection from a source port the steering program routes to the
//! candidate's socket, and watches it leave the accept queue.
//!
//! A server that binds its own port, ignores LISTEN_FDS, or runs under a
//! wrapper script that did not `exec` it never accepts there, so it is
//! never ready, and the reason says which it probably is: once a probe
//! connection has waited `FIRST_LOOK` in the queue, and then every
//! `LOOK_EVERY`, the loop looks at the candidate's processes (suspect.rs).

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use nix::sys::socket::{getsockopt, sockopt};

use super::{routed_connect, suspect};
use crate::sockets::Sockets;
use crate::steer::conns;
use crate::supervisor::{GenId, Suspect, Waiting};

/// Between looks at whether the probe connection was accepted.
const CHECK_EVERY: Duration = Duration::from_millis(20);
/// Before a failed probe connection is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// A server that takes its socket accepts within milliseconds of taking
/// it; one still starting up gets this long before anyone looks.
const FIRST_LOOK: Duration = Duration::from_millis(500);
/// Between looks, which read every pid's /proc/PID/stat.
const LOOK_EVERY: Duration = Duration::from_secs(2);

enum State {
    Idle {
        next: Instant,
    },
    Connecting {
        stream: TcpStream,
        port: u16,
    },
    /// Established (at `since`); queued until the server accepts it.
    Queued {
        stream: TcpStream,
        port: u16,
        next: Instant,
        since: Instant,
    },
    Accepted,
}

struct Target {
    /// Its position in `--listen` order: fd 3 + at.
    at: usize,
    to: SocketAddr,
    state: State,
}

pub struct Accept {
    targets: Vec<Target>,
    /// When the last look at the candidate's processes was, and what it
    /// found.
    looked: Option<Instant>,
    suspect: Option<Suspect>,
}

impl Accept {
    pub fn new(sockets: &Sockets, now: Instant) -> Accept {
        let targets = sockets
            .steered_targets()
            .into_iter()
            .map(|(at, to)| Target { at, to, state: State::Idle { next: now } })
            .collect();
        Accept { targets, looked: None, suspect: None }
    }

    pub fn poll_fds(&self) -> Vec<(std::os::fd::BorrowedFd<'_>, PollFlags)> {
        use std::os::fd::AsFd;
        self.targets
            .iter()
            .filter_map(|t| match &t.state {
                State::Connecting { stream, .. } => Some((stream.as_fd(), PollFlags::POLLOUT)),
                _ => None,
            })
            .collect()
    }

    pub fn wake_at(&self) -> Option<Instant> {
        self.targets
            .iter()
            .filter_map(|t| match t.state {
                State::Idle { next } | State::Queued { next, .. } => Some(next),
                _ => None,
            })
            .min()
    }

    /// What it waits for: the first socket not accepted from yet.
    pub fn waiting(&self) -> Option<Waiting> {
        let t = self.targets.iter().find(|t| !matches!(t.state, State::Accepted))?;
        Some(Waiting::NotAccepted { fd: 3 + t.at, suspect: self.suspect.clone() })
    }

    /// Look at the candidate's processes (group and main process `pids`),
    /// once a probe connection has waited `FIRST_LOOK` in the queue and
    /// the last look is `LOOK_EVERY` old.
    pub fn look(&mut self, now: Instant, gen: GenId, pids: (i32, i32), verbose: bool) {
        let waited = self.targets.iter().any(|t| match t.state {
            State::Queued { since, .. } => now.saturating_duration_since(since) >= FIRST_LOOK,
            _ => false,
        });
        let since_last = self.looked.map(|at| now.saturating_duration_since(at));
        if !waited || since_last.is_some_and(|d| d < LOOK_EVERY) {
            return;
        }
        let found = suspect::look(pids.0, pids.1);
        if verbose {
            let what = found.as_ref().map_or("nothing stands out".into(), |s| s.to_string());
            crate::log::debug(&format!("generation {gen} accepts nothing yet: {what}"));
        }
        self.looked = Some(now);
        self.suspect = found;
    }

    /// Move every target on; true once each has been accepted from.
    pub fn advance(&mut self, now: Instant, gen: GenId, sockets: &mut Sockets) -> bool {
        for t in &mut self.targets {
            t.state = match std::mem::replace(&mut t.state, State::Accepted) {
                State::Idle { next } if now < next => State::Idle { next },
                State::Idle { .. } => match routed_connect(t.to, gen, sockets) {
                    Ok((stream, Some(port))) => State::Connecting { stream, port },
                    Ok((_, None)) | Err(_) => State::Idle { next: now + RETRY_AFTER },
                },
                State::Connecting { stream, port } => {
                    // Only POLLOUT ends a connect; SO_ERROR then says how.
                    match getsockopt(&stream, sockopt::SocketError) {
                        Ok(0) if is_connected(&stream) => {
                            State::Queued { stream, port, next: now, since: now }
                        }
                        Ok(0) => State::Connecting { stream, port },
                        _ => {
                            sockets.unroute_probe(port);
                            State::Idle { next: now + RETRY_AFTER }
                        }
                    }
                }
                State::Queued { stream, port, next, since } if now < next => {
                    State::Queued { stream, port, next, since }
                }
                State::Queued { stream, port, since, .. } => {
                    // An empty queue alone is no proof (the handshake's last
                    // step may not have queued it yet), and a busy one hides
                    // ours: the connection tables decide, read less often
                    // while others queue ahead of it.
                    let busy = sockets.queue_of(t.at, gen).is_some_and(|q| q > 0);
                    let me = stream.local_addr();
                    if matches!(me.and_then(|me| conns::accepted(t.to, me)), Ok(Some(true))) {
                        sockets.unroute_probe(port);
                        drop(stream);
                        State::Accepted
                    } else {
                        let next = now + if busy { CHECK_EVERY * 5 } else { CHECK_EVERY };
                        State::Queued { stream, port, next, since }
                    }
                }
                State::Accepted => State::Accepted,
            };
        }
        self.targets.iter().all(|t| matches!(t.state, State::Accepted))
    }
}

/// Whether a connect in progress has finished (the peer address is known).
fn is_connected(stream: &TcpStream) -> bool {
    stream.peer_addr().is_ok()
}
