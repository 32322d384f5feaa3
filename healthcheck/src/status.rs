//! A read-only view of every backend's live detail, for the admin API.

use crate::checker::{Checker, Entry};
use crate::state::Health;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct BackendStatus {
    pub pool: String,
    pub address: String,
    pub weight: u32,
    pub health: Health,
    pub ejected: bool,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    pub checks: u64,
    pub last_check_ago: Option<Duration>,
    pub last_latency: Option<Duration>,
    pub next_check_in: Option<Duration>,
    pub last_error: Option<String>,
    pub last_transition_ago: Duration,
    pub ejected_for: Option<Duration>,
    pub in_flight_requests: u64,
}

impl BackendStatus {
    /// `unknown|up|down|ejected`, ejection first.
    pub fn state_label(&self) -> &'static str {
        if self.ejected {
            "ejected"
        } else {
            self.health.as_str()
        }
    }
}

impl Checker {
    /// Every backend, by pool then configuration order.
    pub fn status(&self) -> Vec<BackendStatus> {
        let now = Instant::now();
        let mut out: Vec<(String, usize, BackendStatus)> = self
            .inner
            .entries
            .iter()
            .map(|e| {
                let entry: &Entry = e.value();
                let (spec, order) = entry.spec.lock().unwrap().clone();
                let d = entry.detail.lock().unwrap().clone();
                let since = |t: Instant| now.saturating_duration_since(t);
                let status = BackendStatus {
                    pool: spec.pool.clone(),
                    address: spec.address.clone(),
                    weight: spec.weight,
                    health: d.tracker.health,
                    ejected: d.ejected_until.is_some(),
                    consecutive_successes: d.tracker.consecutive_successes,
                    consecutive_failures: d.tracker.consecutive_failures,
                    checks: d.checks,
                    last_check_ago: d.last_check.map(since),
                    last_latency: d.last_latency,
                    next_check_in: d.next_check.map(|t| t.saturating_duration_since(now)),
                    last_error: d.last_error.clone(),
                    last_transition_ago: since(d.last_transition),
                    ejected_for: d.ejected_until.map(|t| t.saturating_duration_since(now)),
                    in_flight_requests: entry.backend.in_flight(),
                };
                (spec.pool.clone(), order, status)
            })
            .collect();
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out.into_iter().map(|(_, _, s)| s).collect()
    }
}
