//! Messages built and parsed on hand-made bytes, and the port program run
//! by a model of the kernel's interpreter.

use proptest::prelude::*;

use super::*;

#[test]
fn a_request_is_header_req_v2_and_program() {
    let filter = Filter { states: 1 << 3, sport: 0x1f90, dport: 0, ports: Some(&[8080]) };
    let m = dump_request(7, AF_INET6, &filter);
    let mut want = Vec::new();
    want.extend(92u32.to_ne_bytes()); // 16 + 56 + 4 + 16
    want.extend(20u16.to_ne_bytes());
    want.extend(0x301u16.to_ne_bytes());
    want.extend(7u32.to_ne_bytes());
    want.extend(0u32.to_ne_bytes());
    want.extend([10, 6, 0, 0]);
    want.extend(8u32.to_ne_bytes());
    want.extend([0x1f, 0x90, 0, 0]); // network order
    want.extend([0; 44]);
    want.extend(20u16.to_ne_bytes());
    want.extend(1u16.to_ne_bytes());
    for (code, yes, no) in [(2, 8, 20), (0, 0, 8080), (3, 8, 12), (0, 0, 8080)] {
        want.extend([code, yes]);
        want.extend((no as u16).to_ne_bytes());
    }
    assert_eq!(m, want);

    // Both families: the older request, its fields in another order.
    let m = dump_request(7, BOTH, &filter);
    assert_eq!(m.len(), 16 + 60 + 4 + 16);
    assert_eq!(u32_at(&m, 0) as usize, m.len());
    assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 18);
    assert_eq!(&m[16..20], [0, 0, 0, 0]);
    assert_eq!(&m[20..24], [0x1f, 0x90, 0, 0]);
    assert_eq!(m[24..68], [0; 44]);
    assert_eq!(u32_at(&m, 68), 8);
    assert_eq!(u32_at(&m, 72), 0);
    assert_eq!(m[76..], want[72..], "the program");

    // No ports to test: no program; more than a program takes: none either.
    let any = Filter { states: 1 << 6, sport: 1, dport: 0xabcd, ports: None };
    let m = dump_request(1, AF_INET, &any);
    assert_eq!(m.len(), 72);
    assert_eq!(u32_at(&m, 0), 72);
    assert_eq!(&m[16..20], [2, 6, 0, 0]);
    assert_eq!(u32_at(&m, 20), 64);
    assert_eq!(&m[24..28], [0, 1, 0xab, 0xcd]);
    let many: Vec<u16> = (1..=MAX_PROGRAM_PORTS as u16 + 1).collect();
    let lots = Filter { ports: Some(&many), ..any };
    assert_eq!(dump_request(1, AF_INET, &lots).len(), 72);
    let most = Filter { ports: Some(&many[1..]), ..any };
    assert_eq!(dump_request(1, AF_INET, &most).len(), 72 + 4 + MAX_PROGRAM_PORTS * 20 - 4);
}

