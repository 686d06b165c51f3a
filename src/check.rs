//! (stub)
#![allow(dead_code)]
use std::os::fd::BorrowedFd;
pub struct Check {}
pub struct CheckOutcome {
    pub ok: bool,
    pub summary: String,
    pub output: Vec<String>,
}
impl Check {
    pub fn start(_cmd: &str, _next_gen: u32) -> anyhow::Result<Check> {
        todo!()
    }
    pub fn pid(&self) -> i32 {
        todo!()
    }
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        todo!()
    }
    pub fn read_available(&mut self) {
        todo!()
    }
    pub fn finished(&mut self, _exit_ok: bool, _status_text: &str) -> CheckOutcome {
        todo!()
    }
}
