//! With steered sockets: the switch, the drain wait, canaries, ramps and
//! kept generations, cell by cell (supervisor/split.rs has the table).

use super::*;

pub(super) const ALL: u32 = MILLION;

pub(super) fn steer(shares: &[(GenId, u32)]) -> Action {
    Action::Steer { shares: shares.to_vec() }
}

pub(super) fn watch(gen: GenId) -> Action {
    Action::WatchDrain { gen }
}

/// Steered, `--ready notify`, generation 1 serving at 0 s.
pub(super) fn steered(tweak: impl FnOnce(&mut Policy)) -> H {
    let mut h = H::idle(Notify, true);
    h.sup.policy.steer = true;
    tweak(&mut h.sup.policy);
    let mut start = vec![sp(1), steer(&[(1, ALL)])];
    if h.sup.probes() {
        start.push(Action::StartProbe { gen: 1 });
    }
    assert_eq!(h.ev(Event::Start), start, "new connections queue for it");
    let by = if h.sup.probes() { ReadySource::Accept } else { ReadySource::Notify };
    h.ev(Event::Ready { gen: 1, by });
    h
}

pub(super) fn reload_with(h: &mut H, canary: Option<u32>, w: Option<Waiter>) -> Vec<Action> {
    h.ev(Event::Reload { waiter: w, canary })
}

pub(super) fn verdict(h: &H) -> Vec<Verdict> {
    let mut v = vec![];
    for a in &h.reports {
        if let Action::Answer { verdict, .. } = a {
            v.push(verdict.clone());
        }
    }
    v
}

/// The (to, from) of every rollback the last event noted.
pub(super) fn rolled_back(h: &H) -> Vec<(GenId, GenId)> {
    let mut v = vec![];
    for a in &h.logs {
        if let Action::Note(Note::RolledBack { gen, from }) = a {
            v.push((*gen, *from));
        }
    }
    v
}

impl H {
    fn drained(&mut self, gen: GenId) -> Vec<Action> {
        self.ev(Event::Drained { gen })
    }
}

#[test]
fn the_old_generation_is_steered_away_from_and_signalled_once_drained() {
    let mut h = steered(|_| {});
    assert_eq!(h.at(1000).reload(), vec![sp(2)], "nothing steered to a candidate");
    assert_eq!(h.at(1100).ready(2), vec![steer(&[(2, ALL)]), watch(1)], "no stop signal yet");
    assert_eq!(h.deadline(), Some(6100), "--drain-wait");
    assert_eq!(h.at(1200).drained(1), vec![term(1)]);
    assert_eq!(h.deadline(), Some(6200), "the stop timeout");
    assert_eq!(h.exited(1, Code(0)), vec![fin(1)]);
}

#[test]
fn past_the_drain_wait_the_old_generation_is_signalled_anyway() {
    let mut h = steered(|_| {});
    h.at(1000).reload();
    h.at(1100).ready(2);
    assert_eq!(h.tick(6099), vec![]);
    assert_eq!(h.tick(6100), vec![term(1)]);
    assert_eq!(h.drained(1), vec![], "once");
}

#[test]
fn a_shutdown_signals_generations_still_emptying() {
    let mut h = steered(|_| {});
    h.at(1000).reload();
    h.at(1100).ready(2);
    assert_eq!(h.shutdown(), vec![term(2), term(1)]);
}

#[test]
fn a_crash_restart_and_a_reload_while_recovering_get_new_connections_at_once() {
    let mut h = steered(|_| {});
    assert_eq!(h.at(1000).exited(1, Code(1)), vec![fin(1)]);
    assert_eq!(h.tick(1100), vec![sp(2), steer(&[(2, ALL)])]);
    assert_eq!(h.at(1200).exited(2, Code(1)), vec![fin(2)]);
    assert_eq!(h.at(1250).reload(), vec![sp(3), steer(&[(3, ALL)])]);
}

#[test]
fn the_serving_generation_crashing_during_a_reload_hands_new_connections_to_the_candidate() {
    let mut h = steered(|_| {});
    h.at(1000).reload();
    assert_eq!(h.at(1050).exited(1, Code(1)), vec![fin(1), steer(&[(2, ALL)])]);
}

