//! The sweep against real processes.

use std::os::unix::process::{CommandExt, ExitStatusExt};

use nix::fcntl::OFlag;
use std::process::Command;

use super::*;

fn sleeper() -> std::process::Child {
    Command::new("sleep").arg("1000").process_group(0).spawn().unwrap()
}

#[test]
fn a_pid_reused_by_another_process_is_not_killed() {
    // Regression: the watchdog killed the group of whatever process
    // had the pid by then, such as a later session leader that was
    // given the number of a generation reaped by init.
    let mut other = sleeper();
    let pid = other.id() as i32;
    let started = Group::named(pid).started;
    assert!(started.is_some());
    let before_it = started.map(|s| s - 1);
    // A leader named when it ran (then reaped, its pid reused), and
    // one already reaped when it was named.
    let mut groups = vec![Group { pid, started: before_it }, Group { pid, started: None }];
    sweep(&mut groups, true);
    assert!(groups.is_empty());
    // A SIGKILL sent by the sweep would be what it dies of, whatever
    // comes after it.
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let status = other.wait().unwrap();
    assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "killed the pid's new owner");
}

#[test]
fn a_running_leader_keeps_its_group_alive_until_the_stop_timeout() {
    let mut server = sleeper();
    let mut groups = vec![Group::named(server.id() as i32)];
    sweep(&mut groups, false);
    assert_eq!(groups.len(), 1);
    sweep(&mut groups, true);
    assert!(groups.is_empty());
    assert_eq!(server.wait().unwrap().signal(), Some(Signal::SIGKILL as i32));
}

/// A Watchdog whose pipe nobody reads yet: (it, the read end).
fn unread() -> (Watchdog, OwnedFd) {
    let (r, w) = unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
    let dog = Watchdog { pid: Pid::from_raw(0), pipe: w, pending: VecDeque::new() };
    (dog, r)
}

fn words(r: &OwnedFd) -> Vec<i32> {
    let mut buf = vec![0u8; 1 << 20];
    let n = unistd::read(r, &mut buf).unwrap_or(0);
    buf[..n].chunks(4).map(|c| i32::from_ne_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn a_full_pipe_keeps_every_watch_in_order_and_never_blocks() {
    let (mut dog, r) = unread();
    // 64 KiB of pipe: 16384 words, then the pipe is full.
    let mut sent = Vec::new();
    let mut pid = 1000;
    while dog.pending.is_empty() {
        dog.watch(pid);
        sent.push(pid);
        pid += 1;
    }
    assert!(dog.poll_fd().is_some());
    // Waiting: a forget cancels its own watch; other forgets wait too.
    dog.watch(5);
    dog.watch(6);
    dog.forget(5);
    dog.forget(1000);
    assert_eq!(Vec::from(dog.pending.clone()), [pid - 1, 6, -1000]);
    // Past the bound, forgets make room; watches never go.
    for p in 0..MAX_PENDING as i32 {
        dog.forget(20_000 + p);
    }
    dog.watch(7);
    assert_eq!(dog.pending.len(), MAX_PENDING);
    assert_eq!(dog.pending.iter().filter(|&&w| w > 0).count(), 3);
    assert!(!dog.pending.contains(&-1000), "the oldest forget went first");
    // The watchdog reads; everything waiting follows, in order.
    let mut got = words(&r);
    while dog.poll_fd().is_some() {
        dog.on_writable();
        got.extend(words(&r));
    }
    // (`sent` has the watch that found the pipe full.)
    sent.push(6);
    // -1000 and the three oldest new forgets made room.
    sent.extend((3..MAX_PENDING as i32).map(|p| -(20_000 + p)));
    sent.push(7);
    let first_difference = got.iter().zip(&sent).position(|(a, b)| a != b);
    assert_eq!((first_difference, got.len()), (None, sent.len()));
}
