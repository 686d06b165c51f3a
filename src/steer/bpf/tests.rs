//! The builder against a small classic BPF interpreter.

use super::*;
use proptest::prelude::*;

/// The network header onward of a SYN from `sport`: an IPv4 header of
/// `ihl` words or a fixed IPv6 header, then a TCP header.
fn syn(family: Family, sport: u16, ihl: u8) -> Vec<u8> {
    let ip = match family {
        Family::V4 => {
            let mut h = vec![0; 4 * usize::from(ihl)];
            h[0] = 0x40 | ihl;
            h
        }
        Family::V6 => {
            let mut h = vec![0; 40];
            h[0] = 0x60;
            h[6] = 6;
            h
        }
    };
    let mut tcp = vec![0; 20];
    tcp[..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
    [ip, tcp].concat()
}

/// What the kernel's checker demands of the programs built here: a
/// bounded length, jumps that land inside, a `ret` at the end.
fn check(p: &Program) {
    let insns = p.insns();
    assert!(!insns.is_empty() && insns.len() <= libc::BPF_MAXINSNS as usize);
    for (pc, i) in insns.iter().enumerate() {
        if i.code == JEQ_K || i.code == JGE_K {
            let far = pc + 1 + usize::from(i.jt.max(i.jf));
            assert!(far < insns.len(), "jump from {pc} past the end");
        }
    }
    assert_eq!(insns.last().unwrap().code, RET_K);
}

/// A network-relative load, or None where the kernel would end the
/// program with 0.
fn load(net: &[u8], k: u32, x: u32, size: usize) -> Option<u32> {
    let k = k as i32;
    assert!((libc::SKF_NET_OFF..libc::SKF_NET_OFF + 0x1000).contains(&k), "k {k:#x}");
    let at = (k - libc::SKF_NET_OFF) as usize + x as usize;
    let bytes = net.get(at..at + size)?;
    Some(bytes.iter().fold(0, |v, &b| v << 8 | u32::from(b)))
}

/// A classic BPF interpreter for exactly the opcodes `build` emits.
fn run(p: &Program, net: &[u8], rand: u32) -> u32 {
    check(p);
    let insns = p.insns();
    let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
    // Jumps only go forward, so a program ends within len steps.
    for _ in 0..insns.len() {
        let i = insns[pc];
        pc += 1;
        let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
        match i.code {
            RET_K => return i.k,
            LD_W_ABS => {
                assert_eq!(i.k, RANDOM, "ld of packet data at {:#x}", i.k);
                a = rand;
            }
            LD_H_ABS => match load(net, i.k, 0, 2) {
                Some(v) => a = v,
                None => return 0,
            },
            LD_H_IND => match load(net, i.k, x, 2) {
                Some(v) => a = v,
                None => return 0,
            },
            LDX_B_MSH => match load(net, i.k, 0, 1) {
                Some(v) => x = 4 * (v & 0xf),
                None => return 0,
            },
            JEQ_K => pc += jump(a == i.k),
            JGE_K => pc += jump(a >= i.k),
            code => panic!("opcode {code:#x} not supported"),
        }
    }
    panic!("ran off the end");
}

fn route(probes: &[(u16, u32)], split: Split) -> Route {
    Route { probes: probes.to_vec(), split }
}

fn build(r: &Route, family: Family, sockets: u32) -> Program {
    Program::build(r, family, sockets).unwrap()
}

#[test]
fn all_is_one_ret() {
    let p = build(&Route::all(2), Family::V4, 3);
    assert_eq!(p.insns(), [op(RET_K, 2)]);
    for rand in [0, 7, u32::MAX] {
        assert_eq!(run(&p, &syn(Family::V4, 5000, 5), rand), 2);
    }
}

#[test]
fn probes_route_their_port_only() {
    let r = route(&[(1000, 1), (2000, 2)], Split::All(0));
    for (family, ihl) in [(Family::V4, 5), (Family::V4, 6), (Family::V4, 15), (Family::V6, 0)] {
        let p = build(&r, family, 3);
        let at = |port| run(&p, &syn(family, port, ihl), 0);
        assert_eq!((at(1000), at(2000), at(3000)), (1, 2, 0), "{family:?} ihl {ihl}");
        // The destination port or a byte-swapped source is no probe.
        assert_eq!((at(443), at(0xe803)), (0, 0));
    }
}

#[test]
fn share_threshold_edges() {
    let p = build(&route(&[], Split::Share { a: 0, b: 1, b_per_million: 250_000 }), Family::V4, 2);
    let t = 1 << 30; // exactly a quarter of 2^32
    assert!(p.insns().contains(&Insn { code: JGE_K, jt: 1, jf: 0, k: t }));
    let net = syn(Family::V4, 1, 5);
    let at = |rand| run(&p, &net, rand);
    assert_eq!((at(0), at(t - 1), at(t), at(u32::MAX)), (1, 1, 0, 0));
}

#[test]
fn share_extremes() {
    let share = |a, b, n| Split::Share { a, b, b_per_million: n };
    let net = syn(Family::V6, 1, 0);
    for (split, want) in [(share(0, 1, 0), 0), (share(0, 1, 1_000_000), 1), (share(1, 1, 5), 1)] {
        let p = build(&route(&[], split), Family::V6, 2);
        assert_eq!(p.insns(), [op(RET_K, want)], "{split:?}");
        assert_eq!((run(&p, &net, 0), run(&p, &net, u32::MAX)), (want, want));
    }
    // One in a million still splits, with both edges reachable.
    for (n, t) in [(1, 4295), (999_999, 4_294_963_001)] {
        let p = build(&route(&[], share(0, 1, n)), Family::V6, 2);
        let at = |rand| run(&p, &net, rand);
        assert_eq!((at(0), at(t - 1), at(t), at(u32::MAX)), (1, 1, 0, 0), "{n}");
    }
}

#[test]
fn threshold_is_the_share() {
    for n in [1, 10, 333_333, 500_000, 999_999] {
        let t = threshold(n);
        let exact = f64::from(n) / 1e6 * 2f64.powi(32);
        assert!((f64::from(t) - exact).abs() <= 0.5, "{n}: {t} vs {exact}");
    }
}

#[test]
fn rejects_what_the_kernel_would_hash() {
    let err = |probes: &[(u16, u32)], split| Program::build(&route(probes, split), Family::V4, 2);
    let share = |a, b, n| Split::Share { a, b, b_per_million: n };
    assert_eq!(err(&[], Split::All(2)), Err(RouteError::Index { index: 2, sockets: 2 }));
    assert_eq!(err(&[(9, 5)], Split::All(0)), Err(RouteError::Index { index: 5, sockets: 2 }));
    assert!(matches!(err(&[], share(2, 0, 1)), Err(RouteError::Index { index: 2, .. })));
    // Even where the share makes one side unreachable.
    assert!(matches!(err(&[], share(0, 7, 0)), Err(RouteError::Index { index: 7, .. })));
    assert_eq!(err(&[], share(0, 1, 1_000_001)), Err(RouteError::Share(1_000_001)));
    assert_eq!(err(&[(9, 0), (9, 1)], Split::All(0)), Err(RouteError::DuplicateProbe(9)));
    let many: Vec<_> = (0..=MAX_PROBES as u16).map(|p| (p, 0)).collect();
    assert_eq!(err(&many, Split::All(0)), Err(RouteError::TooManyProbes(MAX_PROBES + 1)));
    assert!(Program::build(&Route::all(0), Family::V4, 0).is_err());
}

#[test]
fn longest_probe_list_encodes() {
    let probes: Vec<_> = (1..=MAX_PROBES as u16).map(|p| (p, u32::from(p) % 3)).collect();
    let r = route(&probes, Split::Share { a: 1, b: 2, b_per_million: 500_000 });
    for family in [Family::V4, Family::V6] {
        let p = build(&r, family, 3);
        assert!(p.insns().len() <= libc::BPF_MAXINSNS as usize);
        assert!(p.insns().iter().all(|i| i.jt <= 1 && i.jf <= 1));
        for &(port, index) in &probes {
            assert_eq!(run(&p, &syn(family, port, 5), u32::MAX), index, "port {port}");
        }
        let other = syn(family, 5000, 5);
        assert_eq!((run(&p, &other, 0), run(&p, &other, u32::MAX)), (2, 1));
    }
}

#[test]
fn filters_keep_every_field() {
    let r = route(&[(80, 1)], Split::Share { a: 0, b: 1, b_per_million: 3 });
    let p = build(&r, Family::V4, 2);
    let f = p.to_filters();
    assert_eq!(f.len(), p.insns().len());
    for (f, i) in f.iter().zip(p.insns()) {
        assert_eq!((f.code, f.jt, f.jf, f.k), (i.code, i.jt, i.jf, i.k));
    }
}

fn any_route() -> impl Strategy<Value = (Route, u32)> {
    (1u32..6).prop_flat_map(|n| {
        let split = prop_oneof![
            (0..n).prop_map(Split::All),
            (0..n, 0..n, 0u32..=1_000_000).prop_map(|(a, b, b_per_million)| Split::Share {
                a,
                b,
                b_per_million
            }),
        ];
        let probes = proptest::collection::btree_map(any::<u16>(), 0..n, 0..20);
        (probes, split).prop_map(move |(probes, split)| {
            (Route { probes: probes.into_iter().collect(), split }, n)
        })
    })
}

proptest! {
    #[test]
    fn returns_only_route_indexes(
        (r, n) in any_route(),
        port: u16,
        probe: Option<proptest::sample::Index>,
        rand: u32,
        v6: bool,
        ihl in 5u8..16,
    ) {
        // Half the time, the source port of one of the probes.
        let port = match probe {
            Some(i) if !r.probes.is_empty() => r.probes[i.index(r.probes.len())].0,
            _ => port,
        };
        let family = if v6 { Family::V6 } else { Family::V4 };
        let got = run(&build(&r, family, n), &syn(family, port, ihl), rand);
        prop_assert!(got < n && r.indexes().any(|i| i == got));
        if let Some(&(_, want)) = r.probes.iter().find(|(p, _)| *p == port) {
            prop_assert_eq!(got, want);
        }
    }
}
