//! Line splitting, prefixes and the kept tail, then a real pipe read to EOF.

use super::*;
use std::cell::RefCell;

fn lines(prefix: &str) -> Lines {
    let mut l = Lines::new(true);
    l.prefix = prefix.as_bytes().to_vec();
    l
}

/// What `l` writes for `data`, then for EOF if `eof`.
fn run(l: &mut Lines, data: &[u8], eof: bool) -> Vec<u8> {
    let mut out = Vec::new();
    l.feed(data, &mut out);
    if eof {
        l.finish(&mut out);
    }
    out
}

fn tail(l: &Lines) -> Vec<String> {
    l.tail.as_ref().unwrap().lines()
}

#[test]
fn complete_lines_pass_through_exactly() {
    let mut l = lines("");
    assert_eq!(run(&mut l, b"one\ntwo\r\n\n", false), b"one\ntwo\r\n\n");
    assert_eq!(tail(&l), ["one", "two", ""]);
}

#[test]
fn a_line_split_across_reads_is_written_whole() {
    let mut l = lines("[gen 1 pid 7] ");
    assert_eq!(run(&mut l, b"hel", false), b"");
    assert_eq!(run(&mut l, b"lo\nwor", false), b"[gen 1 pid 7] hello\n");
    assert_eq!(run(&mut l, b"ld\nx\n", false), b"[gen 1 pid 7] world\n[gen 1 pid 7] x\n");
    assert_eq!(tail(&l), ["hello", "world", "x"]);
}

#[test]
fn a_long_partial_line_is_written_at_once() {
    let mut l = lines("");
    assert_eq!(run(&mut l, &vec![b'a'; MAX_HELD], false), b"");
    let out = run(&mut l, b"ab", false);
    assert!(out.len() == MAX_HELD + 2 && !out.ends_with(b"\n"));
    assert_eq!(run(&mut l, b"end\nnext\n", false), b"end\nnext\n");
    // The tail has the line's start once, not each piece.
    assert_eq!(tail(&l), [format!("{}…", "a".repeat(TAIL_LINE_BYTES)), "next".into()]);

    // Prefixed, each piece is a line of its own.
    let mut l = lines("P ");
    let out = run(&mut l, &vec![b'a'; MAX_HELD + 1], false);
    assert!(out.starts_with(b"P aaa") && out.ends_with(b"a\n"));
    assert_eq!(run(&mut l, b"bc\n", false), b"P bc\n");
}

#[test]
fn eof_writes_the_partial_line() {
    let mut l = lines("");
    assert_eq!(run(&mut l, b"a\nno end", true), b"a\nno end");
    assert_eq!(run(&mut l, b"", true), b"");
    assert_eq!(tail(&l), ["a", "no end"]);
    assert_eq!(run(&mut lines("P "), b"no end", true), b"P no end\n");
}

#[test]
fn tail_keeps_the_last_lines_lossy_and_cut() {
    let mut l = lines("");
    run(&mut l, b"bad \xff byte\n", false);
    // 499 ASCII bytes, then a 2-byte char across the cut.
    let mut long = vec![b'x'; TAIL_LINE_BYTES - 1];
    long.extend_from_slice("éé\n".as_bytes());
    run(&mut l, &long, false);
    let t = tail(&l);
    assert_eq!(t[0], "bad \u{fffd} byte");
    assert_eq!(t[1], format!("{}…", "x".repeat(TAIL_LINE_BYTES - 1)));
    for i in 0..50 {
        run(&mut l, format!("line {i}\n").as_bytes(), false);
    }
    let t = tail(&l);
    assert_eq!(
        (t.len(), t[0].as_str(), t[TAIL_LINES - 1].as_str()),
        (TAIL_LINES, "line 30", "line 49")
    );
}

thread_local! {
    static WRITTEN: RefCell<[Vec<u8>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

fn record(stream: Stream, bytes: &[u8]) {
    WRITTEN.with(|w| w.borrow_mut()[stream as usize].extend_from_slice(bytes));
}

#[test]
fn reads_a_real_pipe_to_eof() {
    let (ends, mut cap) = pipes(true, true).unwrap();
    cap.sink = record;
    cap.set_label(3, 42);
    assert_eq!(cap.poll_fds().len(), 2);
    unistd::write(&ends.stderr, b"first\nboom: failed\nlast").unwrap();
    unistd::write(ends.stdout.as_ref().unwrap(), b"hello\n").unwrap();
    assert!(!cap.read_available(), "the write ends are still open");
    drop(ends);
    let mut rounds = 0;
    while !cap.read_available() {
        rounds += 1;
        assert!(rounds < 100, "no EOF");
    }
    assert!(cap.is_closed() && cap.poll_fds().is_empty());
    assert_eq!(cap.tail(), ["first", "boom: failed", "last"]);
    let [out, err] = WRITTEN.take();
    assert_eq!(out, b"[gen 3 pid 42] hello\n");
    assert_eq!(err, b"[gen 3 pid 42] first\n[gen 3 pid 42] boom: failed\n[gen 3 pid 42] last\n");
}
