//! Readers of `/proc/PID/stat` (proc_pid_stat(5)): the fields the event
//! loop and the watchdog need to tell whose process a pid is.
//!
//! The command name (field 2) is whatever the process chose, up to 15
//! bytes, printed raw between parentheses: it may hold spaces, `)`, `) `,
//! newlines or bytes that are not UTF-8. Every field after it is a number
//! or the one-letter state, so the parser reads from the *last* `)` on, as
//! bytes. A pid that is gone reads as None; so does one whose stat line
//! cannot be parsed, since nothing about it can then be trusted.

/// The fields of one `/proc/PID/stat` line that graceexec uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Field 1.
    pub pid: i32,
    /// Field 3: `R`, `S`, `D`, `Z`, `T`, ...
    pub state: u8,
    /// Field 4.
    pub ppid: i32,
    /// Field 5: the process group.
    pub pgrp: i32,
    /// Field 22: clock ticks after boot. With the pid, it names one
    /// process for good: a reused pid has a later start time.
    pub start_time: u64,
}

impl Stat {
    /// Exited, not yet reaped by its parent.
    pub fn zombie(&self) -> bool {
        self.state == b'Z'
    }
}

/// Parse one stat line. None for anything that does not look like one.
pub fn parse_stat(line: &[u8]) -> Option<Stat> {
    let open = line.iter().position(|&b| b == b'(')?;
    let close = line.iter().rposition(|&b| b == b')')?;
    if close < open {
        return None;
    }
    let pid = std::str::from_utf8(&line[..open]).ok()?.trim().parse().ok()?;
    // After the name everything is ASCII; anything else is not a stat line.
    let rest = std::str::from_utf8(&line[close + 1..]).ok()?;
    // Field 3 is index 0 from here.
    let fields: Vec<&str> = rest.split_ascii_whitespace().take(20).collect();
    let field = |n: usize| fields.get(n - 3).copied();
    let state = match field(3)?.as_bytes() {
        [b] if b.is_ascii_alphabetic() => *b,
        _ => return None,
    };
    Some(Stat {
        pid,
        state,
        ppid: field(4)?.parse().ok()?,
        pgrp: field(5)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
    })
}

/// `/proc/PID/stat`; None when the process is gone (or never was).
pub fn stat(pid: i32) -> Option<Stat> {
    if pid <= 0 {
        return None;
    }
    // procfs builds the line in the kernel: this read never waits on
    // another process.
    parse_stat(&std::fs::read(format!("/proc/{pid}/stat")).ok()?)
}

/// How far up the parent chain `in_group_or_descendant` looks. Deeper
/// trees than this are not how servers are built; the bound keeps a chain
/// that changes under the walk (pids reused) from running on.
const MAX_DEPTH: usize = 64;

/// The live (not zombie) processes of process group `pgid`, but `but`.
pub fn group_members(pgid: i32, but: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != but)
        .filter(|pid| stat(*pid).is_some_and(|s| s.pgrp == pgid && !s.zombie()))
        .collect()
}

/// The live (not zombie) children of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|c| stat(*c).is_some_and(|s| s.ppid == pid && !s.zombie()))
        .collect()
}

/// Whether `pid` belongs to a generation whose process group is `pgid` and
/// whose main process is `leader`: it is in that group, or `leader` is one
/// of its ancestors (a worker that moved to a group or session of its own).
/// None when `pid` is gone: whoever asks decides what an unknown sender
/// counts as.
///
/// An orphan is re-parented to graceexec (a subreaper), not to the
/// generation, so a descendant whose parent exited and that left the
/// group is no longer found. pids can be reused during the walk; the
/// answer is as good as /proc is at that instant.
pub fn in_group_or_descendant(pid: i32, pgid: i32, leader: i32) -> Option<bool> {
    belongs(pid, pgid, leader, stat)
}

