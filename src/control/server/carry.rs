//! The control socket across `graceexec upgrade`: the listener, and every
//! connection as it stands (a request half read, a follower's queued
//! lines, the upgrade's own client, which the new image answers).

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{Conn, ConnId, Server};
use crate::carry::{self, FileOut, Handed};
use crate::sockfile::SocketFile;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerOut {
    listener: i32,
    file: FileOut,
    conns: Vec<ConnOut>,
    next_id: ConnId,
    name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ConnOut {
    id: ConnId,
    fd: i32,
    buf: Option<Vec<u8>>,
    /// The request's deadline, from the moment of the export.
    deadline: Duration,
    out: Vec<u8>,
    lagged: Option<u64>,
    closing: bool,
    drop_in: Option<Duration>,
}

impl Server {
    pub fn carry(&self, now: Instant, handed: &mut Handed) -> ServerOut {
        let left = |t: Instant| t.saturating_duration_since(now);
        ServerOut {
            listener: handed.fd(self.listener.as_fd()),
            file: self.file.carry(),
            conns: self
                .conns
                .iter()
                .map(|(id, c)| ConnOut {
                    id: *id,
                    fd: handed.fd(c.stream.as_fd()),
                    buf: c.buf.clone(),
                    deadline: left(c.deadline),
                    out: c.out.clone(),
                    lagged: c.lagged,
                    closing: c.closing,
                    drop_in: c.drop_at.map(left),
                })
                .collect(),
            next_id: self.next_id,
            name: self.name.clone(),
        }
    }

    /// Every fd of `s`, checked before any is taken.
    pub fn carried_fds(s: &ServerOut) -> Vec<(i32, u32)> {
        let sock = nix::libc::S_IFSOCK;
        let mut fds = vec![(s.listener, sock)];
        fds.extend(s.conns.iter().map(|c| (c.fd, sock)));
        fds
    }

    pub fn adopt(s: ServerOut, now: Instant) -> Result<Server> {
        let listener = UnixListener::from(carry::take_socket(s.listener, "the control socket")?);
        let mut conns = BTreeMap::new();
        for c in s.conns {
            let stream = UnixStream::from(carry::take_socket(c.fd, "a control connection")?);
            let conn = Conn {
                stream,
                buf: c.buf,
                deadline: now + c.deadline,
                out: c.out,
                lagged: c.lagged,
                closing: c.closing,
                drop_at: c.drop_in.map(|d| now + d),
            };
            conns.insert(c.id, conn);
        }
        Ok(Server {
            listener,
            file: SocketFile::adopt(s.file),
            conns,
            next_id: s.next_id,
            accept_paused_until: None,
            name: s.name,
        })
    }
}
