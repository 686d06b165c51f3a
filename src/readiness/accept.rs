//! `--ready accept`: the candidate has accepted a connection on each of its
//! own sockets. Only steered sockets can tell: graceexec sends a probe
//! connection from a source port the steering program routes to the
//! candidate's socket, and watches it leave the accept queue.
//!
//! A server that binds its own port, ignores LISTEN_FDS, or runs under a
//! wrapper script that did not `exec` it never accepts there, so it is
//! never ready, and the reason says which it probably is.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use nix::sys::socket::{getsockopt, sockopt};

use super::routed_connect;
use crate::sockets::Sockets;
use crate::steer::conns;
use crate::supervisor::{GenId, Waiting};

/// Between looks at whether the probe connection was accepted.
const CHECK_EVERY: Duration = Duration::from_millis(20);
/// Before a failed probe connection is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(100);

enum State {
    Idle {
        next: Instant,
    },
    Connecting {
        stream: TcpStream,
        port: u16,
    },
    /// Established; queued until the server accepts it.
    Queued {
        stream: TcpStream,
        port: u16,
        next: Instant,
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
}

impl Accept {
    pub fn new(sockets: &Sockets, now: Instant) -> Accept {
        let targets = sockets
            .steered_targets()
            .into_iter()
            .map(|(at, to)| Target { at, to, state: State::Idle { next: now } })
            .collect();
        Accept { targets }
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
        Some(Waiting::NotAccepted { fd: 3 + t.at })
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
                        Ok(0) if is_connected(&stream) => State::Queued { stream, port, next: now },
                        Ok(0) => State::Connecting { stream, port },
                        _ => {
                            sockets.unroute_probe(port);
                            State::Idle { next: now + RETRY_AFTER }
                        }
                    }
                }
                State::Queued { stream, port, next } if now < next => {
                    State::Queued { stream, port, next }
                }
                State::Queued { stream, port, .. } => {
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
                        State::Queued { stream, port, next }
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