#[test]
fn readiness_without_ready_is_notify_or_accept_never_a_timer() {
    let mut h = H::idle(Auto, true);
    h.sup.policy.steer = true;
    let start = h.ev(Event::Start);
    assert_eq!(start, vec![sp(1), steer(&[(1, ALL)]), Action::StartProbe { gen: 1 }]);
    assert_eq!(h.deadline(), Some(30_000), "no 1 s timer");
    assert_eq!(h.tick(1000), vec![]);
    assert_eq!(h.forward(), vec![], "not ready");
    assert_eq!(
        h.at(1500).ev(Event::Ready { gen: 1, by: ReadySource::Accept }),
        vec![Action::StopProbe { gen: 1 }]
    );
    assert_eq!(h.forward(), vec![usr1(1)]);
}

#[test]
fn a_candidate_that_never_accepts_fails_with_what_it_probably_does_instead() {
    let mut h = steered(|p| {
        p.ready = Accept;
        p.nag_every = Duration::from_secs(5);
    });
    assert_eq!(h.at(1000).ask(5), vec![sp(2), Action::StartProbe { gen: 2 }]);
    h.ev(Event::Waiting { gen: 2, why: Waiting::NotAccepted { fd: 3, suspect: None } });
    h.tick(6000);
    assert_eq!(
        h.logged(Level::Info),
        ["generation 2 not ready after 5s (nothing accepted on fd 3 yet)"]
    );
    // The loop looked at its processes: one listens on a port of its own.
    let own = Suspect::OwnPort("127.0.0.1:8090".parse().unwrap());
    h.ev(Event::Waiting { gen: 2, why: Waiting::NotAccepted { fd: 3, suspect: Some(own) } });
    h.tick(11_000);
    assert_eq!(
        h.logged(Level::Info),
        ["generation 2 not ready after 10s (nothing accepted on fd 3 yet; it listens on \
          127.0.0.1:8090 itself, probably instead)"]
    );
    h.tick(31_000);
    let why = "generation 2 was not ready within 30s (nothing accepted on fd 3 yet); it listens \
               on 127.0.0.1:8090 itself, probably instead: if that is the server's port, make it \
               accept on the inherited fd 3 (LISTEN_FDS) instead of binding";
    assert!(h.logged(Level::Warn)[0].contains(why), "{:?}", h.logged(Level::Warn));
    let reported = h.reports.iter().any(
        |a| matches!(a, Action::Report { outcome: Outcome::Failed { why: w, .. }, .. } if w == why),
    );
    assert!(reported, "the reload's reply says it too: {:?}", h.reports);
}

/// Regression: with --fdstore, a stop signalled every generation at once,
/// and what waited in its socket then was left to a start that takes one
/// socket: those clients waited for an answer that never came.
#[test]
fn a_stop_that_hands_over_to_the_next_start_lets_each_generation_finish_first() {
    let mut h = steered(|p| p.park_at_stop = true);
    reload_with(&mut h, Some(250_000), None);
    h.at(1100).ready(2);
    assert_eq!(h.at(2000).shutdown(), vec![watch(1), watch(2)], "nobody signalled yet");
    assert!(
        h.reports
            .iter()
            .any(|a| matches!(a, Action::Systemd { state: Some(SdState::Stopping), .. })),
        "STOPPING=1 parks new connections first: {:?}",
        h.reports
    );
    assert_eq!(h.drained(2), vec![term(2)]);
    assert_eq!(h.exited(2, Code(0)), vec![fin(2)]);
    assert_eq!(h.deadline(), Some(7000), "--drain-wait");
    assert_eq!(h.tick(7000), vec![term(1)]);
    assert_eq!(h.exited(1, Code(0)), vec![fin(1), ex(0)]);
}

#[test]
fn a_stop_that_hands_over_leaves_one_already_emptying_to_finish() {
    let mut h = steered(|p| p.park_at_stop = true);
    h.at(1000).reload();
    h.at(1100).ready(2);
    assert_eq!(h.at(1200).shutdown(), vec![watch(2)], "generation 1 goes on emptying");
    assert_eq!(h.drained(1), vec![term(1)]);
}