/// `in_group_or_descendant` over any table of processes, for the tests.
fn belongs(pid: i32, pgid: i32, leader: i32, lookup: impl Fn(i32) -> Option<Stat>) -> Option<bool> {
    let first = lookup(pid)?;
    if first.pgrp == pgid || pid == leader {
        return Some(true);
    }
    let mut parent = first.ppid;
    for _ in 0..MAX_DEPTH {
        if parent == leader {
            return Some(true);
        }
        // 0: the parent is outside our pid namespace; 1: init.
        if parent <= 1 {
            return Some(false);
        }
        match lookup(parent) {
            Some(s) => parent = s.ppid,
            None => return Some(false),
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A real line (a `sleep` under a shell), fields 1 to 52.
    const SLEEP: &[u8] = b"4242 (sleep) S 4200 4200 4100 34816 4242 4194304 90 0 0 0 0 0 0 0 20 0 \
        1 0 98765 5668864 219 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    fn with_name(name: &[u8]) -> Vec<u8> {
        let rest = SLEEP.splitn(2, |&b| b == b')').nth(1).unwrap();
        [&b"4242 ("[..], name, b")", rest].concat()
    }

    #[test]
    fn reads_the_fields() {
        let s = parse_stat(SLEEP).unwrap();
        assert_eq!(s, Stat { pid: 4242, state: b'S', ppid: 4200, pgrp: 4200, start_time: 98765 });
        assert!(!s.zombie());
    }

    #[test]
    fn names_with_parentheses_spaces_and_junk_do_not_shift_fields() {
        for name in [
            &b") Z 1 1 1"[..],
            b"a) (b",
            b"x ) ) )",
            b"",
            b"new\nline",
            b"\xff\xfe bad utf8",
            b"((((",
        ] {
            let line = with_name(name);
            let s =
                parse_stat(&line).unwrap_or_else(|| panic!("{:?}", String::from_utf8_lossy(&line)));
            assert_eq!(
                (s.pid, s.state, s.ppid, s.pgrp, s.start_time),
                (4242, b'S', 4200, 4200, 98765)
            );
        }
    }

    #[test]
    fn zombies_and_garbage() {
        let z = String::from_utf8_lossy(SLEEP).replacen(") S ", ") Z ", 1);
        assert!(parse_stat(z.as_bytes()).unwrap().zombie());
        for bad in [
            &b""[..],
            b"4242",
            b"4242 (sleep)",
            b"4242 (sleep) S 1 2",
            b"x (a) S 1 2 3",
            b")4242 (",
        ] {
            assert_eq!(parse_stat(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // Cut before field 22.
        let cut = SLEEP.windows(5).position(|w| w == b"98765").unwrap();
        assert_eq!(parse_stat(&SLEEP[..cut]), None);
    }

    #[test]
    fn reads_this_process() {
        let me = stat(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(me.pgrp, nix::unistd::getpgrp().as_raw());
        assert_eq!(stat(0), None);
        assert_eq!(stat(-1), None);
    }

    fn table(rows: &[(i32, i32, i32)]) -> impl Fn(i32) -> Option<Stat> {
        let map: HashMap<i32, Stat> = rows
            .iter()
            .map(|&(pid, ppid, pgrp)| (pid, Stat { pid, state: b'S', ppid, pgrp, start_time: 1 }))
            .collect();
        move |pid| map.get(&pid).copied()
    }

    #[test]
    fn group_members_and_descendants_belong() {
        // graceexec 10; generation leader 20 (group 20) with a worker 21 in
        // the group, a daemonised 22 (own session) and its child 23; an
        // older generation 30 and its worker 31; an unrelated 40.
        let t = table(&[
            (10, 1, 10),
            (20, 10, 20),
            (21, 20, 20),
            (22, 20, 22),
            (23, 22, 22),
            (30, 10, 30),
            (31, 30, 30),
            (40, 1, 40),
        ]);
        for pid in [20, 21, 22, 23] {
            assert_eq!(belongs(pid, 20, 20, &t), Some(true), "{pid}");
        }
        for pid in [10, 30, 31, 40] {
            assert_eq!(belongs(pid, 20, 20, &t), Some(false), "{pid}");
        }
        assert_eq!(belongs(99, 20, 20, &t), None);
    }

    #[test]
    fn a_cycle_in_a_changing_table_ends() {
        let t = table(&[(50, 51, 50), (51, 50, 51)]);
        assert_eq!(belongs(50, 20, 20, &t), Some(false));
    }
}
