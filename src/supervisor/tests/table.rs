//! One test per cell of the table in the module docs.

use super::*;

// ---- Booting (first candidate) ----

#[test]
fn booting_reload_merges_into_follow_up() {
    let mut h = H::booting(Notify);
    assert_eq!(h.reload(), vec![]);
    assert_eq!(h.at(500).ready(1), vec![sp(2)]);
}

#[test]
fn booting_candidate_ready_becomes_serving() {
    let mut h = H::booting(Notify);
    assert_eq!(h.forward(), vec![]);
    assert_eq!(h.at(300).ready(1), vec![]);
    assert_eq!(h.forward(), vec![usr1(1)]);
    assert_eq!(h.reload(), vec![sp(2)], "Serving spawns at once");
}

#[test]
fn booting_candidate_fails_exits_1() {
    for status in [Code(0), Code(3), Killed(9)] {
        let mut h = H::booting(Notify);
        assert_eq!(h.at(200).exited(1, status), vec![fin(1), ex(1)]);
        assert_eq!(h.logged(Level::Error).len(), 1);
    }
}

#[test]
fn booting_candidate_spawn_failed_passes_126_127() {
    for code in [126, 127] {
        let mut h = H::new(Notify, true);
        assert_eq!(h.spawn_failed(1, code), vec![ex(code)]);
    }
}

#[test]
fn booting_candidate_ready_timeout_stops_it_and_exits_1() {
    let mut h = H::booting(Notify);
    assert_eq!(h.deadline(), Some(30_000));
    assert_eq!(h.tick(29_999), vec![]);
    assert_eq!(sigs(h.tick(30_000)), vec![term(1)]);
    assert_eq!(h.at(31_000).exited(1, Killed(15)), vec![fin(1), ex(1)]);
}

#[test]
fn booting_stop_timeout_kills_group() {
    // While booting, only the timed-out first candidate is ever stopped.
    let mut h = H::booting(Notify);
    h.tick(30_000);
    assert_eq!(h.deadline(), Some(35_000));
    assert_eq!(h.tick(34_999), vec![]);
    assert_eq!(h.tick(35_000), vec![kg(1)]);
    assert_eq!(h.deadline(), None);
}

#[test]
fn booting_shutdown_stops_candidate() {
    let mut h = H::booting(Notify);
    assert_eq!(h.at(100).shutdown(), vec![term(1)]);
    assert_eq!(h.ready(1), vec![]);
    assert_eq!(h.forward(), vec![], "no promotion while stopping");
    assert_eq!(h.exited(1, Killed(15)), vec![fin(1), ex(143)]);
}

// ---- Serving ----

#[test]
fn serving_reload_spawns_candidate() {
    let mut h = H::serving(true);
    assert_eq!(h.at(1000).reload(), vec![sp(2)]);
    assert_eq!(h.forward(), vec![usr1(1)]);
    assert_eq!(h.deadline(), Some(31_000));
}

#[test]
fn serving_current_exits_restart_schedules_timer() {
    let mut h = H::serving(true);
    assert_eq!(h.at(5000).exited(1, Code(1)), gone(1));
    assert_eq!(h.logged(Level::Info), ["restarting in 100ms"]);
    assert_eq!(h.deadline(), Some(5100));
    assert_eq!(h.forward(), vec![], "nothing is serving");
}

#[test]
fn serving_current_exits_never_restart_exits_with_its_status() {
    for (status, code) in [(Code(0), 0), (Code(3), 3), (Killed(9), 137)] {
        let mut h = H::serving(false);
        assert_eq!(h.at(5000).exited(1, status), vec![fin(1), ex(code)]);
    }
}

#[test]
fn serving_shutdown_stops_all() {
    let mut h = H::replaced();
    // Generation 1 already got its stop signal; it does not get a second.
    assert_eq!(h.at(3000).shutdown(), vec![term(2)]);
    assert_eq!(h.deadline(), Some(7000));
}

// ---- Reloading ----

#[test]
fn reloading_reload_merges_into_follow_up() {
    let mut h = H::reloading(true);
    assert_eq!(h.at(1500).reload(), vec![]);
    assert_eq!(h.at(2000).ready(2), vec![term(1), sp(3)]);
}

#[test]
fn reloading_candidate_ready_replaces_current() {
    let mut h = H::reloading(true);
    assert_eq!(h.at(2000).ready(2), vec![term(1)]);
    assert_eq!(h.forward(), vec![usr1(2)]);
    assert_eq!(h.reload(), vec![sp(3)], "back to Serving");
}