#[test]
fn a_single_query_names_both_ends() {
    let server: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let m = exact_request(3, server, "127.0.0.2:41789".parse().unwrap());
    let mut want = Vec::new();
    want.extend(72u32.to_ne_bytes());
    want.extend(20u16.to_ne_bytes());
    want.extend(1u16.to_ne_bytes()); // not a dump
    want.extend(3u32.to_ne_bytes());
    want.extend(0u32.to_ne_bytes());
    want.extend([2, 6, 0, 0]);
    want.extend([0xff; 4]); // any state
    want.extend([0x1f, 0x90, 0xa3, 0x3d]);
    want.extend([127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    want.extend([127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    want.extend([0; 4]);
    want.extend([0xff; 8]); // no cookie to check
    assert_eq!(m, want);

    let m = exact_request(3, "[::1]:8080".parse().unwrap(), "[fe80::2]:1".parse().unwrap());
    assert_eq!(m.len(), 72);
    assert_eq!(m[16], 10);
    assert_eq!(&m[24..28], [0x1f, 0x90, 0, 1]);
    assert_eq!(&m[28..44], std::net::Ipv6Addr::LOCALHOST.octets());
    assert_eq!(m[44..46], [0xfe, 0x80]);
    assert_eq!(m[59], 2);
}

/// inet_diag_bc_run (net/ipv4/inet_diag.c) for the ops `program` uses.
fn run(p: &[u8], port: u16) -> bool {
    let (mut at, mut len) = (0usize, p.len() as isize);
    while len > 0 {
        let at16 = |i: usize| u16::from_ne_bytes([p[i], p[i + 1]]);
        let pass = match p[at] {
            0 => true,
            BC_JMP => false,
            BC_S_GE => port >= at16(at + 6),
            BC_S_LE => port <= at16(at + 6),
            code => panic!("op {code}"),
        };
        let step: usize = if pass { p[at + 1].into() } else { at16(at + 2).into() };
        at += step;
        len -= step as isize;
    }
    len == 0
}

/// inet_diag_bc_audit: the checks a program must pass to be taken.
fn audit(p: &[u8]) -> bool {
    let on_yes_path = |target: usize| {
        let mut at = 0;
        while at < target {
            let yes = usize::from(p[at + 1]);
            if yes < 4 || yes % 4 != 0 {
                return false;
            }
            at += yes;
        }
        at == target
    };
    let mut at = 0;
    while at < p.len() {
        let len = p.len() - at;
        let (code, yes) = (p[at], usize::from(p[at + 1]));
        let no = usize::from(u16::from_ne_bytes([p[at + 2], p[at + 3]]));
        let min = match code {
            BC_S_GE | BC_S_LE if len >= 8 => 8,
            0 | BC_JMP => 4,
            _ => return false,
        };
        if code != 0 {
            if no < min || no > len + 4 || no % 4 != 0 {
                return false;
            }
            if no < len && !on_yes_path(at + no) {
                return false;
            }
        }
        if yes < min || yes > len + 4 || yes % 4 != 0 {
            return false;
        }
        at += yes;
    }
    at == p.len()
}

proptest! {
    #[test]
    fn a_program_keeps_exactly_its_ports(
        ports in proptest::collection::vec(any::<u16>(), 1..40),
        other: u16,
        pick: Option<proptest::sample::Index>,
    ) {
        let port = pick.map_or(other, |i| ports[i.index(ports.len())]);
        let p = program(&ports);
        prop_assert!(audit(&p));
        prop_assert_eq!(run(&p, port), ports.contains(&port));
    }
}

#[test]
fn the_largest_program_fits_its_jumps() {
    let ports: Vec<u16> = (0..MAX_PROGRAM_PORTS as u16).map(|i| 65535 - i).collect();
    let p = program(&ports);
    assert!(audit(&p) && p.len() + 4 <= usize::from(u16::MAX));
    assert!(run(&p, 65535) && run(&p, 65535 - 999) && !run(&p, 65535 - 1000) && !run(&p, 0));
}

/// A netlink message: header, then `body` padded to 4 bytes.
fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend(((16 + body.len()) as u32).to_ne_bytes());
    m.extend(kind.to_ne_bytes());
    m.extend(2u16.to_ne_bytes()); // NLM_F_MULTI
    m.extend(seq.to_ne_bytes());
    m.extend(4242u32.to_ne_bytes());
    m.extend(body);
    m.resize((m.len() + 3) & !3, 0);
    m
}

/// The local address of `diag_msg`'s sockets.
const LOCAL: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];

/// An inet_diag_msg of an AF_INET6 socket on 2001:db8::7, with `attrs`
/// bytes of attributes after it.
fn diag_msg(state: u8, sport: u16, dport: u16, inode: u32, attrs: usize) -> Vec<u8> {
    let mut b = vec![10, state, 0, 0];
    b.extend(sport.to_be_bytes());
    b.extend(dport.to_be_bytes());
    b.extend(LOCAL);
    b.resize(68, 0xee); // remote address, interface, cookie, timers, queues, uid
    b.extend(inode.to_ne_bytes());
    b.resize(72 + attrs, 0xaa);
    b
}

fn parsed(buf: &[u8]) -> (io::Result<bool>, Vec<Sock>) {
    let mut got = Vec::new();
    let r = parse(buf, 5, &mut |s: &Sock| got.push(*s));
    (r, got)
}

#[test]
fn answers_parse_into_sockets_until_done() {
    let mut buf = message(20, 5, &diag_msg(1, 8080, 0xa33d, 7001, 0));
    buf.extend(message(20, 5, &diag_msg(6, 443, 1, 0, 13))); // attributes, padded
    buf.extend(message(20, 6, &diag_msg(1, 1, 1, 1, 0))); // not ours
    buf.extend(message(1, 5, &[])); // NLMSG_NOOP
    let (r, got) = parsed(&buf);
    assert!(!r.unwrap(), "no DONE yet");
    let ip = LOCAL.into();
    let a = Sock { state: 1, ip, sport: 8080, dport: 0xa33d, inode: 7001 };
    assert_eq!(got, [a, Sock { state: 6, ip, sport: 443, dport: 1, inode: 0 }]);
    // An AF_INET socket's address is the first 4 of the 16 bytes.
    let mut v4 = diag_msg(10, 80, 0, 1, 0);
    v4[0] = AF_INET;
    v4[8..24].copy_from_slice(&[127, 0, 0, 1, 0xee, 0xee, 0xee, 0xee, 0, 0, 0, 0, 0, 0, 0, 0]);
    let (_, got) = parsed(&message(20, 5, &v4));
    assert_eq!(got[0].ip, std::net::IpAddr::from([127, 0, 0, 1]));

    buf.extend(message(3, 5, &0i32.to_ne_bytes()));
    buf.extend(message(20, 5, &diag_msg(1, 2, 2, 2, 0))); // after DONE: unread
    let (r, got) = parsed(&buf);
    assert!(r.unwrap());
    assert_eq!(got.len(), 2);
    assert!(parsed(&message(3, 5, &[])).0.unwrap(), "a DONE without its int");
    assert!(!parsed(&[]).0.unwrap());
}

#[test]
fn errors_and_bad_lengths_are_errors() {
    let err = |buf: &[u8]| parsed(buf).0.unwrap_err();
    let mut failed = (-(Errno::EINVAL as i32)).to_ne_bytes().to_vec();
    failed.extend(&message(20, 5, &[])[..16]); // the request's header
    assert_eq!(err(&message(2, 5, &failed)).raw_os_error(), Some(Errno::EINVAL as i32));
    let done = message(3, 5, &(-(Errno::ENOBUFS as i32)).to_ne_bytes());
    assert_eq!(err(&done).raw_os_error(), Some(Errno::ENOBUFS as i32));
    // An acknowledgement (error 0) is no error.
    assert!(!parsed(&message(2, 5, &[0; 20])).0.unwrap());

    let whole = message(20, 5, &diag_msg(1, 1, 1, 1, 0));
    let bad = io::ErrorKind::InvalidData;
    assert_eq!(err(&whole[..whole.len() - 4]).kind(), bad, "cut short");
    assert_eq!(err(&whole[..10]).kind(), bad, "a header cut short");
    let mut short = whole.clone();
    short[..4].copy_from_slice(&8u32.to_ne_bytes());
    assert_eq!(err(&short).kind(), bad, "a length under the header's");
    assert_eq!(err(&message(20, 5, &[0; 40])).kind(), bad, "a diag message cut short");
}
