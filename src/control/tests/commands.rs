//! The client commands (reload, stop, status, list) against a server in a
//! thread, and the flags that pick their target.

use super::*;

#[test]
fn reload_success_failure_and_no_wait() {
    let dir = temp_dir("reload");
    let path = socket_path(&dir, "api");
    let ok =
        json!({"graceexec":1,"ok":true,"reply":"reloaded","generation":3,"pid":4242,"ready_ms":37});
    let s = serve(&path, reply(ok));
    let o =
        client::reload_in(named("api"), &dir, SECOND, Request::Reload { wait: true, canary: None });
    assert_eq!(
        (o.code, o.out),
        (0, vec!["reloaded api: generation 3 (pid 4242) ready after 37 ms".to_string()])
    );
    drop(s);

    let failed = json!({"graceexec":1,"ok":false,"reply":"reload_failed","error":"generation 3 (pid 4242) exited with status 1 before it was ready",
        "generation":3,"serving":2,"stderr":["boom","at line 2"]});
    let s = serve(&path, reply(failed));
    // Found as the only instance running, without --name.
    let o =
        client::reload_in(Which::Only, &dir, SECOND, Request::Reload { wait: true, canary: None });
    assert_eq!(o.code, 1);
    assert_eq!(
        o.err,
        [
            "graceexec: reload of api failed: generation 3 (pid 4242) exited with status 1 before it was ready; generation 2 keeps serving",
            "graceexec: last lines of its output:",
            "  | boom",
            "  | at line 2",
        ]
    );
    drop(s);

    let o = client::reload_output(
        "api",
        &as_reply(json!({"graceexec":1,"ok":false,"reply":"reload_failed","error":"x",
            "generation":null,"serving":null,"stderr":[]})),
    );
    assert_eq!(o.err, ["graceexec: reload of api failed: x"]);
    let o = client::reload_output(
        "api",
        &as_reply(json!({"graceexec":1,"ok":true,"reply":"reload_accepted"})),
    );
    assert_eq!((o.code, o.out), (0, vec!["reload of api requested".to_string()]));
}

#[test]
fn no_answer_in_time_is_exit_4() {
    let dir = temp_dir("slow");
    let path = socket_path(&dir, "api");
    let _s = serve(&path, |_| Vec::new());
    let o = client::reload_in(
        named("api"),
        &dir,
        Duration::from_millis(200),
        Request::Reload { wait: true, canary: None },
    );
    assert_eq!(o.code, 4);
    assert_eq!(
        o.err,
        ["graceexec: no answer from api within 200ms; the reload may still complete"]
    );
}

#[test]
fn stop_waits_for_the_exit() {
    let dir = temp_dir("stop");
    let path = socket_path(&dir, "api");
    let _s = serve(&path, |_| {
        vec![
            (json!({"graceexec":1,"ok":true,"reply":"stopping","pid":100}), false),
            (json!({"graceexec":1,"ok":true,"reply":"exited","code":0}), true),
        ]
    });
    let mut progress = Vec::new();
    let o = client::stop_in(named("api"), &dir, SECOND, &mut |l| progress.push(l));
    assert_eq!(progress, ["stopping api (pid 100)"]);
    assert_eq!((o.code, o.out), (0, vec!["api stopped (exit status 0)".to_string()]));

    let _slow = serve(&dir.join("slow.sock"), |_| {
        vec![(json!({"graceexec":1,"ok":true,"reply":"stopping","pid":100}), false)]
    });
    let o = client::stop_in(named("slow"), &dir, Duration::from_millis(300), &mut |_| {});
    assert_eq!(
        (o.code, o.err),
        (4, vec!["graceexec: slow (pid 100) is still stopping after 300ms".to_string()])
    );
}

pub(super) fn sample_status() -> Value {
    json!({"graceexec":1,"ok":true,"reply":"status","name":"api","pid":100,"version":"0.1.0","uptime_ms":3_723_400,
        "state":"serving","command":["./server","--flag"],
        "sockets":[{"name":"tcp-8080","address":"127.0.0.1:8080"},{"name":"admin","address":"unix:/run/a.sock"}],
        "generations":[
            {"generation":2,"pid":4242,"state":"ready","phase":"serving","age_ms":241_000,"ready_ms":37,
             "status":"accepting connections","socket":1,"share":100.0,"queued":0,"connections":12},
            {"generation":3,"pid":4300,"state":"starting","phase":"candidate","age_ms":800,"ready_ms":null,
             "status":null,"waiting":"nothing accepted on fd 3 yet","socket":2,"share":0.0,"queued":1,"connections":0}],
        "last_reload":{"ok":false,"generation":3,"error":"not ready in 60s","ago_ms":10_000},"restarts":1})
}

