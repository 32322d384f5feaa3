//! Stuck requests (issue #11): a backend whose requests have waited far longer than its
//! pool usually takes to answer, while the pool's other backends answer, becomes
//! *suspect*: it gets no new requests and is checked at once. Suspicion ends when it
//! answers again; if its requests time out instead, passive ejection takes over.
//!
//! The age of a backend's oldest request is bounded below, without a lock on the request
//! path, by the time since its last sign of life while requests are in flight
//! ([`Endpoint::stalled_for`](crate::Endpoint::stalled_for)). The pool's usual answer
//! time is the median of its backends' decaying averages.

use super::{BackendTable, Slot};
use crate::membership::{clock_ms, Cut};
use crate::passive::PassivePolicy;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

impl Slot {
    pub(crate) fn is_suspect(&self) -> bool {
        self.live.lock().unwrap().suspect.is_some()
    }

    /// Suspect from now, resending at most `resends` of its waiting requests; logged and
    /// counted once. Returns how many were resent.
    fn make_suspect(&self, waited: Duration, usual: Option<Duration>, resends: usize) -> usize {
        let mut live = self.live.lock().unwrap();
        if live.suspect.is_some() {
            return 0;
        }
        live.suspect = Some((Instant::now(), self.endpoint.answered_ms()));
        self.refresh_state_metrics(&mut live);
        if let Some(m) = &self.metrics {
            m.record_suspect();
            m.record_transition("suspect");
        }
        let usual = usual.map_or("no answer yet".to_string(), |u| format!("{u:?}"));
        let reason = format!(
            "requests waiting {waited:?} without an answer (the pool usually answers in {usual})"
        );
        live.last_error = Some(reason.clone());
        let resent = self.endpoint.cut_waiting(resends);
        tracing::warn!(
            pool = &*self.key.0,
            backend = &*self.key.1,
            from = live.tracker.health.as_str(),
            to = "suspect",
            reason = reason.as_str(),
            resent,
            "backend is suspect"
        );
        resent
    }

    /// Ends suspicion once the backend has answered live traffic since it began; true
    /// if it did.
    fn clear_suspect_if_answered(&self, enabled: bool) -> bool {
        let live = self.live.lock().unwrap();
        let Some((since, mark)) = live.suspect else {
            return false;
        };
        if enabled && self.endpoint.answered_ms() <= mark {
            return false;
        }
        let reason = if enabled {
            format!("answered again after {:?}", since.elapsed())
        } else {
            "stall_detection turned off".to_string()
        };
        self.end_suspicion(live, &reason);
        true
    }

    /// Ends suspicion because an active check passed; true if it was suspect.
    pub(super) fn clear_suspect_on_check(
        &self,
        live: std::sync::MutexGuard<'_, super::Live>,
    ) -> bool {
        let Some((since, _)) = live.suspect else {
            return false;
        };
        self.end_suspicion(live, &format!("a check passed after {:?}", since.elapsed()));
        true
    }

    fn end_suspicion(&self, mut live: std::sync::MutexGuard<'_, super::Live>, reason: &str) {
        live.suspect = None;
        self.refresh_state_metrics(&mut live);
        tracing::info!(
            pool = &*self.key.0,
            backend = &*self.key.1,
            from = "suspect",
            to = live.tracker.health.as_str(),
            reason,
            "backend is no longer suspect"
        );
    }

    fn routable_now(&self) -> bool {
        let live = self.live.lock().unwrap();
        live.member_state().routable()
    }
}

/// No threshold is below this (`passive.stall_min` is validated against it).
pub const MIN_STALL: Duration = Duration::from_millis(50);

impl BackendTable {
    /// One look at every pool. Returns whether routing changed, and the backends that
    /// became suspect (to be checked at once).
    pub fn watch_stalls(&self) -> (bool, Vec<Arc<Slot>>) {
        let now = clock_ms();
        let pools = self.busy_pools(now);
        if pools.is_empty() {
            return (false, Vec::new());
        }
        let mut changed = false;
        let mut suspects = Vec::new();
        let mut budgets = self.resends.lock().unwrap();
        for (name, slots) in &pools {
            let started: u64 = slots.iter().map(|s| s.endpoint.started()).sum();
            // A pool first looked at now is credited with the requests it had so far.
            let budget = budgets
                .entry(name.clone())
                .or_insert((crate::passive::RESEND_START, 0));
            budget.0 = PassivePolicy::refill_resends(budget.0, started.saturating_sub(budget.1));
            budget.1 = started;
            let spec = slots[0].spec();
            let policy = &spec.policy.passive;
            for s in slots {
                changed |= s.clear_suspect_if_answered(policy.stall_detection);
            }
            if policy.stall_detection {
                let look = Look::new(name, slots, policy, now);
                changed |= look.suspect_stuck(self, &mut budget.0, &mut suspects);
                look.resend_slow(&mut budget.0);
            }
        }
        (changed, suspects)
    }

