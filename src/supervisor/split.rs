//! Two generations at once, with steered sockets: a canary (`reload
//! --canary PCT`) or a ramp (`--ramp`) shares new connections between the
//! previous generation and the new one until it is promoted or rolled
//! back; and after a promotion, the previous one kept alive, idle, for
//! `--keep-old`, so that a rollback needs no start.
//!
//! | phase \ event | promote | rollback | new one exits | old one exits | Tick |
//! |---|---|---|---|---|---|
//! | Split | new gets all; old kept or drains → Serving(new) | old gets all; new drains → Serving(old) | old gets all → Serving(old) | new gets all → Serving(new) | ramp step; `--promote-after` |
//! | Serving (or Reloading) with a kept one | refused | kept gets all; current drains → Serving(kept) | (current exits:) kept gets all → Serving(kept) (or Reloading(kept): the reload goes on) | (kept exits:) forgotten | kept past `--keep-old` drains |

use std::time::{Duration, Instant};

use super::phase::{Current, Kept, Phase, Split, SplitMode};
use super::{human, Action, GenId, Note, SdStatus, Status, Supervisor, Verdict, Waiter, MILLION};

/// A ramp moves in at most this many steps...
const RAMP_STEPS: u32 = 20;
/// ...and at most this often.
const RAMP_MIN_STEP: Duration = Duration::from_millis(100);

impl Supervisor {
    /// `new` is ready and `old` serves: split, or replace.
    pub(super) fn hand_over(
        &mut self,
        now: Instant,
        old: Current,
        new: Current,
        canary: Option<u32>,
    ) -> Phase {
        let mode = match (canary, self.policy.ramp) {
            (Some(_), _) => {
                let promote_at = self.policy.promote_after.map(|d| now + d);
                SplitMode::Canary { promote_at }
            }
            (None, Some(over)) => SplitMode::Ramp { from: now, over },
            (None, None) => {
                self.steer(&[(new.id, MILLION)]);
                self.replace(now, old);
                return Phase::Serving(new);
            }
        };
        let share = canary.unwrap_or(0);
        self.steer(&[(old.id, MILLION - share), (new.id, share)]);
        // The service manager hears of the split from the caller, with the
        // reload's READY=1.
        Phase::Split(Split { old, new, share, mode })
    }

    pub(super) fn steer(&mut self, shares: &[(GenId, u32)]) {
        if self.policy.steer {
            self.out.push(Action::Steer { shares: shares.to_vec() });
        }
    }

    /// `old` no longer gets new connections: kept for `--keep-old`, else
    /// retired (drained, then stopped). A generation kept before goes.
    pub(super) fn replace(&mut self, now: Instant, old: Current) {
        if let Some(k) = self.kept.take() {
            self.retire(now, k.gen.id, k.gen.spawned_at, Some(k.gen.ready_after));
        }
        if self.policy.keep_old.is_zero() || !self.policy.steer {
            return self.retire(now, old.id, old.spawned_at, Some(old.ready_after));
        }
        let keep = human(self.policy.keep_old);
        self.info(format!(
            "generation {} kept for {keep}: `graceexec rollback` returns to it",
            old.id
        ));
        self.kept = Some(Kept { gen: old, until: now + self.policy.keep_old });
    }

    pub(super) fn promote(&mut self, now: Instant, s: Split, waiter: Option<Waiter>) -> Phase {
        let (gen, from) = (s.new.id, s.old.id);
        self.info(format!("generation {gen} promoted: it gets every new connection"));
        self.steer(&[(gen, MILLION)]);
        self.replace(now, s.old);
        self.answer(waiter, Verdict::Promoted { gen, from });
        self.serving_status(gen);
        Phase::Serving(s.new)
    }

    /// `graceexec rollback`: to the split's old generation, or to the kept
    /// one; anything else is refused.
    pub(super) fn rollback(&mut self, now: Instant, p: Phase, waiter: Option<Waiter>) -> Phase {
        match p {
            Phase::Split(s) => self.back_to(now, s.old, s.new, waiter),
            Phase::Serving(cur) => match self.kept.take() {
                Some(k) => self.back_to(now, k.gen, cur, waiter),
                None => {
                    let why = match self.policy.keep_old.is_zero() {
                        true => "nothing to roll back to: no canary, and no generation kept (see --keep-old)",
                        false => "nothing to roll back to: no canary, and the kept generation is gone",
                    };
                    self.answer(waiter, Verdict::Refused { why: why.into() });
                    Phase::Serving(cur)
                }
            },
            p => {
                let why = format!("nothing to roll back to while {}", p.name());
                self.answer(waiter, Verdict::Refused { why });
                p
            }
        }
    }

