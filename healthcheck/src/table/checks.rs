//! What a check changes: its outcome recorded (one log line per health transition)
//! with its agent's words, a check skipped for live traffic that went well, and, for a
//! backend another fleet member probes, the health it reports.

use super::Slot;
use crate::agent::AgentReply;
use crate::membership::clock_ms;
use crate::outcome::Outcome;
use crate::state::{Health, Tracker, Transition, Verdict};
use std::time::Duration;
use tokio::time::Instant;

impl Slot {
    /// Counts one finished check in the metrics.
    pub fn count_check(&self, outcome: &Outcome, latency: Duration, connections_opened: u64) {
        if connections_opened > 0 {
            self.pool_metrics.connections.inc_by(connections_opened);
        }
        self.pool_metrics.duration.observe(latency.as_secs_f64());
        if let Some(m) = &self.metrics {
            m.record_check(outcome.label());
        }
    }

    /// Applies one check's outcome, and the agent's words it carried (`agent`, for a
    /// pool with agent checks: see `outcome::judge`); logs a transition. Returns the state
    /// after it and whether routing changed.
    pub fn record(
        &self,
        outcome: &Outcome,
        agent: Option<&AgentReply>,
        latency: Duration,
        at: Instant,
    ) -> (Tracker, bool, Option<Transition>) {
        let spec = self.spec();
        let timeout = spec.policy.timeout;
        let verdict = if outcome.is_success() {
            Verdict::Pass
        } else {
            Verdict::Fail
        };
        let mut live = self.live.lock().unwrap();
        live.served_mark = clock_ms();
        live.checks += 1;
        live.last_check = Some(at);
        live.last_latency = Some(latency);
        // As HAProxy: the agent's drain or weight first, then the health it decides.
        // Words judged before a reload turned the agent off (a check in flight, or a
        // shared probe's result taken) are not heard: its state was forgotten then,
        // and nothing would ever replace them.
        let agent = agent.filter(|_| spec.policy.agent);
        let heard = agent.is_some_and(|reply| self.hear_agent(&mut live, reply));
        let describe = || outcome.describe(timeout);
        let transition = live
            .tracker
            .observe(verdict, describe, &spec.policy.thresholds);
        if !outcome.is_success() {
            live.last_error = Some(describe());
        }
        if let Some(t) = &transition {
            live.last_transition = at;
            self.refresh_state_metrics(&mut live);
            if let Some(m) = &self.metrics {
                m.record_transition(t.to.as_str());
            }
            self.log_transition(t, live.ejected_until.is_some());
        } else {
            tracing::debug!(pool = %self.key.0, backend = %self.key.1, result = outcome.label(), ?latency, "health check");
        }
        let tracker = live.tracker.clone();
        let unsuspected = outcome.is_success() && self.clear_suspect_on_check(live);
        let changed = transition.is_some() || unsuspected || heard;
        (tracker, changed, transition)
    }

    /// `skip_while_serving`: true if the check due now may be skipped because live
    /// requests to the backend succeeded since the last check (and none failed), and it
    /// is up and trusted. Counts the skip.
    pub fn skip_check(&self) -> bool {
        let mut live = self.live.lock().unwrap();
        let quiet_success = self.endpoint.served_well_since(live.served_mark);
        live.served_mark = clock_ms();
        let trusted = live.tracker.health == Health::Up
            && live.suspect.is_none()
            && live.ejected_until.is_none();
        if !(quiet_success && trusted) {
            return false;
        }
        live.checks_skipped += 1;
        if let Some(m) = &self.metrics {
            m.record_skip();
        }
        tracing::debug!(pool = %self.key.0, backend = %self.key.1, "health check skipped: live requests succeeded");
        true
    }

    fn log_transition(&self, t: &Transition, ejected: bool) {
        let (pool, backend, reason) = (&*self.key.0, &*self.key.1, t.reason.as_str());
        let (from, to, consecutive) = (t.from.as_str(), t.to.as_str(), t.consecutive);
        // One line per change: up is news, anything else a warning.
        macro_rules! line {
            ($level:ident, $message:literal) => {
                tracing::$level!(
                    pool,
                    backend,
                    from,
                    to,
                    reason,
                    consecutive,
                    ejected,
                    $message
                )
            };
        }
        if t.to == Health::Up {
            line!(info, "backend is up");
        } else {
            line!(warn, "backend is down");
        }
    }
    /// Another fleet member's result for a backend this process does not probe: the
    /// health becomes `health` (one log line and the usual metrics if it changed).
    /// True if it changed.
    pub fn shared_health(&self, health: Health, reason: &str) -> bool {
        let mut live = self.live.lock().unwrap();
        if live.tracker.health == health {
            return false;
        }
        let t = Transition {
            from: live.tracker.health,
            to: health,
            consecutive: 0,
            reason: reason.to_string(),
        };
        live.tracker = Tracker {
            health,
            ..Tracker::default()
        };
        live.last_transition = Instant::now();
        if health != Health::Up {
            live.last_error = Some(reason.to_string());
        }
        self.refresh_state_metrics(&mut live);
        if let Some(m) = &self.metrics {
            m.record_transition(health.as_str());
        }
        let suspect = live.suspect.is_some();
        self.log_transition(&t, live.ejected_until.is_some());
        drop(live);
        if suspect && health == Health::Up {
            // Up again by its owner's word while suspect here: probe it locally.
            self.check_now.notify_one();
        }
        true
    }

    /// A check passed on a backend owned elsewhere: ends a suspicion, touches nothing
    /// else. True if it was suspect.
    pub fn unsuspect(&self) -> bool {
        let live = self.live.lock().unwrap();
        self.clear_suspect_on_check(live)
    }
}
