//! The queue with a fake writer, then one real fd of each type that a
//! write must never block on.

use super::*;
use std::fs::File;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;

use nix::sys::stat::Mode;
use nix::unistd::mkfifo;

/// A writer that takes at most `per_call` bytes a call and `budget` in
/// all, then says EAGAIN; what it took is in `out`.
struct Fake {
    per_call: usize,
    budget: usize,
    out: Vec<u8>,
}

impl Fake {
    fn new(per_call: usize, budget: usize) -> Fake {
        Fake { per_call, budget, out: Vec::new() }
    }

    fn flush(&mut self, q: &mut Queue) {
        q.flush(
            &mut |b| {
                let n = b.len().min(self.per_call).min(self.budget);
                if n == 0 {
                    return Wrote::Blocked;
                }
                self.budget -= n;
                self.out.extend_from_slice(&b[..n]);
                Wrote::Bytes(n)
            },
            Stream::Stderr,
        );
    }
}

fn note(lines: u64, bytes: u64) -> String {
    let s = if lines == 1 { "" } else { "s" };
    format!(
        "graceexec[{}]: dropped {lines} line{s} ({bytes} bytes) of output: stderr was not taking it\n",
        std::process::id()
    )
}

#[test]
fn own_and_child_lines_keep_their_order_across_partial_writes() {
    let mut q = Queue::new();
    let mut w = Fake::new(3, 10);
    q.push_own(b"own 1\n");
    q.push_child(b"child a\nchild b\n");
    w.flush(&mut q);
    assert_eq!(w.out, b"own 1\nchil");
    assert_eq!(q.len, 6 + 16 - 10);
    q.push_own(b"own 2\n");
    w.budget = usize::MAX;
    w.flush(&mut q);
    assert_eq!(w.out, b"own 1\nchild a\nchild b\nown 2\n");
    assert_eq!((q.len, q.chunks.len(), q.head), (0, 0, 0));
}

#[test]
fn own_lines_beyond_the_hard_bound_are_dropped_and_told_once_drained() {
    let mut q = Queue::new();
    // Children's output is never dropped: the reader keeps to the room.
    q.push_child(&vec![b'c'; HARD_BOUND - 10]);
    q.push_child(b"c\n");
    q.push_own(b"fits\n"); // 5 bytes: len is now HARD_BOUND - 3
    q.push_own(b"dropped\n");
    q.push_own(b"two\nlines\n");
    q.push_own(b"nope"); // a partial line counts as one
    assert_eq!(q.len, HARD_BOUND - 3);
    assert_eq!((q.dropped_lines, q.dropped_bytes), (4, 8 + 10 + 4));
    let mut w = Fake::new(usize::MAX, usize::MAX);
    w.flush(&mut q);
    let text = String::from_utf8(w.out).unwrap();
    assert!(text.ends_with(&format!("c\nfits\n{}", note(4, 22))), "{}", &text[text.len() - 200..]);
    // Counted once: the next drain adds nothing.
    let mut w = Fake::new(usize::MAX, usize::MAX);
    q.push_own(b"later\n");
    w.flush(&mut q);
    assert_eq!(w.out, b"later\n");
}

#[test]
fn the_note_waits_for_the_queue_to_drain_and_starts_its_own_line() {
    let mut q = Queue::new();
    q.push_child(&vec![b'x'; HARD_BOUND]);
    q.push_own(b"lost\n");
    let mut w = Fake::new(usize::MAX, HARD_BOUND - 1);
    w.flush(&mut q);
    assert!(!w.out.ends_with(b"\n"), "no note before the queue is empty");
    assert_eq!(q.len, 1);
    // The last byte written did not end a line (a long line forced out).
    w.budget = usize::MAX;
    w.flush(&mut q);
    assert!(w.out.ends_with(format!("x\n{}", note(1, 5)).as_bytes()));
}

#[test]
fn a_failed_write_drops_what_is_queued_and_a_later_drain_says_so() {
    let mut q = Queue::new();
    q.push_own(b"a\nb\n");
    q.push_child(b"c\n");
    q.flush(&mut |_| Wrote::Failed, Stream::Stderr);
    assert_eq!((q.len, q.chunks.len()), (0, 0));
    assert_eq!((q.dropped_lines, q.dropped_bytes), (3, 6));
    let mut w = Fake::new(usize::MAX, usize::MAX);
    q.push_own(b"back\n");
    w.flush(&mut q);
    assert_eq!(String::from_utf8(w.out).unwrap(), format!("back\n{}", note(3, 6)));
}

#[test]
fn a_guarded_piece_is_at_most_pipe_buf_and_cut_after_a_line() {
    let short = b"abc\ndef";
    assert_eq!(guarded_piece(short), short);
    let mut long = vec![b'a'; 3000];
    long.push(b'\n');
    long.extend(vec![b'b'; 3000]);
    assert_eq!(guarded_piece(&long).len(), 3001);
    assert_eq!(guarded_piece(&[b'z'; 9000]).len(), PIPE_BUF);
}

/// Run `f` on another thread; panic if it has not returned within 30 s,
/// which is what a blocked write looks like.
fn returns<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("{what} blocked"))
}

/// `n` numbered lines of graceexec's own and as many of a child's,
/// alternating, the child's only while the slot accepts them (as the
/// event loop reads the pipes); returns the slot when every push has
/// returned, and how many child lines it took.
fn flood(slot: Slot, n: usize) -> (Slot, usize) {
    returns("a push", move || {
        let mut children = 0;
        for i in 0..n {
            slot.push(format!("own {i:06} {}\n", "o".repeat(80)).as_bytes(), true);
            if slot.accepting() {
                slot.push(format!("child {i:06}\n").as_bytes(), false);
                children += 1;
            }
        }
        (slot, children)
    })
}

