//! Lines streamed to a client that follows the instance (`graceexec
//! events`): queued per connection, written when poll says the socket
//! takes them, never waited for. A client that does not keep up gets one
//! last line saying how much it missed, and is dropped.

use std::time::{Duration, Instant};

use super::super::protocol::{Answer, Reply};
use super::{write_some, ConnId, Server};

/// Bytes queued for one follower before it counts as stalled.
const MAX_QUEUED: usize = 64 * 1024;
/// How long a stalled follower has to take its last line.
const LAST_LINE_WAIT: Duration = Duration::from_secs(5);

impl Server {
    /// Queue `reply` for follower `id`; false once it is being dropped (it
    /// lagged, or has gone), so that the caller stops sending to it.
    pub fn stream(&mut self, id: ConnId, mut reply: Reply, now: Instant) -> bool {
        reply.name = Some(self.name.clone());
        let Some(c) = self.conns.get_mut(&id) else { return false };
        if let Some(missed) = c.lagged.as_mut() {
            *missed += 1;
            return false;
        }
        let line = reply.line();
        if c.out.len() + line.len() > MAX_QUEUED {
            c.lagged = Some(1);
            c.drop_at = Some(now + LAST_LINE_WAIT);
            return false;
        }
        c.out.extend_from_slice(line.as_bytes());
        self.flush(id);
        self.conns.contains_key(&id)
    }

    /// Write what is queued for `id`; a lagged follower whose queue is
    /// written gets its last line, then is closed.
    pub(super) fn flush(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if !write_some(&c.stream, &mut c.out) {
            self.close(id);
            return;
        }
        if c.out.is_empty() {
            if let Some(missed) = c.lagged.take() {
                let mut last = Reply::new(Answer::Lagged { missed });
                last.name = Some(self.name.clone());
                c.out.extend_from_slice(last.line().as_bytes());
                c.lagged = None;
                c.closing = true;
                if !write_some(&c.stream, &mut c.out) {
                    self.close(id);
                    return;
                }
            }
        }
        let c = self.conns.get(&id).expect("present");
        if c.out.is_empty() && c.closing {
            self.close(id);
        }
    }

    /// Followers that had their chance to take their last line.
    pub(super) fn drop_stalled(&mut self, now: Instant) {
        let stalled: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.drop_at.is_some_and(|t| now >= t))
            .map(|(id, _)| *id)
            .collect();
        for id in stalled {
            self.close(id);
        }
    }
}
