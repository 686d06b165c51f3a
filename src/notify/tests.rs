//! The notify directory and sockets, against the real kernel.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;

use super::*;

#[test]
fn parses_assignments() {
    let m = parse(b"READY=1\nSTATUS=warming up\nMAINPID=7\nERRNO=2\n");
    assert!(m.ready);
    assert_eq!(m.status.as_deref(), Some("warming up"));
    assert_eq!(m.main_pid, Some(7));
    assert_eq!(m.other, vec!["ERRNO=2".to_string()]);
    assert!(!parse(b"READY=0").ready);
    assert!(!parse(b"XREADY=1").ready);
}

#[test]
fn mainpid_must_be_a_positive_decimal_pid() {
    for bad in ["", "0", "-1", "+5", " 5", "5 ", "0x10", "abc", "2147483648", "1.0"] {
        let line = format!("MAINPID={bad}");
        let m = parse(line.as_bytes());
        assert_eq!(m.main_pid, None, "{line}");
        assert_eq!(m.refused, vec![line.clone()]);
    }
    assert_eq!(parse(b"MAINPID=007").main_pid, Some(7));
    assert_eq!(parse(b"MAINPID=2147483647").main_pid, Some(i32::MAX));
    // A refused value does not undo a good one before it.
    let m = parse(b"MAINPID=12\nMAINPID=0\n");
    assert_eq!((m.main_pid, m.refused.len()), (Some(12), 1));
}

#[test]
fn bases_in_order() {
    let p = |s: &str| Some(PathBuf::from(s));
    let got = bases(p("/run/user/1000"), p("/var/tmp"), false);
    assert_eq!(got, [PathBuf::from("/run/user/1000"), "/var/tmp".into(), "/tmp".into()]);
    let got = bases(None, p(""), true);
    assert_eq!(got, [PathBuf::from("/run"), "/tmp".into()]);
    let got = bases(p(""), None, false);
    assert_eq!(got, [PathBuf::from("/tmp")]);
}

/// A fresh directory from the real environment's bases.
fn dir() -> NotifyDir {
    NotifyDir::create().unwrap()
}

#[test]
fn the_directory_is_private_and_unpredictable_and_goes_at_the_end() {
    let (a, b) = (dir(), dir());
    assert_ne!(a.path(), b.path());
    let meta = std::fs::symlink_metadata(a.path()).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700);
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    let name = a.path().file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("graceexec.") && name.len() == "graceexec.XXXXXX".len(), "{name}");
    let s = a.socket(1).unwrap();
    let kept = a.path().to_path_buf();
    drop(a);
    assert!(!kept.exists(), "the directory outlives its owner");
    drop(s);
}

#[test]
fn sockets_have_unguessable_names() {
    let d = dir();
    let (one, again) = (d.socket(7).unwrap(), d.socket(7).unwrap());
    assert_ne!(one.path, again.path);
    for s in [&one, &again] {
        let name = s.path.file_name().unwrap().to_str().unwrap();
        let random = name.strip_prefix("notify-7-").unwrap().strip_suffix(".sock").unwrap();
        assert_eq!(random.len(), 16, "{name}");
        assert!(random.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
    }
    let path = one.path.clone();
    drop(one);
    assert!(!path.exists());
}

#[test]
fn bases_that_are_too_long_or_unusable_are_skipped() {
    let d = dir();
    let long = d.path().join("x".repeat(SUN_PATH_MAX - ROOM + 1 - d.path().as_os_str().len()));
    std::fs::create_dir(&long).unwrap();
    let missing = d.path().join("missing");
    let got = NotifyDir::create_in(vec![long.clone(), missing.clone(), d.path().into()]).unwrap();
    assert_eq!(got.path().parent(), Some(d.path()));
    // The longest socket name still fits in sun_path.
    let s = got.socket(u32::MAX).unwrap();
    assert!(s.path.as_os_str().len() <= SUN_PATH_MAX);
    let e = NotifyDir::create_in(vec![long.clone(), missing]).err().unwrap().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("is too long") && e.contains("No such file"), "{e}");
    assert!(e.ends_with("set TMPDIR to a short path graceexec can write"), "{e}");
    // One shorter, and it is used.
    let fits = d.path().join("x".repeat(SUN_PATH_MAX - ROOM - d.path().as_os_str().len() - 1));
    std::fs::create_dir(&fits).unwrap();
    let got = NotifyDir::create_in(vec![fits.clone()]).unwrap();
    assert_eq!(got.path().parent(), Some(fits.as_path()));
    let s = got.socket(u32::MAX).unwrap();
    assert_eq!(s.path.as_os_str().len(), SUN_PATH_MAX);
}

#[test]
fn drain_reports_who_sent_each_datagram() {
    let d = dir();
    let s = d.socket(1).unwrap();
    let tx = UnixDatagram::unbound().unwrap();
    tx.send_to(b"READY=1\nMAINPID=42\n", &s.path).unwrap();
    tx.send_to(b"STATUS=two", &s.path).unwrap();
    let got = s.drain();
    assert_eq!(got.len(), 2);
    let me = Sender {
        pid: std::process::id() as i32,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
    };
    for r in &got {
        assert_eq!(r.sender, Some(me));
    }
    assert!(got[0].message.ready);
    assert_eq!(got[0].message.main_pid, Some(42));
    assert_eq!(got[1].message.status.as_deref(), Some("two"));
    assert!(s.drain().is_empty(), "an empty socket does not block and yields nothing");
}

#[test]
fn one_drain_reads_a_bounded_number() {
    let d = dir();
    let s = d.socket(1).unwrap();
    let tx = UnixDatagram::unbound().unwrap();
    for i in 0..5 {
        tx.send_to(format!("STATUS={i}").as_bytes(), &s.path).unwrap();
    }
    assert_eq!(s.drain_at_most(3).len(), 3);
    let rest = s.drain_at_most(3);
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[1].message.status.as_deref(), Some("4"));
}

#[test]
fn oversized_datagrams_are_dropped_whole() {
    let d = dir();
    let s = d.socket(1).unwrap();
    let tx = UnixDatagram::unbound().unwrap();
    let mut big = b"READY=1\n".to_vec();
    big.resize(DATAGRAM_MAX + 1, b'x');
    tx.send_to(&big, &s.path).unwrap();
    tx.send_to(b"STATUS=after", &s.path).unwrap();
    let got = s.drain();
    assert_eq!(got.len(), 1);
    assert!(!got[0].message.ready);
    assert_eq!(got[0].message.status.as_deref(), Some("after"));
}

#[test]
fn descriptors_sent_along_are_never_installed() {
    use nix::sys::socket::{sendmsg, ControlMessage, UnixAddr};
    use std::os::fd::AsRawFd;
    let d = dir();
    let s = d.socket(1).unwrap();
    // A file only this test opens, so a copy of its fd in this process
    // can be told from any other test's.
    let marker = d.path().join(format!("marker-{}", random_hex()));
    let file = std::fs::File::create(&marker).unwrap();
    std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tx = UnixDatagram::unbound().unwrap();
    let fds = [file.as_raw_fd(), file.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"READY=1")];
    let to = UnixAddr::new(&s.path).unwrap();
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg(tx.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), Some(&to)).unwrap();
    drop(file);
    let got = s.drain();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sender, None, "credentials of a cut control buffer are not trusted");
    let held = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == marker))
        .count();
    assert_eq!(held, 0, "a descriptor from the datagram was installed");
}
