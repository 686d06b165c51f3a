//! A log reader that stops: graceexec's stderr is a FIFO whose reader
//! opened it and then read no more, and the server writes to stderr
//! without pause (EXAMPLE_CHATTY_FILE). graceexec must go on answering,
//! reloading, stopping on time, and its watchdog killing on time.
//!
//! The bounds are for stuck against not stuck, with room to spare.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{mkfifo, Pid};

use crate::harness::*;

/// What the issue asks of `status` with a stalled reader.
const ANSWER: Duration = Duration::from_secs(1);

struct Stalled {
    ge: Child,
    /// The FIFO's read end (O_NONBLOCK, ours alone), read only until
    /// `stall`.
    reader: File,
    /// A writer of the FIFO that writes nothing: polled to see it full.
    probe: File,
    log: String,
    sock: PathBuf,
    chatty: PathBuf,
    _dir: TempDir,
}

impl Stalled {
    /// graceexec with stderr on a FIFO and `-l unix:SOCK`, which needs no
    /// log line to find.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Stalled {
        let dir = TempDir::new();
        let (fifo, sock, chatty) = (dir.path("stderr"), dir.path("http.sock"), dir.path("chatty"));
        mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        // The reader first, or opening the write end would wait for one.
        let reader =
            OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
        let writer = OpenOptions::new().write(true).open(&fifo).unwrap();
        let probe =
            OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
        let listen = format!("unix:{}", sock.display());
        let server = server();
        let mut full = vec!["-l", &listen];
        full.extend(args);
        full.extend(["--", server.to_str().unwrap()]);
        let mut c = command(&full);
        c.stdout(Stdio::null()).stderr(writer).env("EXAMPLE_CHATTY_FILE", &chatty);
        for (k, v) in env {
            c.env(k, v);
        }
        let ge = c.spawn().unwrap();
        Stalled { ge, reader, probe, log: String::new(), sock, chatty, _dir: dir }
    }

    fn wait_log(&mut self, needle: &str) {
        let found = poll_until(LONG, || {
            let mut buf = vec![0; 65536];
            while let Ok(n @ 1..) = self.reader.read(&mut buf) {
                self.log.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            self.log.contains(needle)
        });
        assert!(found, "timed out waiting for {needle:?} in the log:\n{}", self.log);
    }

    /// The pid in `generation K started as pid P`.
    fn gen_pid(&mut self, gen: u32) -> i32 {
        let needle = format!("generation {gen} started as pid ");
        self.wait_log(&needle);
        let rest = &self.log[self.log.find(&needle).unwrap() + needle.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Stop reading, set the servers talking, and wait until the FIFO is
    /// full: from then on, a blocking write to it never returns.
    fn stall(&mut self) {
        File::create(&self.chatty).unwrap();
        // A pipe polls writable while one whole page of it is free
        // (fs/pipe.c): not writable, a writer of more than what is left
        // in the last page waits.
        wait_until("the FIFO to fill", LONG, || {
            let mut fds = [PollFd::new(self.probe.as_fd(), PollFlags::POLLOUT)];
            poll(&mut fds, PollTimeout::ZERO).unwrap() == 0
        });
    }

    fn exited(&mut self) -> bool {
        self.ge.try_wait().unwrap().is_some()
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        let _ = self.ge.kill();
        let _ = self.ge.wait();
    }
}

#[test]
fn status_and_reload_answer_while_stderr_is_stalled() {
    let mut s = Stalled::start(&["--ready", "notify"], &[]);
    s.wait_log("generation 1 ready");
    s.stall();
    let mut status = command(&["status", "--json"]).spawn().unwrap();
    let answered = poll_until(ANSWER, || status.try_wait().unwrap().is_some());
    let _ = status.kill();
    let out = status.wait_with_output().unwrap();
    assert!(answered, "`graceexec status` got no answer within {ANSWER:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&v["state"], &v["generations"][0]["generation"]), (&"serving".into(), &1.into()));
    let (code, out, err) = ctl(&["reload", "--timeout", "20s"]);
    assert_eq!(code, 0, "reload: {out}{err}");
    // Generation 2 serves: its own chatter does not stop its answers.
    let body = get_unix(&s.sock, "/").unwrap();
    assert!(body.contains("gen=2"), "{body}");
}

#[test]
fn sigterm_stops_graceexec_within_the_stop_timeout_while_stderr_is_stalled() {
    let stop_timeout = Duration::from_secs(2);
    let mut s = Stalled::start(&["--ready", "notify", "--stop-timeout", "2s"], &[]);
    s.wait_log("generation 1 ready");
    s.stall();
    // The server is stuck too, in its own write to stderr: only the stop
    // timeout's SIGKILL ends it.
    kill(Pid::from_raw(s.ge.id() as i32), Signal::SIGTERM).unwrap();
    let bound = stop_timeout + Duration::from_secs(1);
    assert!(poll_until(bound, || s.exited()), "graceexec still running {bound:?} after SIGTERM");
}

#[test]
fn the_watchdog_kills_term_ignoring_generations_on_time_while_stderr_is_stalled() {
    // Long enough that graceexec is killed while it still waits for
    // generation 1 to stop.
    let stop_timeout = Duration::from_secs(8);
    let env = [("EXAMPLE_IGNORE_TERM", "1")];
    let mut s = Stalled::start(&["--ready", "notify", "--stop-timeout", "8s"], &env);
    s.wait_log("generation 1 ready");
    kill(Pid::from_raw(s.ge.id() as i32), Signal::SIGHUP).unwrap();
    s.wait_log("generation 2 ready");
    let gens = [s.gen_pid(1), s.gen_pid(2)];
    s.stall();
    // Two groups for the watchdog: generation 1 draining (it ignored
    // SIGTERM), generation 2 serving.
    assert!(gens.iter().all(|p| running(*p)), "a generation ended before the test could start");
    let killed = Instant::now();
    s.ge.kill().unwrap();
    s.ge.wait().unwrap();
    for pid in gens {
        wait_until(&format!("the watchdog to kill pid {pid}"), stop_timeout + LONG / 3, || {
            !running(pid)
        });
    }
    // Not before the stop timeout, counted from graceexec's death.
    let took = killed.elapsed();
    assert!(took >= stop_timeout, "killed after {took:?}");
}
