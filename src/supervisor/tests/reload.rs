//! Reloads as transactions: each waiter gets the outcome of a reload that
//! started after it asked; the service manager hears RELOADING=1 and READY=1
//! in pairs.

use super::*;

fn ok(gen: GenId, took_ms: u64) -> Outcome {
    Outcome::Ready { gen, took: Duration::from_millis(took_ms), share: None }
}

/// The waiters and outcome of the one Report the last event made.
fn reported(h: &H) -> Vec<(Vec<Waiter>, Outcome)> {
    let mut v = vec![];
    for a in &h.reports {
        if let Action::Report { waiters, outcome } = a {
            v.push((waiters.clone(), outcome.clone()));
        }
    }
    v
}

fn failure(h: &H) -> (Vec<Waiter>, Option<GenId>, String, Option<GenId>) {
    match reported(h).as_slice() {
        [(w, Outcome::Failed { gen, why, serving, .. })] => {
            (w.clone(), *gen, why.clone(), *serving)
        }
        other => panic!("expected one failure report, got {other:?}"),
    }
}

fn sd(h: &H) -> Vec<(Option<SdState>, SdStatus)> {
    let mut v = vec![];
    for a in &h.reports {
        if let Action::Systemd { state, status } = a {
            v.push((*state, status.clone()));
        }
    }
    v
}

fn serving(gen: GenId) -> SdStatus {
    SdStatus::Serving { gen, failed: None }
}

fn sd_states(h: &H) -> Vec<SdState> {
    sd(h).into_iter().filter_map(|(s, _)| s).collect()
}

#[test]
fn a_waiter_hears_success_with_gen_pid_and_time() {
    let mut h = H::serving(true);
    assert_eq!(h.at(1000).ask(7), vec![sp(2)]);
    assert_eq!(h.at(1250).ready(2), vec![term(1)]);
    assert_eq!(reported(&h), vec![(vec![7], ok(2, 250))]);
}

#[test]
fn a_waiter_hears_why_the_candidate_failed() {
    let mut h = H::serving(true);
    h.at(1000).ask(7);
    h.at(1100).exited(2, Code(3));
    let (w, gen, why, serving) = failure(&h);
    assert_eq!((w, gen, serving), (vec![7], Some(2), Some(1)));
    assert_eq!(why, "generation 2 (pid 102) exited with status 3 before it was ready");
}

#[test]
fn a_waiter_hears_a_ready_timeout_and_an_exec_failure() {
    let mut h = H::serving(true);
    h.at(1000).ask(1);
    h.tick(31_000);
    assert_eq!(failure(&h).2, "generation 2 was not ready within 30s");

    let mut h = H::serving(true);
    h.ask(1);
    h.spawn_failed(2, 127);
    assert_eq!(failure(&h).2, "generation 2 cannot exec");
}

#[test]
fn merged_request_gets_the_outcome_of_the_later_reload() {
    let mut h = H::serving(true);
    h.at(1000).ask(1);
    assert_eq!(h.at(1100).ask(2), vec![]);
    assert_eq!(h.ask(3), vec![], "a third request merges into the same follow-up");
    assert_eq!(h.at(1200).ready(2), vec![term(1), sp(3)]);
    assert_eq!(reported(&h), vec![(vec![1], ok(2, 200))], "2 and 3 asked after it began");
    h.at(1500).ready(3);
    assert_eq!(reported(&h), vec![(vec![2, 3], ok(3, 300))]);
}

#[test]
fn merged_request_after_a_failure_waits_for_the_follow_up() {
    let mut h = H::serving(true);
    h.at(1000).ask(1);
    h.ask(2);
    assert_eq!(h.at(1100).exited(2, Code(1)), vec![fin(2), sp(3)]);
    assert_eq!(failure(&h).0, vec![1]);
    h.at(1300).ready(3);
    assert_eq!(reported(&h), vec![(vec![2], ok(3, 200))]);
}

