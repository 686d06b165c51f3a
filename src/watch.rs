//! (stub)
#![allow(dead_code)]
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::time::Instant;
pub struct Watch {}
impl Watch {
    pub fn new(_paths: &[PathBuf]) -> anyhow::Result<Watch> {
        todo!()
    }
    pub fn fd(&self) -> BorrowedFd<'_> {
        todo!()
    }
    pub fn read(&mut self, _now: Instant) -> Vec<String> {
        todo!()
    }
    pub fn wake_at(&self) -> Option<Instant> {
        todo!()
    }
    pub fn take_due(&mut self, _now: Instant) -> bool {
        todo!()
    }
}