    /// The pools worth a close look, with their backends. Most looks find none: only a
    /// pool with a backend waiting longer than any threshold (stall_min is at least
    /// MIN_STALL), or with a suspect, is one.
    fn busy_pools(&self, now: u64) -> BTreeMap<Arc<str>, Vec<Arc<Slot>>> {
        let waiting = |s: &Slot| {
            s.endpoint.stalled_for(now).is_some_and(|w| w >= MIN_STALL)
                || s.endpoint
                    .oldest_resendable(now)
                    .is_some_and(|w| w >= MIN_STALL)
        };
        let mut busy: Vec<Arc<str>> = Vec::new();
        for s in self.slots.iter() {
            if (waiting(&s) || s.is_suspect()) && !busy.contains(&s.key.0) {
                busy.push(s.key.0.clone());
            }
        }
        let mut pools: BTreeMap<Arc<str>, Vec<Arc<Slot>>> = BTreeMap::new();
        if busy.is_empty() {
            return pools;
        }
        for s in self.slots.iter().filter(|s| busy.contains(&s.key.0)) {
            pools
                .entry(s.key.0.clone())
                .or_default()
                .push(s.value().clone());
        }
        pools
    }
}

/// A close look at one pool with stall detection on.
struct Look<'a> {
    name: &'a str,
    slots: &'a [Arc<Slot>],
    policy: &'a PassivePolicy,
    now: u64,
    /// The pool's usual answer time, once known.
    usual: Option<Duration>,
    /// How long requests wait before their backend counts as stuck.
    threshold: Duration,
    /// Per backend: routable and not stuck, so it answers.
    answers: Vec<bool>,
    answering: usize,
}

impl<'a> Look<'a> {
    fn new(name: &'a str, slots: &'a [Arc<Slot>], policy: &'a PassivePolicy, now: u64) -> Self {
        let usual = crate::median_latency(slots.iter().map(|s| &*s.endpoint));
        let threshold = policy.stall_threshold(usual);
        let stuck = |s: &Slot| s.endpoint.stalled_for(now).is_some_and(|w| w > threshold);
        let answers: Vec<bool> = slots
            .iter()
            .map(|s| s.routable_now() && !stuck(s))
            .collect();
        let answering = answers.iter().filter(|a| **a).count();
        Look {
            name,
            slots,
            policy,
            now,
            usual,
            threshold,
            answers,
            answering,
        }
    }

    /// Makes suspects of the backends stuck while someone else answers (a pool that is
    /// slow everywhere is not one stuck backend), within `max_ejected_percent`; each
    /// resends what it may of its waiting requests, from `budget`. True if any became
    /// suspect.
    fn suspect_stuck(
        &self,
        table: &BackendTable,
        budget: &mut f64,
        suspects: &mut Vec<Arc<Slot>>,
    ) -> bool {
        let mut changed = false;
        for s in self.slots {
            let Some(waited) = s
                .endpoint
                .stalled_for(self.now)
                .filter(|w| *w > self.threshold)
            else {
                continue;
            };
            if !s.routable_now() || self.answering == 0 {
                continue;
            }
            let _one_at_a_time = table.ejection_lock.lock().unwrap();
            let out = self
                .slots
                .iter()
                .filter(|o| o.key != s.key && o.is_unavailable())
                .count();
            if !self.policy.may_eject(out, self.slots.len()) {
                continue;
            }
            let resent = s.make_suspect(waited, self.usual, *budget as usize);
            s.pool_metrics
                .stall_retries(Cut::Stuck)
                .inc_by(resent as u64);
            *budget -= resent as f64;
            changed = true;
            suspects.push(s.clone());
        }
        changed
    }

    /// One request waiting too long on a backend that answers others (a lost request, a
    /// wedged worker): sent once to another backend, from `budget`. Only where the
    /// pool's usual time is known, and only first attempts: a request slow everywhere is
    /// tried twice at most, and then waits.
    fn resend_slow(&self, budget: &mut f64) {
        if self.usual.is_none() {
            return;
        }
        for (s, answers) in self.slots.iter().zip(&self.answers) {
            if *budget < 1.0 {
                break;
            }
            // Another backend answers (the suspects just made were stuck: not counted).
            if self.answering - *answers as usize == 0 {
                continue;
            }
            let resent = s
                .endpoint
                .cut_slow(self.now, self.threshold, *budget as usize);
            if resent > 0 {
                s.pool_metrics
                    .stall_retries(Cut::Slow)
                    .inc_by(resent as u64);
                *budget -= resent as f64;
                tracing::debug!(
                    pool = self.name,
                    backend = &*s.key.1,
                    resent,
                    "slow requests sent to another backend"
                );
            }
        }
    }
}
