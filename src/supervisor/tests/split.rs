//! The cells of split.rs's table that steer.rs does not cover, and the
//! phases where a canary, a promote or a rollback is refused.

use super::steer::*;
use super::*;

/// A canary of 25% on generation 2, generation 1 serving the rest.
fn split() -> H {
    let mut h = steered(|_| {});
    reload_with(&mut h, Some(250_000), None);
    h.at(1100).ready(2);
    h
}

/// Generation 2 serving, generation 1 kept for a minute since 1.1 s.
fn kept() -> H {
    let mut h = steered(|p| p.keep_old = Duration::from_secs(60));
    h.at(1000).reload();
    h.at(1100).ready(2);
    h
}

#[test]
fn split_old_one_exits_the_new_one_gets_everything() {
    let mut h = split();
    assert_eq!(h.at(1500).exited(1, Code(1)), vec![fin(1), steer(&[(2, ALL)])]);
    assert_eq!(h.logged(Level::Warn).len(), 1);
    assert_eq!(rolled_back(&h), [], "not a rollback");
    assert_eq!(h.sup.view(h.now).state, "serving");
    assert_eq!(h.forward(), vec![usr1(2)]);
    assert_eq!(h.deadline(), None, "no restart: generation 2 serves");
}

#[test]
fn split_tick_of_a_canary_without_promote_after_changes_nothing() {
    let mut h = split();
    assert_eq!(h.deadline(), None);
    assert_eq!(h.tick(3_600_000), vec![]);
    assert_eq!(h.sup.view(h.now).state, "canary");
}

#[test]
fn split_shutdown_stops_both_and_exits_with_the_old_ones_status() {
    let mut h = split();
    assert_eq!(h.at(2000).shutdown(), vec![term(1), term(2)]);
    assert_eq!(h.exited(2, Code(0)), vec![fin(2)]);
    assert_eq!(h.exited(1, Code(3)), vec![fin(1), ex(3)]);
}

#[test]
fn split_promote_with_a_kept_one_replaces_the_kept_one() {
    let mut h = kept();
    reload_with(&mut h, Some(250_000), None);
    assert_eq!(h.at(2100).ready(3), vec![steer(&[(2, 750_000), (3, 250_000)])]);
    assert_eq!(
        h.at(3000).ev(Event::Promote { waiter: None }),
        vec![steer(&[(3, ALL)]), watch(1)],
        "1 goes, 2 is kept"
    );
    assert_eq!(h.sup.view(h.now).kept_for, Some(Duration::from_secs(60)));
}

#[test]
fn kept_promote_is_refused() {
    let mut h = kept();
    assert_eq!(h.ev(Event::Promote { waiter: Some(4) }), vec![]);
    assert!(matches!(&verdict(&h)[..], [Verdict::Refused { .. }]), "{:?}", verdict(&h));
    assert_eq!(h.at(2000).ev(Event::Rollback { waiter: None }), vec![steer(&[(1, ALL)]), watch(2)]);
}

#[test]
fn kept_one_exits_forgotten() {
    let mut h = kept();
    assert_eq!(h.at(2000).exited(1, Code(0)), vec![fin(1)]);
    assert_eq!(h.logged(Level::Warn).len(), 1);
    assert_eq!(h.sup.view(h.now).kept_for, None);
    assert_eq!(h.deadline(), None, "no keep-old timer left");
    assert_eq!(h.ev(Event::Rollback { waiter: Some(5) }), vec![]);
    assert!(matches!(&verdict(&h)[..], [Verdict::Refused { why }] if why.contains("gone")));
    assert_eq!(h.forward(), vec![usr1(2)]);
}

#[test]
fn kept_shutdown_stops_the_kept_one_too() {
    let mut h = kept();
    assert_eq!(h.at(2000).shutdown(), vec![term(2), term(1)]);
    assert_eq!(h.exited(1, Code(0)), vec![fin(1)]);
    assert_eq!(h.exited(2, Code(0)), vec![fin(2), ex(0)]);
}

#[test]
fn promote_and_rollback_are_refused_in_every_phase_without_a_split_or_a_kept_one() {
    let mut booting = H::idle(Notify, true);
    booting.sup.policy.steer = true;
    booting.ev(Event::Start);
    let mut reloading = steered(|_| {});
    reloading.at(1000).reload();
    let mut recovering = steered(|_| {});
    recovering.at(1000).exited(1, Code(1));
    let mut stopping = steered(|_| {});
    stopping.shutdown();
    let phases = [booting, reloading, recovering, stopping];
    for (name, mut h) in ["booting", "reloading", "recovering", "stopping"].into_iter().zip(phases)
    {
        let before = h.deadline();
        assert_eq!(h.ev(Event::Promote { waiter: Some(1) }), vec![], "{name}");
        assert_eq!(h.ev(Event::Rollback { waiter: Some(2) }), vec![], "{name}");
        let refused = |v: &Verdict| matches!(v, Verdict::Refused { .. });
        assert!(verdict(&h).iter().all(refused), "{name}: {:?}", verdict(&h));
        assert_eq!(h.deadline(), before, "{name}: nothing else changed");
    }
}

/// Regression: new connections went to the reload's candidate, not yet
/// ready, while the kept generation, ready, sat idle and kept.
#[test]
fn a_crash_of_the_serving_generation_during_a_reload_with_a_kept_one_goes_back_to_it() {
    let mut h = kept();
    assert_eq!(h.at(2000).reload(), vec![sp(3)]);
    let a = h.at(2100).exited(2, Code(1));
    assert_eq!(a, vec![fin(2), steer(&[(1, ALL)])], "the kept one serves at once");
    assert_eq!(h.sup.view(h.now).kept_for, None);
    assert_eq!(h.forward(), vec![usr1(1)]);
    // The reload goes on, and replaces it (kept in turn) once ready.
    assert_eq!(h.at(2200).ready(3), vec![steer(&[(3, ALL)])]);
    assert_eq!(h.sup.view(h.now).kept_for, Some(Duration::from_secs(60)));
    // A failed candidate instead leaves it serving.
    let mut h = kept();
    h.at(2000).reload();
    h.at(2100).exited(2, Code(1));
    assert_eq!(h.at(2200).exited(3, Code(1)), vec![fin(3)]);
    assert_eq!(h.forward(), vec![usr1(1)]);
    assert_eq!(h.sup.view(h.now).state, "serving");
}

#[test]
fn a_canary_reload_is_refused_unless_serving() {
    let refused = |h: &H| {
        let mut why = vec![];
        for a in &h.reports {
            if let Action::Report { outcome: Outcome::Failed { why: w, .. }, .. } = a {
                why.push(w.clone());
            }
        }
        why
    };
    let mut reloading = steered(|_| {});
    reloading.at(1000).reload();
    assert_eq!(reload_with(&mut reloading, Some(250_000), Some(1)), vec![]);
    assert_eq!(refused(&reloading), ["a canary can start only while serving, not while reloading"]);
    assert_eq!(reloading.at(1100).ready(2), vec![steer(&[(2, ALL)]), watch(1)], "not merged");
    let mut split = split();
    assert_eq!(reload_with(&mut split, Some(250_000), Some(2)), vec![]);
    assert_eq!(refused(&split), ["a canary is running: promote or roll back first"]);
}