// ---- canary ----

#[test]
fn a_canary_shares_new_connections_until_promoted() {
    let mut h = steered(|_| {});
    assert_eq!(reload_with(&mut h, Some(250_000), Some(7)), vec![sp(2)]);
    assert_eq!(h.at(1100).ready(2), vec![steer(&[(1, 750_000), (2, 250_000)])], "nobody stops");
    let canary = |a: &Action| {
        matches!(a, Action::Report { outcome: Outcome::Ready { share: Some(250_000), .. }, .. })
    };
    assert!(h.reports.iter().any(canary), "{:?}", h.reports);
    assert_eq!(h.sup.view(h.now).state, "canary");
    assert_eq!(h.forward(), vec![usr1(1), usr1(2)], "both serve");
    // A reload now would start a third: refused.
    assert_eq!(h.ask(8), vec![]);
    assert!(matches!(&h.reports[..], [Action::Report { outcome: Outcome::Failed { .. }, .. }]));
    assert_eq!(
        h.at(2000).ev(Event::Promote { waiter: Some(9) }),
        vec![steer(&[(2, ALL)]), watch(1)]
    );
    assert_eq!(verdict(&h), vec![Verdict::Promoted { gen: 2, from: 1 }]);
    assert_eq!(h.sup.view(h.now).state, "serving");
}

#[test]
fn a_canary_rolled_back_drains_and_the_previous_one_gets_everything_again() {
    let mut h = steered(|_| {});
    reload_with(&mut h, Some(250_000), None);
    h.at(1100).ready(2);
    assert_eq!(h.ev(Event::Rollback { waiter: Some(9) }), vec![steer(&[(1, ALL)]), watch(2)]);
    assert_eq!(verdict(&h), vec![Verdict::RolledBack { gen: 1, from: 2 }]);
    assert_eq!(h.forward(), vec![usr1(1)]);
}

#[test]
fn a_canary_that_exits_is_rolled_back_at_once() {
    let mut h = steered(|_| {});
    reload_with(&mut h, Some(100_000), None);
    h.at(1100).ready(2);
    assert_eq!(h.exited(2, Killed(11)), vec![fin(2), steer(&[(1, ALL)])]);
    assert_eq!(h.logged(Level::Warn).len(), 1);
    assert_eq!(rolled_back(&h), [(1, 2)], "the event a rollback has");
    assert_eq!(h.sup.view(h.now).state, "serving");
}

#[test]
fn promote_after_promotes_a_canary_still_up() {
    let mut h = steered(|p| p.promote_after = Some(Duration::from_secs(60)));
    reload_with(&mut h, Some(100_000), None);
    h.at(1100).ready(2);
    assert_eq!(h.deadline(), Some(61_100));
    assert_eq!(h.tick(61_100), vec![steer(&[(2, ALL)]), watch(1)]);
}

#[test]
fn canaries_need_steering_and_promote_or_rollback_need_something_to_act_on() {
    let mut h = H::serving(true);
    assert_eq!(reload_with(&mut h, Some(100_000), Some(1)), vec![], "refused");
    let mut h = steered(|_| {});
    assert_eq!(h.ev(Event::Promote { waiter: Some(1) }), vec![]);
    assert_eq!(h.ev(Event::Rollback { waiter: Some(2) }), vec![]);
    let refused = |v: &Verdict| matches!(v, Verdict::Refused { .. });
    assert!(verdict(&h).iter().all(refused), "{:?}", verdict(&h));
}

// ---- kept generations ----

#[test]
fn a_kept_generation_takes_everything_back_at_once_on_rollback() {
    let mut h = steered(|p| p.keep_old = Duration::from_secs(60));
    h.at(1000).reload();
    assert_eq!(h.at(1100).ready(2), vec![steer(&[(2, ALL)])], "kept: no drain, no signal");
    assert_eq!(h.sup.view(h.now).kept_for, Some(Duration::from_secs(60)));
    assert_eq!(
        h.at(2000).ev(Event::Rollback { waiter: Some(3) }),
        vec![steer(&[(1, ALL)]), watch(2)]
    );
    assert_eq!(verdict(&h), vec![Verdict::RolledBack { gen: 1, from: 2 }]);
}