    fn back_to(&mut self, now: Instant, to: Current, from: Current, w: Option<Waiter>) -> Phase {
        let (gen, from_id) = (to.id, from.id);
        self.warn(format!("rolled back to generation {gen}; generation {from_id} stops"));
        self.steer(&[(gen, MILLION)]);
        self.retire(now, from.id, from.spawned_at, Some(from.ready_after));
        self.answer(w, Verdict::RolledBack { gen, from: from_id });
        self.serving_status(gen);
        Phase::Serving(to)
    }

    /// One of a split's two generations exited: the other gets all. A
    /// canary (or a ramp's new one) that exits is rolled back, with the
    /// event a `rollback` has.
    pub(super) fn split_exited(&mut self, s: Split, gen: GenId, status: Status) -> Phase {
        let new_gone = gen == s.new.id;
        let (gone, other) = if new_gone { (s.new, s.old) } else { (s.old, s.new) };
        let (g, o) = (gone.id, other.id);
        self.warn(format!(
            "generation {g} exited with {status}; generation {o} gets every new connection"
        ));
        if new_gone {
            self.note(Note::RolledBack { gen: o, from: g });
        }
        self.steer(&[(o, MILLION)]);
        self.serving_status(o);
        Phase::Serving(other)
    }

    /// The current generation exited while one is kept: back to it; the
    /// generation that serves now.
    pub(super) fn crashed_to_kept(&mut self, cur: GenId, status: Status) -> Option<Current> {
        let k = self.kept.take()?;
        let to = k.gen.id;
        self.warn(format!(
            "generation {cur} exited unexpectedly with {status}; back to the kept generation {to}"
        ));
        self.note(Note::RolledBack { gen: to, from: cur });
        self.steer(&[(to, MILLION)]);
        self.serving_status(to);
        Some(k.gen)
    }

    /// A ramp's next step, `--promote-after`, the kept one's end.
    pub(super) fn split_tick(&mut self, now: Instant, mut s: Split) -> Phase {
        match s.mode {
            SplitMode::Canary { promote_at: Some(at) } if now >= at => {
                let after = self.policy.promote_after.map(human);
                self.info(format!(
                    "canary generation {} up for {}",
                    s.new.id,
                    after.map_or_else(String::new, |a| a.to_string())
                ));
                self.promote(now, s, None)
            }
            SplitMode::Ramp { from, over } if now >= from + over => self.promote(now, s, None),
            SplitMode::Ramp { from, over } if now >= self.ramp_next(&s, from, over) => {
                let done = now.saturating_duration_since(from).as_secs_f64() / over.as_secs_f64();
                s.share = ((done * f64::from(MILLION)) as u32).min(MILLION);
                self.steer(&[(s.old.id, MILLION - s.share), (s.new.id, s.share)]);
                let status = SdStatus::Split { old: s.old.id, new: s.new.id, share: s.share };
                self.out.push(Action::Systemd { state: None, status });
                Phase::Split(s)
            }
            _ => Phase::Split(s),
        }
    }

    /// When the ramp of `s` takes its next step.
    fn ramp_next(&self, s: &Split, from: Instant, over: Duration) -> Instant {
        let step = (over / RAMP_STEPS).max(RAMP_MIN_STEP);
        let taken =
            (s.share as u128 * over.as_nanos() / MILLION as u128 / step.as_nanos().max(1)) as u32;
        from + step * (taken + 1)
    }

    /// The next deadline of a split, for `next_deadline`.
    pub(super) fn split_deadline(&self, s: &Split) -> Option<Instant> {
        match s.mode {
            SplitMode::Canary { promote_at } => promote_at,
            SplitMode::Ramp { from, over } => Some(self.ramp_next(s, from, over).min(from + over)),
        }
    }

    pub(super) fn kept_tick(&mut self, now: Instant) {
        if self.kept.as_ref().is_some_and(|k| now >= k.until) {
            let k = self.kept.take().expect("checked");
            let id = k.gen.id;
            self.info(format!(
                "generation {id} was kept for {}; it stops now",
                human(self.policy.keep_old)
            ));
            self.retire(now, id, k.gen.spawned_at, Some(k.gen.ready_after));
        }
    }

    pub(super) fn answer(&mut self, waiter: Option<Waiter>, verdict: Verdict) {
        match verdict {
            Verdict::Promoted { gen, from } => self.note(Note::Promoted { gen, from }),
            Verdict::RolledBack { gen, from } => self.note(Note::RolledBack { gen, from }),
            Verdict::Refused { .. } => {}
        }
        if let Some(waiter) = waiter {
            self.out.push(Action::Answer { waiter, verdict });
        }
    }

    fn serving_status(&mut self, gen: GenId) {
        let status = SdStatus::Serving { gen, failed: None };
        self.out.push(Action::Systemd { state: None, status });
    }
}
