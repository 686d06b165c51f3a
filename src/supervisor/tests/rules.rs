//! Backoff, ready policies, forwarding and reload storms.

use super::*;

// ---- Backoff, readiness, forwarding, reload storm ----

#[test]
fn restart_backoff_doubles_to_10s() {
    let mut h = H::recovering(); // generation 1 crashed at 5 s
    let mut last = 5000;
    let delays = [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000];
    for (gen, delay) in (2..).zip(delays) {
        let due = h.deadline().unwrap();
        assert_eq!(due - last, delay);
        assert_eq!(h.tick(due - 1), vec![]);
        assert_eq!(h.tick(due), vec![sp(gen)]);
        assert_eq!(h.exited(gen, Code(1)), gone(gen)); // before it is ready
        last = due;
    }
}

#[test]
fn restart_backoff_resets_after_60s_ready() {
    let mut h = H::recovering_candidate(); // 100 ms used, 200 ms next
    h.ready(2);
    h.at(65_099).exited(2, Code(1)); // ready 59.999 s: keeps doubling
    assert_eq!(h.deadline(), Some(65_299));
    h.tick(65_299);
    h.ready(3);
    h.at(125_299).exited(3, Code(1)); // ready 60 s: back to 100 ms
    assert_eq!(h.deadline(), Some(125_399));
}

#[test]
fn restart_backoff_resets_when_healthy_current_exits_during_reload() {
    let mut h = H::recovering_candidate(); // 100 ms used, 200 ms next
    h.ready(2);
    h.at(100_000).reload();
    h.at(100_500).exited(2, Code(1)); // ready 95 s; 3 carries on
    h.at(101_000).exited(3, Code(1));
    assert_eq!(h.deadline(), Some(101_100));
}

#[test]
fn ready_notify_accepts_only_notify() {
    let mut h = H::booting(Notify);
    assert_eq!(h.deadline(), Some(30_000), "no auto-ready deadline");
    assert_eq!(h.at(100).probed(1), vec![]);
    assert_eq!(h.tick(5000), vec![]);
    assert_eq!(h.forward(), vec![]);
    h.ready(1);
    assert_eq!(h.forward(), vec![usr1(1)]);
}

#[test]
fn ready_probe_accepts_only_probe() {
    let mut h = H::new(Probe, true);
    assert_eq!(h.deadline(), Some(30_000));
    assert_eq!(h.at(100).ready(1), vec![]);
    assert_eq!(h.forward(), vec![]);
    assert_eq!(h.probed(1), vec![Action::StopProbe { gen: 1 }]);
    assert_eq!(h.forward(), vec![usr1(1)]);
}

#[test]
fn ready_auto_accepts_notify_or_1s_after_the_start() {
    let mut h = H::booting(Auto);
    assert_eq!(h.at(100).probed(1), vec![]);
    assert_eq!(h.forward(), vec![]);
    assert_eq!(h.at(200).ready(1), vec![]);
    assert_eq!(h.forward(), vec![usr1(1)]);
    let mut h = H::idle(Auto, true);
    h.at(500).ev(Event::Start);
    assert_eq!(h.deadline(), Some(1500), "1 s after the spawn");
    h.tick(1499);
    assert_eq!(h.forward(), vec![]);
    assert_eq!(h.tick(1500), vec![]);
    assert_eq!(h.logged(Level::Info), ["generation 1 ready after 1000 ms"]);
    assert_eq!(h.forward(), vec![usr1(1)]);
}

#[test]
fn ready_delay_ignores_notify() {
    let mut h = H::booting(Delay(Duration::from_secs(3)));
    assert_eq!(h.deadline(), Some(3000));
    assert_eq!(h.at(100).ready(1), vec![]);
    h.tick(2999);
    assert_eq!(h.forward(), vec![]);
    assert_eq!(h.tick(3000), vec![]);
    assert_eq!(h.forward(), vec![usr1(1)]);
}

#[test]
fn forward_goes_to_current_only() {
    let mut h = H::reloading_with_old(); // old 1, current 2, candidate 3
    assert_eq!(h.forward(), vec![usr1(2)]);
    let mut h = H::booting(Notify);
    assert_eq!(h.forward(), vec![]);
    assert_eq!(h.logged(Level::Debug).len(), 1);
}

