//! (stub until the control branch lands)
#![allow(dead_code)]
pub mod client;
pub mod paths;
pub mod server;
pub enum Request {
    Reload { wait: bool },
    Status,
    Stop,
}
