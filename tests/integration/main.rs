//! Integration tests: the built graceexec, the example server, real
//! sockets on loopback. One binary, in the ripgrep style.

mod bad_input;
mod canary;
mod chdir;
mod contract;
mod control;
mod diagnose;
mod events;
mod examples;
mod faults;
mod fdstore;
mod fdstore_gaps;
mod files;
mod first_contact;
mod harness;
mod hooks;
mod lifecycle;
mod notify_auth;
mod probe_env;
mod readiness;
mod reaping;
mod reload;
mod signals;
mod sockets;
mod stalled;
mod steer;
mod upgrade;
mod upgrade_carried;
mod upgrade_more;
mod watchdog;
