//! Passive ejection: a backend the request path reports failing is taken out of
//! routing for a while (doubling, decaying), within the pool's `max_ejected_percent`.

use super::{BackendTable, Slot};
use std::time::Duration;
use tokio::time::Instant;

impl Slot {
    fn is_ejected(&self) -> bool {
        self.live.lock().unwrap().ejected_until.is_some()
    }

    /// Down by its checks, ejected or suspect (what `max_ejected_percent` counts).
    pub(crate) fn is_unavailable(&self) -> bool {
        self.live.lock().unwrap().unavailable()
    }

    /// Ejects for the policy's (doubling, decaying) duration unless already ejected.
    /// The caller holds the table's ejection lock and has checked the pool's share.
    fn eject(&self, failures: u32, now: Instant) {
        let spec = self.spec();
        let policy = &spec.policy.passive;
        let mut live = self.live.lock().unwrap();
        if live.ejected_until.is_some() {
            return;
        }
        let clean_for = live
            .last_ejection_end
            .map(|t| now.duration_since(t))
            .unwrap_or(Duration::MAX);
        let previous = policy.decayed(live.ejections, clean_for);
        let duration = policy.ejection_duration(previous);
        live.ejections = previous + 1;
        live.ejected_until = Some(now + duration);
        live.last_error = Some(format!("{failures} failures in a row on live traffic"));
        self.refresh_state_metrics(&mut live);
        if let Some(m) = &self.metrics {
            m.record_ejection();
            m.record_transition("ejected");
        }
        let reason =
            format!("{failures} failures in a row on live traffic; ejected for {duration:?}");
        tracing::warn!(
            pool = &*self.key.0,
            backend = &*self.key.1,
            from = live.tracker.health.as_str(),
            to = "ejected",
            reason = reason.as_str(),
            consecutive = failures,
            "backend ejected"
        );
    }

    /// Ends an ejection whose time is over; true if it did.
    pub fn end_ejection(&self, now: Instant) -> bool {
        let mut live = self.live.lock().unwrap();
        let Some(until) = live.ejected_until else {
            return false;
        };
        if now < until {
            return false;
        }
        live.ejected_until = None;
        live.last_ejection_end = Some(now);
        self.endpoint.clear_passive_failures();
        self.refresh_state_metrics(&mut live);
        tracing::info!(
            pool = &*self.key.0,
            backend = &*self.key.1,
            from = "ejected",
            to = live.tracker.health.as_str(),
            reason = "ejection time ended",
            consecutive = 0u32,
            "backend ejection ended"
        );
        true
    }
}

impl BackendTable {
    /// The request path reported the policy's failures in a row: ejects `slot` unless
    /// that would pass the pool's `max_ejected_percent`, which counts every backend the
    /// pool has lost (down, ejected or suspect), so that passive ejection never takes
    /// the last capacity of a pool already losing backends. True if it was ejected.
    pub fn consider_ejection(&self, slot: &Slot) -> bool {
        let spec = slot.spec();
        let policy = &spec.policy.passive;
        let failures = slot.endpoint.passive_failures();
        if !policy.enabled() || failures < policy.consecutive_failures {
            return false;
        }
        let _one_at_a_time = self.ejection_lock.lock().unwrap();
        slot.endpoint.clear_passive_failures();
        if slot.is_ejected() {
            return false;
        }
        let (mut out, mut size) = (0usize, 0usize);
        for s in self.slots.iter().filter(|s| s.key.0 == slot.key.0) {
            size += 1;
            if s.key != slot.key && s.is_unavailable() {
                out += 1;
            }
        }
        if !policy.may_eject(out, size) {
            tracing::debug!(pool = %slot.key.0, backend = %slot.key.1, "not ejected: max_ejected_percent reached");
            return false;
        }
        slot.eject(failures, Instant::now());
        true
    }
}
