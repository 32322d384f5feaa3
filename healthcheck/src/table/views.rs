//! What the table shows: the membership the proxy routes from, and every backend's
//! detail for the admin status.

use super::{BackendTable, Slot};
use crate::membership::{Member, Membership};
use crate::metrics::{CheckerMetrics, STATES};
use crate::status::BackendStatus;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

impl Slot {
    fn member(&self) -> (usize, Member) {
        let (spec, order) = self.spec.lock().unwrap().clone();
        let live = self.live.lock().unwrap();
        let member = Member {
            endpoint: self.endpoint.clone(),
            weight: live.agent.weight(spec.weight),
            state: live.member_state(),
            recent_failures: live
                .tracker
                .consecutive_failures
                .saturating_add(live.ejections)
                .saturating_add(self.endpoint.passive_failures()),
        };
        drop(live);
        (order, member)
    }

    fn status(&self, now: Instant) -> (usize, BackendStatus) {
        let (spec, order) = self.spec.lock().unwrap().clone();
        let live = self.live.lock().unwrap().clone();
        let since = |t: Instant| now.saturating_duration_since(t);
        let status = BackendStatus {
            pool: spec.pool.clone(),
            address: spec.address.clone(),
            weight: spec.weight,
            health: live.tracker.health,
            ejected: live.ejected_until.is_some(),
            suspect: live.suspect.is_some(),
            admin: live.admin,
            agent: spec.policy.agent.then_some(live.agent),
            checks_skipped: live.checks_skipped,
            consecutive_successes: live.tracker.consecutive_successes,
            consecutive_failures: live.tracker.consecutive_failures,
            checks: live.checks,
            last_check_ago: live.last_check.map(since),
            last_latency: live.last_latency,
            next_check_in: live.next_check.map(|t| t.saturating_duration_since(now)),
            last_error: live.last_error,
            last_transition_ago: since(live.last_transition),
            ejected_for: live.ejected_until.map(|t| t.saturating_duration_since(now)),
            in_flight_requests: self.endpoint.in_flight(),
            shared_with: Vec::new(),
            probe_id: 0,
        };
        (order, status)
    }
}

impl BackendTable {
    /// Every pool's members in configuration order; sets the per-pool state counts.
    pub fn membership(&self, metrics: &CheckerMetrics) -> Membership {
        let mut pools: BTreeMap<Arc<str>, Vec<(usize, Member)>> = BTreeMap::new();
        for s in self.slots.iter() {
            pools.entry(s.key.0.clone()).or_default().push(s.member());
        }
        let mut membership = Membership::default();
        let mut rescuing = self.rescuing.lock().unwrap();
        rescuing.retain(|p| pools.contains_key(p));
        for (pool, mut members) in pools {
            members.sort_by_key(|(order, _)| *order);
            let mut members: Vec<Member> = members.into_iter().map(|(_, m)| m).collect();
            let rescued = crate::membership::route_held_out(&mut members);
            if rescued != rescuing.contains(&pool) {
                Self::log_rescue(&pool, &members, rescued);
                metrics.set_rescue(&pool, rescued);
                if rescued {
                    rescuing.insert(pool.clone());
                } else {
                    rescuing.remove(&pool);
                }
            }
            let mut counts = [0i64; STATES.len()];
            for m in &members {
                let i = STATES
                    .iter()
                    .position(|s| *s == m.state.label())
                    .unwrap_or(0);
                counts[i] += 1;
            }
            metrics.set_pool_counts(&pool, counts);
            membership.pools.insert(pool, members);
        }
        membership
    }

    /// One line when a pool starts routing to held-out backends, one when it stops.
    fn log_rescue(pool: &str, members: &[Member], rescued: bool) {
        if rescued {
            let backends: Vec<&str> = members
                .iter()
                .filter(|m| m.state.rescued)
                .map(|m| &*m.endpoint.address)
                .collect();
            tracing::warn!(
                pool,
                backends = backends.join(",").as_str(),
                "pool routing to ejected backends: no other backend is routable"
            );
        } else {
            tracing::info!(
                pool,
                "pool no longer routing to ejected backends: another backend is routable, or none passes its checks"
            );
        }
    }

    /// Every backend's live detail, by pool then configuration order.
    pub fn status(&self) -> Vec<BackendStatus> {
        let now = Instant::now();
        let mut out: Vec<(Arc<str>, usize, BackendStatus)> = self
            .slots
            .iter()
            .map(|s| {
                let (order, mut status) = s.status(now);
                status.probe_id = s.probe_id.load(Ordering::Relaxed);
                (s.key.0.clone(), order, status)
            })
            .collect();
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        // Which other pools share each backend's probe.
        let mut by_probe: std::collections::HashMap<u64, Vec<String>> = Default::default();
        for s in self.slots.iter() {
            let id = s.probe_id.load(Ordering::Relaxed);
            if id != 0 {
                by_probe.entry(id).or_default().push(s.key.0.to_string());
            }
        }
        out.into_iter()
            .map(|(_, _, mut s)| {
                if let Some(pools) = by_probe.get(&s.probe_id) {
                    s.shared_with = pools.iter().filter(|p| **p != s.pool).cloned().collect();
                    s.shared_with.sort();
                }
                s
            })
            .collect()
    }
}