#[test]
fn reloading_candidate_fails_keeps_current() {
    let mut h = H::reloading(true);
    assert_eq!(h.at(1500).exited(2, Code(1)), gone(2));
    assert!(h.logged(Level::Warn)[0].ends_with("generation 1 keeps serving"));
    assert_eq!(h.forward(), vec![usr1(1)]);
    assert_eq!(h.deadline(), None);
    assert_eq!(h.reload(), vec![sp(3)]);
}

#[test]
fn reloading_candidate_fails_with_follow_up_spawns() {
    let mut h = H::reloading(true);
    h.at(1200).reload();
    assert_eq!(h.spawn_failed(2, 127), vec![sp(3)]);
}

#[test]
fn reloading_candidate_ready_timeout_keeps_current() {
    let mut h = H::reloading(true);
    assert_eq!(h.deadline(), Some(31_000));
    let a = h.tick(31_000);
    assert!(!a.contains(&sp(3)) && !a.contains(&ex(1)));
    assert_eq!(sigs(a), vec![term(2)]);
    assert_eq!(h.at(32_000).exited(2, Killed(15)), gone(2));
    assert_eq!(h.forward(), vec![usr1(1)]);
}

#[test]
fn reloading_current_exits_restart_candidate_carries_on() {
    let mut h = H::reloading(true);
    assert_eq!(h.at(1500).exited(1, Code(1)), gone(1));
    assert_eq!(h.deadline(), Some(31_000), "no restart timer");
    assert_eq!(h.at(2000).ready(2), vec![]);
    assert_eq!(h.forward(), vec![usr1(2)]);
}

#[test]
fn reloading_current_exits_never_restart_stops_with_its_status() {
    let mut h = H::reloading(false);
    assert_eq!(h.at(1500).exited(1, Code(4)), vec![fin(1), term(2)]);
    assert_eq!(h.exited(2, Killed(15)), vec![fin(2), ex(4)]);
}

#[test]
fn reloading_shutdown_stops_all() {
    let mut h = H::reloading(true);
    assert_eq!(h.at(1500).shutdown(), vec![term(1), term(2)]);
    assert_eq!(h.exited(2, Code(9)), gone(2));
    // The exit code is the status of the generation that was current.
    assert_eq!(h.exited(1, Killed(15)), vec![fin(1), ex(143)]);
}

#[test]
fn reloading_shutdown_right_after_the_spawn_stops_both() {
    // Regression: a stop decided before the candidate's pid was known had
    // to wait for it; generations are addressed by id now.
    let mut h = H::serving(true);
    assert_eq!(h.at(1000).reload(), vec![sp(2)]);
    assert_eq!(h.shutdown(), vec![term(1), term(2)]);
}

// ---- Recovering (no current) ----

#[test]
fn recovering_reload_without_candidate_spawns_now() {
    let mut h = H::recovering();
    assert_eq!(h.at(5050).reload(), vec![sp(2)]);
    assert_eq!(h.tick(5100), vec![], "the restart timer was cancelled");
}

#[test]
fn recovering_reload_with_candidate_merges() {
    let mut h = H::recovering_candidate();
    assert_eq!(h.reload(), vec![]);
    assert_eq!(h.at(5200).ready(2), vec![sp(3)]);
}

#[test]
fn recovering_candidate_ready_becomes_serving() {
    let mut h = H::recovering_candidate();
    assert_eq!(h.at(5300).ready(2), vec![]);
    assert_eq!(h.forward(), vec![usr1(2)]);
    assert_eq!(h.deadline(), None);
}

#[test]
fn recovering_candidate_fails_restarts_with_backoff() {
    let mut h = H::recovering_candidate(); // the first delay was 100 ms
    let a = h.tick(35_100); // not ready within 30 s: stop it
    assert!(!a.contains(&sp(3)));
    assert_eq!(sigs(a), vec![term(2)]);
    assert_eq!(h.deadline(), Some(35_300));
    assert_eq!(h.at(35_150).exited(2, Killed(15)), gone(2));
    assert_eq!(h.tick(35_299), vec![]);
    assert_eq!(h.tick(35_300), vec![sp(3)]);
}

#[test]
fn recovering_restart_timer_spawns_candidate() {
    let mut h = H::recovering();
    assert_eq!(h.tick(5099), vec![]);
    assert_eq!(h.tick(5100), vec![sp(2)]);
    assert_eq!(h.tick(5300), vec![], "once only");
}

