//! What a candidate that accepts nothing on its socket probably does
//! instead, from a look at its processes: the mistakes of issue 11.
//!
//! - A process of its group holds a TCP socket listening somewhere, one
//!   graceexec did not give it: the server binds a port of its own.
//! - Its main process is a shell with a child: a wrapper script that runs
//!   the server without `exec`. The server's pid is then not LISTEN_PID,
//!   and a server that checks it (as it should) leaves the sockets alone.
//!
//! A look reads /proc (every pid's stat, the group's fd links) and asks
//! the kernel for its listening sockets (sock_diag, which walks only the
//! listeners' hash); none of it waits on another process. The accept probe
//! asks for one only once its connection has waited a while, and then
//! every few seconds (accept.rs).

use std::net::SocketAddr;

use crate::steer::conns;
use crate::supervisor::Suspect;
use crate::{log, procfs};

/// The shells a wrapper script runs under, by their executable's name.
const SHELLS: [&str; 9] = ["sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "fish"];

/// What generation `leader`'s processes (its main process `main`)
/// probably do instead of accepting; None when nothing stands out.
pub fn look(leader: i32, main: i32) -> Option<Suspect> {
    let listens = match own_listeners(leader) {
        Ok(addrs) => addrs.into_iter().next(),
        Err(e) => {
            log::debug(&format!(
                "cannot list what generation pid {leader}'s group listens on: {e}"
            ));
            None
        }
    };
    match shell(main) {
        Some(shell) if !procfs::children(main).is_empty() => {
            Some(Suspect::Wrapper { shell, listens })
        }
        _ => listens.map(Suspect::OwnPort),
    }
}

/// The addresses that processes of group `pgrp` listen on (TCP), sorted,
/// leaving out the sockets graceexec holds too: those it passed them.
fn own_listeners(pgrp: i32) -> std::io::Result<Vec<SocketAddr>> {
    let mut held = conns::group_sockets(pgrp)?;
    let ours = conns::own_sockets()?;
    held.retain(|i| ours.binary_search(i).is_err());
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let mut all = Vec::new();
    conns::listening(&mut all)?;
    let mut addrs: Vec<SocketAddr> =
        all.into_iter().filter(|(_, i)| held.binary_search(i).is_ok()).map(|(a, _)| a).collect();
    addrs.sort_unstable();
    addrs.dedup();
    Ok(addrs)
}

/// The shell `pid` runs, by its executable's name (a script's `comm` is
/// the script's name; its exe is the interpreter); None if it is not one.
fn shell(pid: i32) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let name = match exe.as_ref().and_then(|e| e.file_name()) {
        Some(name) => name.to_string_lossy().into_owned(),
        // Unreadable (another uid): its comm still names `sh -c`'s shell.
        None => std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim_end().to_string(),
    };
    SHELLS.contains(&name.as_str()).then_some(name)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::os::fd::OwnedFd;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    /// Killed and reaped on drop.
    struct Group(Child);

    impl Drop for Group {
        fn drop(&mut self) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = self.0.wait();
        }
    }

    /// `sh -c script` as the leader of a process group of its own, with
    /// `stdin`.
    fn group(script: &str, stdin: Stdio) -> (Group, i32) {
        let mut sh = Command::new("/bin/sh");
        let child = sh.args(["-c", script]).stdin(stdin).process_group(0).spawn().unwrap();
        let pid = child.id() as i32;
        (Group(child), pid)
    }

    fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(t) = f() {
                return t;
            }
            assert!(Instant::now() < end, "still not: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_shell_with_a_child_is_a_wrapper() {
        // `; :` keeps the shell from exec'ing its last command.
        let (_g, pid) = group("sleep 100; :", Stdio::null());
        let found = until("the child", || look(pid, pid));
        assert!(matches!(&found, Suspect::Wrapper { listens: None, .. }), "{found:?}");
    }

    /// `sleep` with `l` as its stdin, in a group of its own, once it runs
    /// (before its exec, the child still holds all of this process's fds).
    fn sleep_holding(l: OwnedFd) -> (Group, i32) {
        let (g, pid) = group("exec sleep 100", l.into());
        let exe = format!("/proc/{pid}/exe");
        let is_sleep = || std::fs::read_link(&exe).is_ok_and(|e| e.ends_with("sleep"));
        until("sleep", || is_sleep().then_some(()));
        assert!(!conns::group_sockets(pid).unwrap().is_empty(), "it holds the listener");
        (g, pid)
    }

    #[test]
    fn a_listener_only_the_group_holds_is_a_port_of_its_own() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (_g, pid) = sleep_holding(l.into());
        assert_eq!(look(pid, pid), Some(Suspect::OwnPort(addr)));
    }

    #[test]
    fn a_listener_the_group_inherited_from_graceexec_is_not_its_own() {
        // This process holds it too, as graceexec holds what it passes.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (_g, pid) = sleep_holding(l.try_clone().unwrap().into());
        assert_eq!(look(pid, pid), None);
    }
}
