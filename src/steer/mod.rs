//! Steered generations (issue 10): the kernel side.
//!
//! Each generation gets its own listening socket from one SO_REUSEPORT
//! group, and a classic BPF program attached to the group says which
//! socket each new connection goes to:
//! - `bpf` builds the program from a `Route`;
//! - `pool` binds the group's sockets, attaches programs and reads each
//!   socket's accept queue;
//! - `conns` counts the connections a process group still holds, so a
//!   draining generation is stopped only once it has nothing left, and
//!   lists the sockets listening (readiness/suspect.rs);
//! - `diag` asks the kernel about TCP sockets by state and port
//!   (sock_diag netlink), for `conns` and accept readiness.
//!
//! A drain is done when, in this order, the old socket's `queue_len` is 0
//! and then `Scanner::count` for the old group is 0: a connection leaves
//! the queue only by being accepted, and is in an fd table from then on.

pub mod bpf;
pub mod conns;
pub mod diag;
pub mod pool;
