//! `--listen` forms, rejections and default names.

use super::*;

fn parse(s: &str) -> Spec {
    s.parse().unwrap()
}

#[test]
fn forms() {
    assert_eq!(parse("8080").addr, Addr::Tcp("0.0.0.0:8080".parse().unwrap()));
    assert_eq!(parse(":8080").addr, Addr::Tcp("0.0.0.0:8080".parse().unwrap()));
    assert_eq!(parse("127.0.0.1:80").addr, Addr::Tcp("127.0.0.1:80".parse().unwrap()));
    assert_eq!(parse("[::1]:80").addr, Addr::Tcp("[::1]:80".parse().unwrap()));
    assert_eq!(parse("tcp://127.0.0.1:1").addr, Addr::Tcp("127.0.0.1:1".parse().unwrap()));
    assert_eq!(parse("udp://127.0.0.1:53").addr, Addr::Udp("127.0.0.1:53".parse().unwrap()));
    assert_eq!(parse("unix:/a/b.sock").addr, Addr::Unix("/a/b.sock".into()));
    assert_eq!(parse("unix:@x").addr, Addr::Abstract("x".into()));
    let named = parse("web=127.0.0.1:80");
    assert_eq!(named.name.as_deref(), Some("web"));
}

#[test]
fn rejects() {
    for bad in [
        "",
        "abc",
        "1.2.3.4:99999",
        "unix:",
        "unix:@",
        "unix://run/app.sock",
        "unix:///run/app.sock",
        "web=unix://x",
        "ftp://x:1",
        "a:b=1",
        "x y=80",
    ] {
        assert!(bad.parse::<Spec>().is_err(), "{bad} parsed");
    }
}

#[test]
fn default_names() {
    assert_eq!(default_name(&parse("8080").addr), "tcp-8080");
    assert_eq!(default_name(&parse("udp://127.0.0.1:53").addr), "udp-53");
    assert_eq!(default_name(&parse("unix:/run/app.sock").addr), "unix-app.sock");
}
