//! Steered generations (issue 10): the kernel side.
//!
//! Each generation gets its own listening socket from one SO_REUSEPORT
//! group, and a classic BPF program attached to the group says which
//! socket each new connection goes to:
//! - `bpf` builds the program from a `Route`;
//! - `pool` binds the group's sockets, attaches programs and reads each
//!   socket's accept queue;
//! - `conns` counts the connections a process group still holds, so a
//!   draining generation is stopped only once it has nothing left.

pub mod bpf;
pub mod conns;
pub mod pool;
mod sys;