#[test]
fn reload_storm_yields_one_follow_up() {
    let mut h = H::reloading(true);
    for i in 0..20 {
        assert_eq!(h.at(1000 + i * 10).reload(), vec![]);
    }
    assert_eq!(h.at(2000).ready(2), vec![term(1), sp(3)]);
    assert_eq!(h.at(2500).ready(3), vec![term(2)], "no second follow-up");
    assert_eq!(h.deadline(), Some(7000));
}

#[test]
fn restart_backoff_resets_when_the_service_was_up_a_minute_across_reloads() {
    // Regression: only the crashed generation's own uptime counted, so a
    // crash soon after a reload of a long-healthy service backed off long.
    let mut h = H::recovering_candidate(); // 100 ms used, 200 ms next
    h.ready(2);
    h.at(600_000).reload();
    h.at(600_010).ready(3);
    h.at(600_020).exited(2, Code(0));
    h.at(601_010).exited(3, Code(1));
    assert_eq!(h.deadline(), Some(601_110));
}

#[test]
fn shutdown_stops_the_candidates_probe() {
    // Regression: probes of a stopped candidate kept running until it exited.
    let mut h = H::new(Probe, true);
    let out = h.at(10).shutdown();
    assert_eq!(out, vec![Action::StopProbe { gen: 1 }, term(1)]);
}

// ---- signals and stop requests ----

#[test]
fn a_reload_in_the_same_batch_as_a_stop_is_dropped() {
    // A signalfd hands HUP (1) over before TERM (15) whatever their order.
    let mut h = H::serving(true);
    let acts = h.ev(Event::Signals(vec![Signal::SIGHUP as i32, SIGTERM as i32]));
    assert_eq!(acts, vec![term(1)], "no candidate is started only to be stopped");
}

#[test]
fn signals_without_a_meaning_are_ignored_and_real_time_ones_forwarded() {
    let mut h = H::serving(true);
    let alrm = Signal::SIGALRM as i32;
    assert_eq!(h.ev(Event::Signals(vec![alrm, Signal::SIGPWR as i32])), vec![]);
    assert_eq!(h.logged(Level::Info), ["received SIGALRM: ignored", "received SIGPWR: ignored"]);
    let rt = nix::libc::SIGRTMIN() + 1;
    assert_eq!(h.ev(Event::Signals(vec![rt])), vec![Action::Signal { gen: 1, signal: rt }]);
}

#[test]
fn a_stop_before_the_start_exits_0_without_starting_anything() {
    let mut h = H::idle(Notify, true);
    assert_eq!(h.ev(Event::Signals(vec![Signal::SIGHUP as i32])), vec![]);
    assert_eq!(h.shutdown(), vec![ex(0)]);
    assert_eq!(h.ev(Event::Start), vec![], "done: nothing starts after the exit");
}

#[test]
fn a_control_stop_waits_for_the_exit_and_never_escalates() {
    let mut h = H::serving(true);
    assert_eq!(h.at(100).stop(7), vec![term(1)]);
    assert_eq!(h.stop(8), vec![], "a second stop request waits for the same exit");
    assert_eq!(h.exited(1, Code(0)), vec![fin(1), Action::Exit { code: 0, waiters: vec![7, 8] }]);
}

#[test]
fn a_second_stop_signal_after_a_control_stop_kills_every_group() {
    let mut h = H::serving(true);
    h.stop(7);
    assert_eq!(h.shutdown(), vec![kg(1)]);
    assert_eq!(h.shutdown(), vec![], "once");
}

#[test]
fn forwarded_signals_reach_the_serving_generation_while_it_stops() {
    let mut h = H::serving(true);
    h.at(10).shutdown();
    assert_eq!(h.forward(), vec![usr1(1)]);
    assert_eq!(h.exited(1, Code(0)), vec![fin(1), ex(0)]);
}

#[test]
fn a_candidate_not_ready_is_mentioned_every_few_seconds_with_what_it_waits_for() {
    let mut h = H::idle(Notify, true);
    h.sup.policy.nag_every = Duration::from_secs(5);
    h.ev(Event::Start);
    assert_eq!(h.deadline(), Some(5000));
    h.tick(5000);
    assert_eq!(h.logged(Level::Info), ["generation 1 not ready after 5s (no READY=1 yet)"]);
    h.ev(Event::Waiting { gen: 1, why: Waiting::Probe("HTTP status 404".into()) });
    h.tick(10_000);
    assert_eq!(
        h.logged(Level::Info),
        ["generation 1 not ready after 10s (last probe: HTTP status 404)"]
    );
}
