//! Lifecycle lines on stderr: `graceexec[PID]: message`.
//!
//! They go through outbox.rs, in order with the children's lines: never a
//! blocking write in the long-running instance, dropped and counted if
//! stderr stays backed up. Write errors are ignored on purpose: stderr may
//! be a pipe whose reader has gone, and graceexec must keep supervising
//! rather than panic the way `eprintln!` does.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::outbox::{self, Stream};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

static MAX: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// `-q` keeps warnings and errors; `-v` adds debug lines.
pub fn set_verbosity(quiet: bool, verbose: bool) {
    let level = match (quiet, verbose) {
        (true, _) => Level::Warn,
        (false, true) => Level::Debug,
        _ => Level::Info,
    };
    MAX.store(level as u8, Ordering::Relaxed);
}

/// The level in force, carried across `graceexec upgrade`.
pub fn level() -> u8 {
    MAX.load(Ordering::Relaxed)
}

pub fn set_level(level: u8) {
    MAX.store(level.min(Level::Debug as u8), Ordering::Relaxed);
}

fn enabled(level: Level) -> bool {
    level as u8 <= MAX.load(Ordering::Relaxed)
}

pub fn log(level: Level, msg: &str) {
    if enabled(level) {
        let line = format!("graceexec[{}]: {msg}\n", std::process::id());
        outbox::own_line(Stream::Stderr, line.as_bytes());
    }
}

pub fn error(msg: &str) {
    log(Level::Error, msg)
}
pub fn warn(msg: &str) {
    log(Level::Warn, msg)
}
pub fn info(msg: &str) {
    log(Level::Info, msg)
}
pub fn debug(msg: &str) {
    log(Level::Debug, msg)
}