#[test]
fn a_request_while_booting_gets_the_reload_after_the_first_start() {
    let mut h = H::booting(Notify);
    h.ask(4);
    assert_eq!(h.at(100).ready(1), vec![sp(2)]);
    assert_eq!(reported(&h), vec![], "the first start is not a reload");
    h.at(150).ready(2);
    assert_eq!(reported(&h), vec![(vec![4], ok(2, 50))]);
}

#[test]
fn shutdown_fails_every_waiter_and_later_requests() {
    let mut h = H::serving(true);
    h.ask(1);
    h.ask(2);
    h.shutdown();
    let (mut w, gen, why, _) = failure(&h);
    w.sort();
    assert_eq!((w, gen, why.as_str()), (vec![1, 2], None, "graceexec is shutting down"));
    assert_eq!(h.ask(3), vec![]);
    assert_eq!(failure(&h).0, vec![3]);
}

#[test]
fn recovering_reload_starts_now_and_a_merged_one_rides_the_restart() {
    let mut h = H::recovering();
    assert_eq!(h.at(5010).ask(1), vec![sp(2)], "nothing serves: start at once");
    h.ask(2);
    h.at(5020).exited(2, Code(1));
    assert_eq!(failure(&h).0, vec![1]);
    assert_eq!(h.deadline(), Some(5220), "restart backoff");
    assert_eq!(h.tick(5220), vec![sp(3)]);
    h.at(5300).ready(3);
    assert_eq!(reported(&h), vec![(vec![2], ok(3, 80))]);
}

#[test]
fn signal_reloads_have_no_waiters_but_count_as_the_last_reload() {
    let mut h = H::serving(true);
    h.at(1000).reload();
    h.at(1040).ready(2);
    assert_eq!(reported(&h), vec![]);
    let v = h.sup.view(h.base + Duration::from_millis(2040));
    assert_eq!(v.last_reload, Some((ok(2, 40), Duration::from_secs(1))));
}

// ---- --check ----

fn checked() -> H {
    let mut h = H::new(Notify, true);
    h.sup.policy.check = true;
    h.ready(1);
    h
}

#[test]
fn check_runs_before_the_candidate_and_gates_it() {
    let mut h = checked();
    assert_eq!(h.at(1000).ask(1), vec![Action::RunCheck { gen: 2 }]);
    assert_eq!(h.ask(2), vec![], "merges while the check runs");
    let why = "the check exited with status 1".to_string();
    assert_eq!(
        h.ev(Event::CheckDone { ok: false, why: why.clone(), output: vec![] }),
        vec![Action::RunCheck { gen: 2 }]
    );
    assert_eq!(failure(&h), (vec![1], None, why, Some(1)));
    assert_eq!(
        h.ev(Event::CheckDone { ok: true, why: String::new(), output: vec![] }),
        vec![sp(2)]
    );
    h.at(1100).ready(2);
    assert_eq!(reported(&h), vec![(vec![2], ok(2, 100))]);
}

#[test]
fn a_check_that_hangs_fails_the_reload_at_the_ready_timeout() {
    let mut h = checked();
    assert_eq!(h.at(1000).ask(1), vec![Action::RunCheck { gen: 2 }]);
    assert_eq!(h.deadline(), Some(31_000));
    assert_eq!(h.tick(30_999), vec![]);
    let why = "the check did not finish within 30s".to_string();
    assert_eq!(h.tick(31_000), vec![Action::CancelCheck { why: why.clone() }]);
    assert_eq!(h.deadline(), None, "cancelled once");
    assert_eq!(h.tick(31_500), vec![]);
    // The loop kills it and answers with what it wrote.
    let output = vec!["checking...".to_string()];
    h.ev(Event::CheckDone { ok: false, why: why.clone(), output: output.clone() });
    assert_eq!(failure(&h), (vec![1], None, why, Some(1)));
    match reported(&h).as_slice() {
        [(_, Outcome::Failed { output: o, .. })] => assert_eq!(o, &output),
        other => panic!("{other:?}"),
    }
}

