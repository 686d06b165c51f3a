use super::Request;
use nix::poll::PollFlags;
use nix::unistd::{Gid, Uid};
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::Instant;
pub type ConnId = u64;
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Key {
    Listener,
    Conn(ConnId),
}
pub struct Server {}
impl Server {
    pub fn bind(_path: &Path, _name: &str) -> anyhow::Result<(Server, Option<String>)> {
        todo!()
    }
    pub fn path(&self) -> &Path {
        todo!()
    }
    pub fn chown(&self, _uid: Uid, _gid: Gid) -> anyhow::Result<()> {
        todo!()
    }
    pub fn poll_fds(&self) -> Vec<(Key, BorrowedFd<'_>, PollFlags)> {
        todo!()
    }
    pub fn wake_at(&self) -> Option<Instant> {
        todo!()
    }
    pub fn service(
        &mut self,
        _ready: &[Key],
        _now: Instant,
    ) -> (Vec<(ConnId, Request)>, Vec<String>) {
        todo!()
    }
    pub fn reply(&mut self, _id: ConnId, _reply: &serde_json::Value, _close: bool) {
        todo!()
    }
    pub fn is_open(&self, _id: ConnId) -> bool {
        todo!()
    }
}