fn nonblocking(fd: BorrowedFd<'_>) -> bool {
    OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).unwrap()).contains(OFlag::O_NONBLOCK)
}

const LINES: usize = 20_000;
/// "own 000123 ooo…o\n"
const OWN_LINE: u64 = 4 + 6 + 1 + 80 + 1;

/// `writer` is a stream whose reader (`reader`) has stopped: the pushes
/// never block, the queue stops between the bounds, the description
/// others share is not changed; once the reader reads, every child line
/// and the own lines that were not dropped come out whole and in order,
/// then the note with the count.
fn stalled(writer: OwnedFd, reader: OwnedFd, kind: Kind) {
    let flags_before = nonblocking(writer.as_fd());
    let mut slot = Slot::open(writer.as_fd(), Stream::Stderr);
    if kind == Kind::Guarded {
        // The fallback, on the same blocking description.
        slot = Slot { fd: Some(Target::Own(writer.try_clone().unwrap())), kind, ..slot };
    }
    assert_eq!(slot.kind, kind);
    let (slot, children) = flood(slot, LINES);
    assert_eq!(nonblocking(writer.as_fd()), flags_before, "the shared description was changed");
    let queued = slot.queued();
    assert!((SOFT_BOUND..=HARD_BOUND).contains(&queued), "{queued}");
    assert!(!slot.accepting() && slot.poll_fd().is_some());
    assert!(slot.lock().dropped_lines > 0);
    // The reader wakes up.
    fcntl(&reader, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let got = returns("draining", move || {
        let (mut got, mut buf) = (Vec::new(), vec![0; 65536]);
        loop {
            slot.flush();
            match unistd::read(&reader, &mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(Errno::EAGAIN) if slot.queued() == 0 => return got,
                Err(Errno::EAGAIN) => {}
                Err(e) => panic!("{e}"),
            }
        }
    });
    let text = String::from_utf8(got).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let last = lines.pop().unwrap();
    // Pushed as own 0, child 0, own 1, child 1, ...
    let (mut prev, mut own, mut child) = (None, 0, 0);
    for line in lines {
        let (who, rest) = line.split_once(' ').unwrap();
        let i: usize = rest[..6].parse().unwrap();
        let pos = 2 * i + usize::from(who == "child");
        assert!(prev.map_or(true, |p| pos > p), "{line:?} out of order");
        prev = Some(pos);
        match who {
            "own" => own += 1,
            _ => child += 1,
        }
    }
    assert_eq!(child, children, "every child line taken is there");
    let dropped = (LINES - own) as u64;
    assert_eq!(format!("{last}\n"), note(dropped, dropped * OWN_LINE));
}

#[test]
fn a_stalled_pipe_never_blocks_a_write() {
    let (r, w) = unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    stalled(w, r, Kind::Reopened);
}

#[test]
fn the_guarded_fallback_never_blocks_on_a_stalled_pipe() {
    let (r, w) = unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    stalled(w, r, Kind::Guarded);
}

#[test]
fn a_pipe_already_nonblocking_is_written_as_it_is() {
    // What the watchdog is handed: graceexec's own reopened description.
    let (r, w) = unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
    fcntl(&r, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
    stalled(w, r, Kind::AlreadyNonBlocking);
}

#[test]
fn a_stalled_fifo_never_blocks_a_write() {
    let path = std::env::temp_dir().join(format!("outbox-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    mkfifo(&path, Mode::from_bits_truncate(0o600)).unwrap();
    // The reader first, or opening the write end would wait for one.
    let r = open(&path, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty()).unwrap();
    fcntl(&r, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
    let w = open(&path, OFlag::O_WRONLY, Mode::empty()).unwrap();
    std::fs::remove_file(&path).unwrap();
    stalled(w, r, Kind::Reopened);
}

#[test]
fn a_stalled_socket_never_blocks_a_write() {
    let (w, r) = UnixStream::pair().unwrap();
    stalled(w.into(), r.into(), Kind::Socket);
}

#[test]
fn dev_null_takes_everything() {
    let null = File::options().write(true).open("/dev/null").unwrap();
    let slot = Slot::open(null.as_fd(), Stream::Stdout);
    assert_eq!(slot.kind, Kind::Reopened);
    let (slot, children) = flood(slot, LINES);
    assert_eq!((slot.queued(), children), (0, LINES));
    assert!(!nonblocking(null.as_fd()));
}

#[test]
fn a_regular_file_is_written_through_its_shared_offset() {
    let path = std::env::temp_dir().join(format!("outbox-file-{}", std::process::id()));
    // No O_APPEND, as `2>file` opens it: a description opened anew would
    // start at offset 0 and write over what the others wrote.
    let mut file = File::create(&path).unwrap();
    std::io::Write::write_all(&mut file, b"before\n").unwrap();
    let slot = Slot::open(file.as_fd(), Stream::Stderr);
    assert_eq!(slot.kind, Kind::File);
    let (slot, _) = flood(slot, 10);
    assert_eq!(slot.queued(), 0);
    std::io::Write::write_all(&mut file, b"after\n").unwrap();
    let mut text = String::new();
    File::open(&path).unwrap().read_to_string(&mut text).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(text.starts_with("before\nown 000000 ") && text.ends_with("child 000009\nafter\n"));
}
