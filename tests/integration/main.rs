//! Integration tests: the built graceexec, the example server, real
//! sockets on loopback. One binary, in the ripgrep style.

mod bad_input;
mod contract;
mod harness;
mod lifecycle;
mod readiness;
mod reload;
mod sockets;