#[test]
fn shutdown_cancels_a_running_check() {
    let mut h = checked();
    h.ask(1);
    let acts = h.shutdown();
    assert!(acts.iter().any(|a| matches!(a, Action::CancelCheck { .. })), "{acts:?}");
    assert_eq!(failure(&h).0, vec![1]);
    assert_eq!(h.ev(Event::CheckDone { ok: true, why: String::new(), output: vec![] }), vec![]);
}

#[test]
fn check_is_not_run_for_the_first_start_or_a_restart() {
    let mut h = H::new(Notify, true);
    h.sup.policy.check = true;
    h.ready(1);
    h.at(1000).exited(1, Code(1));
    assert_eq!(h.tick(1100), vec![sp(2)]);
}

// ---- sd_notify ----

#[test]
fn systemd_hears_ready_reloading_ready_stopping() {
    let mut h = H::booting(Notify);
    h.ready(1);
    assert_eq!(sd(&h), vec![(Some(SdState::Ready), serving(1))]);
    h.reload();
    assert_eq!(sd_states(&h), vec![SdState::Reloading]);
    h.ready(2);
    assert_eq!(sd(&h), vec![(Some(SdState::Ready), serving(2))]);
    h.reload();
    h.exited(3, Code(1));
    let got = sd(&h);
    let [(Some(SdState::Ready), SdStatus::Serving { gen: 2, failed: Some(_) })] = got.as_slice()
    else {
        panic!("{got:?}")
    };
    h.shutdown();
    assert_eq!(sd_states(&h), vec![SdState::Stopping]);
}

#[test]
fn systemd_follow_up_is_a_second_reloading_after_ready() {
    let mut h = H::serving(true);
    h.reload();
    h.reload();
    h.ready(2);
    assert_eq!(sd_states(&h), vec![SdState::Ready, SdState::Reloading]);
}

#[test]
fn systemd_crash_and_recovery_are_status_lines_only() {
    let mut h = H::serving(true);
    h.at(1000).exited(1, Code(1));
    assert_eq!(sd_states(&h), vec![]);
    assert_eq!(sd(&h).len(), 1);
    h.tick(1100);
    h.ready(2);
    assert_eq!(sd(&h), vec![(None, serving(2))]);
}

/// RELOADING=1 was sent for the reload; the serving generation's crash
/// must not lose its READY=1, which comes when the reload's candidate is
/// ready (and new connections already go to it).
#[test]
fn systemd_hears_a_reload_end_even_if_the_current_crashed_during_it() {
    let mut h = H::reloading(true);
    h.at(1500).exited(1, Code(1));
    assert_eq!(sd_states(&h), vec![], "not yet: {:?}", sd(&h));
    h.at(2000).ready(2);
    assert_eq!(sd(&h), vec![(Some(SdState::Ready), serving(2))]);
}

// ---- status view ----

#[test]
fn view_shows_states_ages_and_restarts() {
    let h = H::reloading_with_old();
    let v = h.sup.view(h.base + Duration::from_millis(4000));
    assert_eq!(v.state, "reloading");
    let rows: Vec<_> = v.gens.iter().map(|g| (g.id, g.role.as_str(), g.age.as_millis())).collect();
    assert_eq!(rows, vec![(1, "draining", 4000), (2, "ready", 3000), (3, "starting", 1000)]);
    assert_eq!(v.gens[1].ready_after, Some(Duration::from_millis(1000)));
    assert_eq!(v.gens[2].ready_after, None);

    let mut h = H::serving(true);
    h.at(1000).exited(1, Code(1));
    assert_eq!(h.sup.view(h.now).state, "recovering");
    h.tick(1100);
    h.ready(2);
    let v = h.sup.view(h.now);
    assert_eq!((v.state, v.restarts), ("serving", 1));
    h.shutdown();
    assert_eq!(h.sup.view(h.now).state, "stopping");
    assert_eq!(H::booting(Notify).sup.view(Instant::now()).state, "starting");
}
