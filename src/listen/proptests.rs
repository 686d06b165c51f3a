//! Property tests of the `--listen` parser. Host names go to a fake
//! resolver, so no case depends on DNS or the network.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

use proptest::prelude::*;

use super::{valid_name, Addr, Spec};

/// Resolves every name to 127.0.0.1 on the asked port, and records the
/// names it was asked for.
fn fake(asked: &RefCell<Vec<String>>) -> impl Fn(&str) -> std::io::Result<Vec<SocketAddr>> + '_ {
    move |text: &str| {
        asked.borrow_mut().push(text.to_string());
        let port = text.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(0);
        Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
    }
}

fn parse(arg: &str) -> (Result<Spec, String>, Vec<String>) {
    let asked = RefCell::new(Vec::new());
    let r = Spec::parse_with(arg, &fake(&asked));
    (r, asked.into_inner())
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u16; 8]>().prop_map(|s| IpAddr::V6(Ipv6Addr::from(s))),
    ]
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    // Scope ids are part of the text form; flow info is not, so it stays 0.
    (ip(), any::<u16>(), prop_oneof![Just(0u32), any::<u32>()]).prop_map(|(ip, port, scope)| {
        match ip {
            IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope)),
            v4 => SocketAddr::new(v4, port),
        }
    })
}

fn addr() -> impl Strategy<Value = Addr> {
    prop_oneof![
        socket_addr().prop_map(Addr::Tcp),
        socket_addr().prop_map(Addr::Udp),
        // Anything not starting with '@' or "//" (refused as a URL
        // mistake) is a path; relative ones too.
        "[^@\u{0}][^\u{0}]{0,40}"
            .prop_filter("unix:// is refused", |p| !p.starts_with("//"))
            .prop_map(|p| Addr::Unix(p.into())),
        "[^\u{0}]{1,40}".prop_map(Addr::Abstract),
    ]
}

/// Names the parser can tell from an address: systemd's rule, and no '/'
/// or '=' (a '=' would end the name early).
fn name() -> impl Strategy<Value = String> {
    "[!-~]{1,40}".prop_filter("not a parsable name", |n| {
        valid_name(n) && !n.contains('/') && !n.contains('=')
    })
}

/// Text with the parser's separators and prefixes in it, so that random
/// input often gets past the first checks.
fn tricky() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("unix:".to_string()),
        Just("@".to_string()),
        Just("tcp://".to_string()),
        Just("udp://".to_string()),
        Just("://".to_string()),
        Just("=".to_string()),
        Just(":".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("::1".to_string()),
        "[0-9]{1,6}",
        "[a-z.]{1,8}",
        "\\PC{0,4}",
    ];
    prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn never_panics(arg in prop_oneof![any::<String>(), tricky()]) {
        let _ = parse(&arg);
    }

    #[test]
    fn what_it_prints_it_parses_back(
        name in prop::option::of(name()),
        addr in addr(),
    ) {
        let text = match &name {
            Some(n) => format!("{n}={addr}"),
            None => addr.to_string(),
        };
        let (parsed, asked) = parse(&text);
        prop_assert_eq!(parsed, Ok(Spec { name, addr }), "{}", text);
        prop_assert!(asked.is_empty(), "an IP literal went to the resolver: {:?}", asked);
    }

    #[test]
    fn port_alone_means_every_ipv4_interface(port in any::<u16>(), colon in any::<bool>()) {
        let text = if colon { format!(":{port}") } else { port.to_string() };
        let want = Addr::Tcp(SocketAddr::from(([0, 0, 0, 0], port)));
        prop_assert_eq!(parse(&text).0.map(|s| s.addr), Ok(want));
    }

    #[test]
    fn tcp_scheme_is_the_same_as_none(sa in socket_addr()) {
        prop_assert_eq!(parse(&format!("tcp://{sa}")).0, parse(&sa.to_string()).0);
    }

    #[test]
    fn host_names_are_resolved_once(host in "[a-z][a-z0-9-]{0,20}(\\.[a-z]{2,5})?", port in any::<u16>()) {
        let (parsed, asked) = parse(&format!("{host}:{port}"));
        prop_assert_eq!(parsed.map(|s| s.addr), Ok(Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))));
        prop_assert_eq!(asked, vec![format!("{host}:{port}")]);
    }

    #[test]
    fn ports_above_u16_are_refused(sa in socket_addr(), over in 65536u32..10_000_000) {
        let text = format!("{}:{over}", match sa { SocketAddr::V6(v) => format!("[{}]", v.ip()), v4 => v4.ip().to_string() });
        let (parsed, asked) = parse(&text);
        prop_assert!(parsed.is_err(), "{} parsed", text);
        prop_assert!(asked.is_empty());
    }

    #[test]
    fn unknown_schemes_are_refused(scheme in "[a-z]{1,8}", rest in "[^\u{0}]{0,20}") {
        // unix:// is refused too, as a unix: path written as a URL.
        prop_assume!(!["tcp", "udp"].contains(&scheme.as_str()));
        let text = format!("{scheme}://{rest}");
        prop_assert!(parse(&text).0.is_err(), "{} parsed", text);
    }
}