#[test]
fn recovering_shutdown_stops_all() {
    let mut h = H::recovering_candidate();
    assert_eq!(h.shutdown(), vec![term(2)]);
    // No generation was current: the exit code is the candidate's status.
    assert_eq!(h.exited(2, Killed(15)), vec![fin(2), ex(143)]);
}

#[test]
fn recovering_shutdown_with_nothing_running_exits_now() {
    let mut h = H::recovering(); // generation 1 crashed with status 1
    assert_eq!(h.at(5050).shutdown(), vec![ex(1)]);
    assert_eq!(h.deadline(), None);
}

// ---- Stopping ----

#[test]
fn stopping_reload_ignored() {
    let mut h = H::serving(true);
    h.shutdown();
    assert_eq!(h.reload(), vec![]);
    assert_eq!(h.logged(Level::Info), ["reload ignored: shutting down"]);
}

#[test]
fn stopping_candidate_ready_ignored() {
    let mut h = H::reloading(true);
    h.at(1500).shutdown();
    assert_eq!(h.ready(2), vec![]);
    assert_eq!(h.forward(), vec![usr1(1)], "1 is still current");
}

#[test]
fn stopping_candidate_fails_forgotten() {
    let mut h = H::serving(true);
    h.at(1000).reload();
    h.shutdown();
    assert_eq!(h.spawn_failed(2, 127), vec![]);
    assert_eq!(h.exited(1, Code(0)), vec![fin(1), ex(0)], "not 127");
}

#[test]
fn stopping_current_exits_forgotten() {
    let mut h = H::serving(true);
    assert_eq!(h.at(1000).shutdown(), vec![term(1)]);
    assert_eq!(h.exited(1, Code(0)), vec![fin(1), ex(0)], "no restart");
}

#[test]
fn stopping_old_exits_last_one_exits() {
    let mut h = H::replaced();
    h.at(3000).shutdown();
    assert_eq!(h.exited(2, Killed(15)), gone(2));
    assert_eq!(h.exited(1, Code(5)), vec![fin(1), ex(143)]);
}

#[test]
fn stopping_restart_timer_cancelled() {
    let mut h = H::replaced();
    h.at(3000).exited(2, Code(1)); // timer at 3.1 s; 1 still draining
    assert_eq!(h.at(3050).shutdown(), vec![]);
    assert_eq!(h.tick(3100), vec![]);
    assert_eq!(h.exited(1, Code(0)), vec![fin(1), ex(1)], "crashed status");
}

#[test]
fn stopping_second_shutdown_kills_all_groups() {
    let mut h = H::reloading_with_old();
    assert_eq!(h.shutdown(), vec![term(2), term(3)]);
    assert_eq!(h.at(3500).shutdown(), vec![kg(1), kg(2), kg(3)]);
    assert_eq!(h.logged(Level::Warn).len(), 1);
    assert_eq!(h.deadline(), None);
    assert_eq!(h.tick(10_000), vec![], "no second SIGKILL");
}

// ---- Old generations and stop timeouts, in every state that has them ----

/// Generation 1 is old (stop deadline 7 s) in each; Booting has no old.
fn with_old() -> Vec<(&'static str, H)> {
    let mut recovering = H::replaced();
    assert_eq!(recovering.at(3000).exited(2, Code(1)), gone(2));
    assert_eq!(recovering.tick(3100), vec![sp(3)]);
    let mut stopping = H::replaced();
    assert_eq!(stopping.at(3000).shutdown(), vec![term(2)]);
    let (serving, reloading) = (H::replaced(), H::reloading_with_old());
    let states = [serving, reloading, recovering, stopping];
    ["Serving", "Reloading", "Recovering", "Stopping"].into_iter().zip(states).collect()
}

#[test]
fn old_exits_forgotten_in_every_state() {
    for (state, mut h) in with_old() {
        let current = h.forward();
        assert_eq!(h.at(4000).exited(1, Code(0)), gone(1), "{state}");
        assert_eq!(h.forward(), current, "{state}: the same current");
    }
}

#[test]
fn stop_timeout_kills_group_in_every_state() {
    let warn = "generation 1 killed after the stop timeout (5s)";
    for (state, mut h) in with_old() {
        assert_eq!(h.deadline(), Some(7000), "{state}");
        assert_eq!(h.tick(6999), vec![], "{state}");
        assert_eq!(h.tick(7000), vec![kg(1)], "{state}");
        assert_eq!(h.logged(Level::Warn), [warn], "{state}");
        assert_eq!(h.tick(7500), vec![], "{state}: killed once only");
    }
}
