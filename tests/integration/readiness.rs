//! `--ready` modes.

use std::net::TcpListener;

use crate::harness::*;

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// How long generation `gen` took to be ready, as `status` shows it.
fn ready_ms(ge: &Ge, gen: u64) -> u64 {
    let ready = |g: &serde_json::Value| g["generation"] == gen && g["state"] == "ready";
    let s = ge.wait_status(&format!("generation {gen} to be ready"), |s| {
        s["generations"].as_array().unwrap().iter().any(ready)
    });
    let g = s["generations"].as_array().unwrap().iter().find(|g| ready(g)).unwrap().clone();
    g["ready_ms"].as_u64().unwrap()
}

/// Generation `gen`'s state in `status`.
fn state(ge: &Ge, gen: u64) -> String {
    let s = ge.wait_status("an answer", |_| true);
    let g = s["generations"].as_array().unwrap().iter().find(|g| g["generation"] == gen).cloned();
    g.map(|g| g["state"].as_str().unwrap().to_string()).unwrap_or_default()
}

#[test]
fn without_ready_and_shared_sockets_a_silent_server_is_ready_after_one_second_alive() {
    let ge = Ge::start(
        &["-l", "127.0.0.1:0", "--handover", "shared"],
        &[("EXAMPLE_NEVER_READY_GEN", "all")],
    );
    assert!(ready_ms(&ge, 1) >= 1000);
}

#[test]
fn without_ready_a_silent_server_is_ready_once_it_accepts_on_its_socket() {
    // Steered: no second of waiting, and no READY=1 needed either.
    let ge = Ge::start(&["-l", "127.0.0.1:0"], &[("EXAMPLE_NEVER_READY_GEN", "all")]);
    ge.wait_ready(1);
    assert!(get(ge.tcp_addr(), "/").is_ok());
}

#[test]
fn delay_mode_ignores_ready_1_and_waits_the_delay() {
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", "delay:400ms"], &[]);
    ge.wait_log("generation 1 status: serving");
    assert!(ready_ms(&ge, 1) >= 400);
}

#[test]
fn tcp_mode_waits_for_the_port_to_accept() {
    let port = free_port();
    let target = format!("tcp:127.0.0.1:{port}");
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", &target], &[]);
    ge.wait_log("generation 1 status: serving");
    assert_eq!(state(&ge, 1), "starting", "ready before anything listened on {port}");
    let _l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    ge.wait_ready(1);
}

#[test]
fn http_mode_needs_a_2xx_answer() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let good = format!("http://127.0.0.1:{port}/info");
    let ge = Ge::start(&["-l", &listen, "--ready", &good], &[]);
    ge.wait_ready(1);
    drop(ge);

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let bad = format!("http://127.0.0.1:{port}/missing");
    let mut ge = Ge::start(&["-l", &listen, "--ready", &bad, "--ready-timeout", "3s"], &[]);
    // What it waits for is in `status` while it waits, and in the failure.
    let why = "last probe: HTTP status 404";
    ge.wait_status("the probe's answer", |s| s["generations"][0]["waiting"] == why);
    assert_eq!(ge.wait_exit(), 1);
    let failure = format!("generation 1 was not ready within 3s ({why}); giving up");
    assert!(ge.log().contains(&failure), "{}", ge.log());
}

#[test]
fn exec_mode_runs_the_probe_with_the_candidate_pid() {
    let dir = TempDir::new();
    let go = dir.path("go");
    let seen = dir.path("seen-pid");
    let probe =
        format!("exec:echo $GRACEEXEC_PID > {} && test -e {}", seen.display(), go.display());
    let ge = Ge::start(&["-l", "127.0.0.1:0", "--ready", &probe], &[]);
    let pid = ge.gen_pid(1);
    wait_until("the probe to run", LONG, || seen.exists());
    assert_eq!(state(&ge, 1), "starting");
    std::fs::write(&go, b"").unwrap();
    ge.wait_ready(1);
    assert_eq!(std::fs::read_to_string(&seen).unwrap().trim(), pid.to_string());
}

#[test]
fn notify_mode_ignores_a_ready_1_from_an_older_generation_socket() {
    // Generation 2 never says READY=1; generation 1 says it on its own
    // socket, which must not count for generation 2.
    let ge = Ge::start(
        &["-l", "127.0.0.1:0", "--ready", "notify", "--ready-timeout", "700ms"],
        &[("EXAMPLE_NEVER_READY_GEN", "2")],
    );
    ge.wait_ready(1);
    let first = info(ge.tcp_addr())["notify_socket"].clone();
    ge.signal(nix::sys::signal::Signal::SIGHUP);
    ge.gen_pid(2);
    let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
    s.send_to(b"READY=1", &first).unwrap();
    ge.wait_log("reload failed: generation 2 was not ready within 700ms");
}