#[test]
fn status_reads_well() {
    let status = |v: Value| match as_reply(v).answer {
        Answer::Status(s) => *s,
        other => panic!("{other:?}"),
    };
    let lines = super::super::render::status_text("api", &status(sample_status()));
    assert_eq!(
        lines,
        [
            "api: pid 100, up 1h 2m 3s, state serving, 1 restart",
            "  command: ./server --flag",
            "  tcp-8080  127.0.0.1:8080",
            "  admin     unix:/run/a.sock",
            "  GEN  PID   PHASE      AGE    READY AFTER  SOCKET  SHARE  QUEUED  CONNS  STATUS",
            "  2    4242  serving    4m 1s  37 ms        1       100%   0       12     accepting connections",
            "  3    4300  candidate  1s     -            2       0%     1       0      waiting: nothing accepted on fd 3 yet",
            "last reload: failed 10s ago: not ready in 60s",
        ]
    );
    let mut v = sample_status();
    v["last_reload"] = json!({"ok":true,"generation":2,"ready_ms":37,"ago_ms":240_000});
    assert_eq!(
        super::super::render::status_text("api", &status(v)).last().unwrap(),
        "last reload: generation 2 ready after 37 ms, 4m ago"
    );

    let dir = temp_dir("status");
    let _s = serve(&socket_path(&dir, "api"), reply(sample_status()));
    let o = client::status_in(named("api"), &dir, client::Format::Json);
    assert_eq!(o.code, 0);
    assert_eq!(as_reply(serde_json::from_str(&o.out[0]).unwrap()), as_reply(sample_status()));
}

#[test]
fn resolution_errors() {
    let dir = temp_dir("resolve");
    let none = Which::Only;
    let o = client::status_in(none, &dir, client::Format::Text);
    assert_eq!(o.code, 3);
    assert_eq!(
        o.err,
        [format!("graceexec: no graceexec instance is running (looked in {})", dir.display())]
    );

    drop(UnixListener::bind(socket_path(&dir, "old")).unwrap()); // stale: skipped
    assert_eq!(client::status_in(none, &dir, client::Format::Text).code, 3);
    let o = client::status_in(named("api"), &dir, client::Format::Text);
    let path: PathBuf = socket_path(&dir, "api");
    assert_eq!(
        (o.code, o.err),
        (
            3,
            vec![format!(
                "graceexec: no instance named api is running (no control socket at {})",
                path.display()
            )]
        )
    );

    let _a = serve(&socket_path(&dir, "a"), reply(sample_status()));
    let _b = serve(&socket_path(&dir, "b"), reply(sample_status()));
    let o = client::status_in(none, &dir, client::Format::Text);
    assert_eq!(o.err, ["graceexec: several instances are running: a, b; pick one with --name"]);
    assert_eq!(o.code, 3);

    let o = client::list_in(&dir, false);
    assert_eq!(o.code, 0, "{:?}", o.err);
    assert_eq!(o.out.len(), 3);
    assert!(o.out[0].starts_with("NAME  PID  GEN  STATE    SOCKETS"), "{}", o.out[0]);
    assert!(
        o.out[1].starts_with("a     100  2    serving  127.0.0.1:8080,unix:/run/a.sock  "),
        "{}",
        o.out[1]
    );
    let o = client::list_in(&dir, true);
    assert_eq!(serde_json::from_str::<Value>(&o.out[0]).unwrap().as_array().unwrap().len(), 2);
    let empty = temp_dir("empty");
    let o = client::list_in(&empty, false);
    assert!(o.out.is_empty());
    let none =
        format!("graceexec: no graceexec instance is running (looked in {})", empty.display());
    assert_eq!((o.code, o.err), (3, vec![none]), "as status says it");
}

#[test]
fn a_client_can_read_a_reply_after_the_server_drops_unread_input() {
    // The server drains what it did not read before closing, so the reply
    // is followed by EOF rather than ECONNRESET.
    let dir = temp_dir("drain");
    let path = socket_path(&dir, "api");
    let (mut server, _) = bind(&path, "api").unwrap();
    let mut c = send(&path, &format!("{{bad\n{}", "unread ".repeat(2000)));
    server.service(&[Key::Listener], Instant::now());
    let mut all = String::new();
    c.set_read_timeout(Some(SECOND)).unwrap();
    c.read_to_string(&mut all).unwrap();
    assert!(all.contains("not valid JSON"));
}