#[test]
fn a_crash_of_the_newer_generation_goes_back_to_the_kept_one() {
    let mut h = steered(|p| p.keep_old = Duration::from_secs(60));
    h.at(1000).reload();
    h.at(1100).ready(2);
    assert_eq!(h.at(1200).exited(2, Code(1)), vec![fin(2), steer(&[(1, ALL)])], "no restart");
    assert_eq!(rolled_back(&h), [(1, 2)]);
    assert_eq!(h.deadline(), None);
}

#[test]
fn the_kept_generation_drains_when_its_time_is_up() {
    let mut h = steered(|p| p.keep_old = Duration::from_secs(60));
    h.at(1000).reload();
    h.at(1100).ready(2);
    assert_eq!(h.deadline(), Some(61_100));
    assert_eq!(h.tick(61_100), vec![watch(1)]);
    assert_eq!(h.ev(Event::Rollback { waiter: Some(1) }), vec![], "nothing kept any more");
}

#[test]
fn a_second_promotion_replaces_the_kept_generation() {
    let mut h = steered(|p| p.keep_old = Duration::from_secs(60));
    h.at(1000).reload();
    h.at(1100).ready(2);
    h.at(2000).reload();
    assert_eq!(h.at(2100).ready(3), vec![steer(&[(3, ALL)]), watch(1)], "1 goes, 2 is kept");
}

// ---- ramp ----

#[test]
fn a_ramp_raises_the_share_in_steps_then_promotes() {
    let mut h = steered(|p| p.ramp = Some(Duration::from_secs(10)));
    h.at(1000).reload();
    assert_eq!(h.at(1000).ready(2), vec![steer(&[(1, ALL), (2, 0)])]);
    assert_eq!(h.deadline(), Some(1500), "20 steps of 500 ms");
    assert_eq!(h.tick(1500), vec![steer(&[(1, 950_000), (2, 50_000)])]);
    assert_eq!(h.tick(6000), vec![steer(&[(1, 500_000), (2, 500_000)])]);
    assert_eq!(h.tick(11_000), vec![steer(&[(2, ALL)]), watch(1)]);
}

/// The actions of generation 2's READY=1 in a reload (a canary with
/// `canary`, `waiter` waiting for it), and the index of the switch to it.
fn ready_in_a_reload(canary: Option<u32>, waiter: Option<Waiter>) -> (Vec<Action>, usize) {
    let mut h = steered(|_| {});
    reload_with(h.at(1000), canary, waiter);
    let out = h.sup.handle(
        h.base + Duration::from_millis(1100),
        Event::Ready { gen: 2, by: ReadySource::Notify },
    );
    let switch = out
        .iter()
        .position(|a| matches!(a, Action::Steer { shares } if shares.iter().any(|s| s.0 == 2)))
        .expect("a switch to generation 2");
    (out, switch)
}

/// Regression: `graceexec reload` was answered before the switch, so a
/// client that connected as soon as it returned (the README's quick start:
/// reload, then curl) could still reach the old generation.
#[test]
fn a_reload_is_answered_only_after_the_switch() {
    for canary in [None, Some(ALL / 4)] {
        let (out, switch) = ready_in_a_reload(canary, Some(7));
        let answer = out
            .iter()
            .position(|a| matches!(a, Action::Report { waiters, .. } if waiters == &[7]))
            .expect("the answer");
        assert!(switch < answer, "answered before the switch ({canary:?}): {out:?}");
    }
}

/// Regression: the reload's READY=1 went to the service manager before the
/// switch, so under Type=notify-reload a client that connected as soon as
/// `systemctl reload` returned could still reach the old generation.
#[test]
fn a_reload_ends_for_the_service_manager_only_after_the_switch() {
    for canary in [None, Some(ALL / 4)] {
        let (out, switch) = ready_in_a_reload(canary, None);
        let ready = out
            .iter()
            .position(|a| matches!(a, Action::Systemd { state: Some(SdState::Ready), .. }))
            .expect("READY=1");
        assert!(switch < ready, "READY=1 before the switch ({canary:?}): {out:?}");
    }
}
