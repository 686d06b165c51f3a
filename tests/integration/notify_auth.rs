//! Who may speak for a generation on its notify socket: READY=1 counts
//! only from a process of the candidate's process group, and `MAINPID=`
//! (a daemon handing off to a child) moves the generation to that pid
//! when, and only when, it is in the group.

use std::os::unix::net::UnixDatagram;
use std::process::Command;

use nix::sys::signal::Signal;

use crate::harness::*;

/// Wait until generation `gen` has exec'd its server (GRACEEXEC_GENERATION
/// in its environment); its pid and environment.
fn wait_exec(
    ge: &mut Ge,
    name: &str,
    gen: u64,
) -> (i32, std::collections::HashMap<String, String>) {
    let mut found = None;
    let ok = poll_until(LONG, || {
        ge.assert_up(&format!("generation {gen} to start"));
        let Some((pid, _)) = status_json(name).and_then(|s| gen_in_status(&s, gen)) else {
            return false;
        };
        let env = proc_environ(pid);
        let execd = env.get("GRACEEXEC_GENERATION") == Some(&gen.to_string());
        found = execd.then_some((pid, env));
        found.is_some()
    });
    assert!(ok, "generation {gen} never ran its server; log:\n{}", ge.log());
    found.unwrap()
}

#[test]
fn a_ready_sent_by_a_process_outside_the_candidates_group_does_not_count() {
    let name = "spoof";
    let args = ["-l", "127.0.0.1:0", "--ready", "notify", "--ready-timeout", "2s", "--name", name];
    let mut ge = Ge::start(&args, &[("EXAMPLE_NEVER_READY_GEN", "2")]);
    let gen1 = wait_ready(&mut ge, name, 1);
    let addr = addr_in_status(&status_json(name).unwrap());
    let rt = runtime_dir();
    let reload = std::thread::spawn(move || ctl_in(&rt, &["reload", "--name", name]));
    let (candidate, env) = wait_exec(&mut ge, name, 2);
    let socket = env.get("NOTIFY_SOCKET").expect("the candidate has a NOTIFY_SOCKET");
    // The test process: alive, and in no group of graceexec's.
    UnixDatagram::unbound().unwrap().send_to(b"READY=1", socket).unwrap();
    let (code, out, err) = reload.join().unwrap();
    assert_eq!(code, 1, "the spoofed READY=1 promoted pid {candidate}: {out}{err}");
    assert!(err.contains("not ready within 2s"), "{err}");
    assert_eq!(pid_of(&get(addr, "/").unwrap()), gen1, "generation 1 keeps serving");
    let status = status_json(name).unwrap();
    assert_eq!(gen_in_status(&status, 1), Some((gen1, "ready".to_string())), "{status}");
}

#[test]
fn a_ready_sent_by_a_helper_in_the_candidates_group_counts() {
    let name = "helper";
    let mut ge = Ge::start(
        &["-l", "127.0.0.1:0", "--ready", "notify", "--name", name],
        &[("EXAMPLE_READY_HELPER_GEN", "all")],
    );
    wait_ready(&mut ge, name, 1);
    let addr = addr_in_status(&status_json(name).unwrap());
    let (code, out, err) = ctl(&["reload", "--name", name]);
    assert_eq!(code, 0, "{out}{err}");
    let gen2 = wait_ready(&mut ge, name, 2);
    wait_until("generation 2 to serve", LONG, || get(addr, "/").is_ok_and(|b| pid_of(&b) == gen2));
}

/// A daemon-style server: the process graceexec started forks, its child
/// sends MAINPID=<child> and READY=1, and the parent exits 0. The child is
/// the generation from then on: no restart, its pid in the status, a
/// reload replaces it without a failed request, a stop stops it.
#[test]
fn a_mainpid_hand_off_is_honoured() {
    let name = "handoff";
    let mut ge = Ge::start(
        &["-l", "127.0.0.1:0", "--ready", "notify", "--name", name],
        &[("EXAMPLE_HANDOFF_GEN", "all")],
    );
    let parent1 = ge.leader_pid(1);
    // It exits once its child has notified; reaped by graceexec (its
    // parent), so the exit has been handled by the time it is gone.
    wait_until("the first parent to be reaped", LONG, || !alive(parent1));
    let mut status = None;
    wait_until("generation 1 to be ready, or replaced", LONG, || {
        ge.assert_up("generation 1 to be ready");
        status = status_json(name);
        status.as_ref().is_some_and(|s| {
            let ready = gen_in_status(s, 1).is_some_and(|(_, state)| state == "ready");
            ready || s["restarts"] != 0 || gens_in_status(s) != [1]
        })
    });
    let status = status.unwrap();
    assert_eq!(status["restarts"], 0, "generation 1 was restarted: {status}");
    assert_eq!(gens_in_status(&status), [1], "no other generation: {status}");
    let addr = addr_in_status(&status);
    let child1 = pid_of(&get(addr, "/").unwrap());
    assert_ne!(child1, parent1, "the forked child serves");
    assert_eq!(gen_in_status(&status, 1), Some((child1, "ready".to_string())), "{status}");
    assert!(!ge.log().contains("exited unexpectedly"), "{}", ge.log());

    let load = Load::start(addr, 4);
    load.wait_more(50);
    let (code, out, err) = ctl(&["reload", "--name", name]);
    assert_eq!(code, 0, "{out}{err}");
    let parent2 = ge.leader_pid(2);
    wait_until("the second parent to be reaped", LONG, || !alive(parent2));
    wait_until("the first child to be stopped and reaped", LONG, || !alive(child1));
    let status = status_json(name).unwrap();
    let (child2, state) = gen_in_status(&status, 2).expect("generation 2 in the status");
    assert_ne!(child2, parent2, "{status}");
    assert_eq!((gens_in_status(&status), state.as_str()), (vec![2], "ready"), "{status}");
    wait_until("the second child to serve", LONG, || {
        get(addr, "/").is_ok_and(|b| pid_of(&b) == child2)
    });
    load.wait_more(50);
    let result = load.finish();
    result.assert_clean();
    assert!(result.pids.contains(&child2), "{:?}", result.pids);
    assert!(!ge.log().contains("exited unexpectedly"), "{}", ge.log());

    ge.signal(Signal::SIGTERM);
    assert_eq!(ge.wait_exit(), 0, "{}", ge.log());
    let log = ge.log();
    assert!(log.contains(&format!("server: pid {child2} drained, exiting")), "{log}");
    assert!(!alive(child2));
}

#[test]
fn a_mainpid_outside_the_generations_group_is_refused_with_a_warning() {
    let name = "stranger";
    let stranger = Stranger(Command::new("sleep").arg("300").spawn().unwrap());
    let stranger_pid = stranger.0.id().to_string();
    let mut ge = Ge::start(
        &["-l", "127.0.0.1:0", "--ready", "notify", "--name", name],
        &[("EXAMPLE_MAINPID", &stranger_pid)],
    );
    let started = ge.gen_pid(1);
    ge.wait_own_line("MAINPID");
    let gen1 = wait_ready(&mut ge, name, 1);
    assert_eq!(gen1, started, "the generation's pid did not change");
    let addr = addr_in_status(&status_json(name).unwrap());
    assert_eq!(pid_of(&get(addr, "/").unwrap()), started);
    ge.signal(Signal::SIGTERM);
    assert_eq!(ge.wait_exit(), 0, "{}", ge.log());
    assert!(running(stranger.0.id() as i32), "graceexec stopped a process not its own");
}

/// A process of the test's, outside every group of graceexec's; killed
/// when the test ends, however it ends.
struct Stranger(std::process::Child);

impl Drop for Stranger {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
