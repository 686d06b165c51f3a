//! Carrying the supervisor across `graceexec upgrade`.

use super::*;
use crate::supervisor::Carried;

#[test]
fn a_settled_instance_carries_over_with_its_deadlines() {
    let mut h = H::reloading_with_old(); // 1 draining, 2 current, 3 starting
    assert!(h.sup.export(h.now).is_err(), "a reload under way is refused");
    h.at(3500).ready(3); // 2 drains too; 3 serves
    let now = h.now;
    let c = h.sup.export(now).unwrap();
    let json = serde_json::to_string(&c).unwrap();
    let back: Carried = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c);
    let later = now + Duration::from_secs(3600);
    let s = Supervisor::import(h.sup.policy.clone(), back, later);
    let (v, w) = (h.sup.view(now), s.view(later));
    assert_eq!((v.state, v.gens.len(), v.restarts), (w.state, w.gens.len(), w.restarts));
    for (a, b) in v.gens.iter().zip(&w.gens) {
        assert_eq!((a.id, a.role, a.age, a.ready_after), (b.id, b.role, b.age, b.ready_after));
    }
    // Generation 1's SIGKILL was due at 7 s, 3.5 s from the export.
    assert_eq!(s.next_deadline(), Some(later + Duration::from_millis(3500)));
    assert_eq!(s.carried_gens(), vec![(1, false), (2, false), (3, false)]);
}
