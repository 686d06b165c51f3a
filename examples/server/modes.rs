//! The modes for the notify sender and `MAINPID=` tests:
//! - `EXAMPLE_READY_HELPER_GEN=LIST`: READY=1 is sent not by the server but
//!   by a helper process it starts, in its process group.
//! - `EXAMPLE_HANDOFF_GEN=LIST`: a classic daemon hand-off. The process
//!   forks; the child serves the inherited sockets and sends
//!   `MAINPID=<its pid>` with READY=1; the parent exits 0 once it has.
//! - `EXAMPLE_MAINPID=PID`: `MAINPID=PID` is sent with READY=1, whatever
//!   PID is.

use std::env;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{exit, Command, Stdio};

use super::{fail, gen_listed, notify, sys};

/// Set in the helper's environment to the message it is to send.
const HELPER_MESSAGE: &str = "EXAMPLE_NOTIFY_HELPER_MESSAGE";

/// In the helper (the server's own binary, started again): send the
/// message, then stay until the server exits (EOF on stdin). A sender that
/// has exited cannot be told apart from a stranger when graceexec looks
/// up its pid (sd_notify_barrier(3) is systemd's answer to that), so the
/// helper lives as long as the server it speaks for.
pub fn helper_main() {
    let Ok(msg) = env::var(HELPER_MESSAGE) else { return };
    let socket = env::var("NOTIFY_SOCKET").unwrap_or_default();
    if let Err(e) = notify(&socket, &msg) {
        eprintln!("server helper: cannot notify {socket}: {e}");
        exit(1);
    }
    let _ = io::stdin().read(&mut [0u8; 1]);
    exit(0);
}

/// Whether this generation's READY=1 is to come from a helper.
pub fn ready_from_helper(gen: &str) -> bool {
    gen_listed("EXAMPLE_READY_HELPER_GEN", gen)
}

/// Start the helper that sends `msg` on NOTIFY_SOCKET (inherited).
pub fn notify_from_helper(msg: &str) -> io::Result<()> {
    let mut helper =
        Command::new(env::current_exe()?).env(HELPER_MESSAGE, msg).stdin(Stdio::piped()).spawn()?;
    // Never written and never closed before the server exits.
    std::mem::forget(helper.stdin.take());
    Ok(())
}

/// A hand-off in progress: held by the child, which tells the waiting
/// parent when it has notified.
pub struct Handoff(UnixStream);

/// With `EXAMPLE_HANDOFF_GEN` listing `gen`: fork. The parent waits for
/// the child's word, then exits 0 (1 if the child died first); only the
/// child returns. Call it while the process has one thread.
pub fn handoff_if_asked(gen: &str) -> Option<Handoff> {
    if !gen_listed("EXAMPLE_HANDOFF_GEN", gen) {
        return None;
    }
    let (mut parent_end, child_end) =
        UnixStream::pair().unwrap_or_else(|e| fail(&format!("socketpair: {e}")));
    match sys::fork_single_threaded() {
        Err(e) => fail(&format!("fork: {e}")),
        Ok(0) => {
            drop(parent_end);
            Some(Handoff(child_end))
        }
        Ok(child) => {
            drop(child_end);
            let mut byte = [0u8; 1];
            let told = matches!(parent_end.read(&mut byte), Ok(1));
            eprintln!("server: pid {} handed off to pid {child}", std::process::id());
            exit(if told { 0 } else { 1 })
        }
    }
}

/// The `MAINPID=` line to send with READY=1, if any.
pub fn mainpid_line(handoff: &Option<Handoff>) -> String {
    match (handoff, env::var("EXAMPLE_MAINPID")) {
        (Some(_), _) => format!("MAINPID={}\n", std::process::id()),
        (None, Ok(pid)) => format!("MAINPID={pid}\n"),
        (None, Err(_)) => String::new(),
    }
}

/// Tell the parent that MAINPID= and READY=1 were sent: it exits now.
pub fn handoff_done(handoff: Option<Handoff>) {
    if let Some(Handoff(mut s)) = handoff {
        let _ = s.write_all(b"!");
    }
}
