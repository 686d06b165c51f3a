//! A shared listening socket across `graceexec upgrade`: its fd by number,
//! and the socket file it created, if any, by identity.

use std::os::fd::AsFd;

use anyhow::Result;

use super::Listener;
use crate::sockfile::SocketFile;

/// A shared socket across `graceexec upgrade`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ListenerOut {
    name: String,
    fd: i32,
    shown: String,
    created: Option<crate::carry::FileOut>,
}

impl Listener {
    pub fn carry(&self, handed: &mut crate::carry::Handed) -> ListenerOut {
        ListenerOut {
            name: self.name.clone(),
            fd: handed.fd(self.fd.as_fd()),
            shown: self.shown.clone(),
            created: self._created.as_ref().map(SocketFile::carry),
        }
    }

    pub fn carried_fd(l: &ListenerOut) -> i32 {
        l.fd
    }

    pub fn adopt(l: ListenerOut) -> Result<Listener> {
        let fd = crate::carry::take_socket(l.fd, "a listening socket")?;
        let created = l.created.map(SocketFile::adopt);
        Ok(Listener { name: l.name, fd, shown: l.shown, _created: created })
    }
}
