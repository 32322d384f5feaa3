//! The checker's Prometheus families (CONTRACT §7), registered once; per-backend
//! handles are created when a backend is added and their series removed with it.

use crate::membership::AdminState;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Names of the checker's families.
pub mod names {
    pub const BACKEND_UP: &str = "vigil_backend_up";
    pub const BACKEND_STATE: &str = "vigil_backend_state";
    pub const CHECKS: &str = "vigil_health_checks_total";
    pub const CHECK_DURATION: &str = "vigil_health_check_duration_seconds";
    pub const CONNECTIONS_OPENED: &str = "vigil_health_check_connections_opened_total";
    pub const IN_FLIGHT: &str = "vigil_health_checks_in_flight";
    pub const LAG: &str = "vigil_health_check_lag_seconds";
    pub const TRANSITIONS: &str = "vigil_backend_transitions_total";
    pub const POOL_BACKENDS: &str = "vigil_pool_backends";
    pub const EJECTIONS: &str = "vigil_passive_ejections_total";
    pub const SUSPECT: &str = "vigil_backend_suspect_total";
    pub const STALL_RETRIES: &str = "vigil_upstream_stall_retries_total";
    pub const ADMIN_STATE: &str = "vigil_backend_admin_state";
    pub const SKIPPED: &str = "vigil_health_checks_skipped_total";
    pub const HELD_OUT_ROUTING: &str = "vigil_pool_routing_held_out";
    pub const HELD_OUT_EPISODES: &str = "vigil_pool_routing_held_out_total";
}

pub const STATES: [&str; 5] = ["unknown", "up", "down", "ejected", "suspect"];
pub const RESULTS: [&str; 4] = ["success", "failure", "timeout", "connect_error"];
const TRANSITION_TARGETS: [&str; 4] = ["up", "down", "ejected", "suspect"];

#[derive(Clone)]
pub struct CheckerMetrics {
    backend_up: IntGaugeVec,
    backend_state: IntGaugeVec,
    checks: IntCounterVec,
    duration: HistogramVec,
    connections: IntCounterVec,
    pub(crate) in_flight: IntGauge,
    pub(crate) lag: Histogram,
    transitions: IntCounterVec,
    pool_backends: IntGaugeVec,
    ejections: IntCounterVec,
    suspect: IntCounterVec,
    stall_retries: IntCounterVec,
    admin_state: IntGaugeVec,
    skipped: IntCounterVec,
    held_out_routing: IntGaugeVec,
    held_out_episodes: IntCounterVec,
    per_backend: bool,
}

/// Series of one backend (absent when per-backend metrics are off).
pub(crate) struct BackendMetrics {
    up: IntGauge,
    state: [IntGauge; STATES.len()],
    checks: [IntCounter; 4],
    transitions: [IntCounter; TRANSITION_TARGETS.len()],
    ejections: IntCounter,
    suspect: IntCounter,
    admin: [IntGauge; 3],
    skipped: IntCounter,
}

/// Series of one pool.
#[derive(Clone)]
pub(crate) struct PoolMetrics {
    pub duration: Histogram,
    pub connections: IntCounter,
    /// Requests cut from a stuck backend and retried elsewhere, by [`STALL_REASONS`].
    stall_retries: [IntCounter; 2],
}

impl PoolMetrics {
    /// Requests cut (for `why`) and retried elsewhere.
    pub fn stall_retries(&self, why: crate::Cut) -> &IntCounter {
        match why {
            crate::Cut::Stuck => &self.stall_retries[0],
            crate::Cut::Slow => &self.stall_retries[1],
        }
    }
}

/// Why a waiting request was sent to another backend: its backend became suspect, or it
/// alone waited too long.
pub const STALL_REASONS: [&str; 2] = ["suspect", "slow"];

impl CheckerMetrics {
    pub fn new(registry: &Registry, per_backend: bool) -> prometheus::Result<Self> {
        let pb = &["pool", "backend"];
        let m = CheckerMetrics {
            backend_up: IntGaugeVec::new(
                Opts::new(
                    names::BACKEND_UP,
                    "1 when the backend receives traffic (up and not ejected)",
                ),
                pb,
            )?,
            backend_state: IntGaugeVec::new(
                Opts::new(names::BACKEND_STATE, "1 for the backend's current state"),
                &["pool", "backend", "state"],
            )?,
            checks: IntCounterVec::new(
                Opts::new(names::CHECKS, "Active health checks by result"),
                &["pool", "backend", "result"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(names::CHECK_DURATION, "Duration of active health checks")
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ]),
                &["pool"],
            )?,
            connections: IntCounterVec::new(
                Opts::new(
                    names::CONNECTIONS_OPENED,
                    "Connections opened by health checks",
                ),
                &["pool"],
            )?,
            in_flight: IntGauge::new(names::IN_FLIGHT, "Health checks in flight")?,
            lag: Histogram::with_opts(
                HistogramOpts::new(names::LAG, "How late checks start against their schedule")
                    .buckets(vec![
                        0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                        1.0, 5.0,
                    ]),
            )?,
            transitions: IntCounterVec::new(
                Opts::new(names::TRANSITIONS, "Backend state changes by target state"),
                &["pool", "backend", "to"],
            )?,
            pool_backends: IntGaugeVec::new(
                Opts::new(names::POOL_BACKENDS, "Backends of a pool by state"),
                &["pool", "state"],
            )?,
            ejections: IntCounterVec::new(Opts::new(names::EJECTIONS, "Passive ejections"), pb)?,
            suspect: IntCounterVec::new(
                Opts::new(
                    names::SUSPECT,
                    "Times the backend became suspect: requests stuck far beyond the pool's usual answer time",
                ),
                pb,
            )?,
            stall_retries: IntCounterVec::new(
                Opts::new(
                    names::STALL_RETRIES,
                    "Requests cut while waiting on a stuck backend and retried on another, by reason",
                ),
                &["pool", "reason"],
            )?,
            admin_state: IntGaugeVec::new(
                Opts::new(
                    names::ADMIN_STATE,
                    "1 for the backend's admin state (POST /admin/backend)",
                ),
                &["pool", "backend", "state"],
            )?,
            skipped: IntCounterVec::new(
                Opts::new(
                    names::SKIPPED,
                    "Active checks skipped because live requests succeeded (skip_while_serving)",
                ),
                pb,
            )?,
            held_out_routing: IntGaugeVec::new(
                Opts::new(
                    names::HELD_OUT_ROUTING,
                    "1 while the pool routes to ejected or suspect backends that pass their checks, because no other backend is routable",
                ),
                &["pool"],
            )?,
            held_out_episodes: IntCounterVec::new(
                Opts::new(
                    names::HELD_OUT_EPISODES,
                    "Times the pool began routing to ejected or suspect backends because no other backend was routable",
                ),
                &["pool"],
            )?,
            per_backend,
        };
        registry.register(Box::new(m.backend_up.clone()))?;
        registry.register(Box::new(m.backend_state.clone()))?;
        registry.register(Box::new(m.checks.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.lag.clone()))?;
        registry.register(Box::new(m.transitions.clone()))?;
        registry.register(Box::new(m.pool_backends.clone()))?;
        registry.register(Box::new(m.ejections.clone()))?;
        registry.register(Box::new(m.suspect.clone()))?;
        registry.register(Box::new(m.stall_retries.clone()))?;
        registry.register(Box::new(m.admin_state.clone()))?;
        registry.register(Box::new(m.skipped.clone()))?;
        registry.register(Box::new(m.held_out_routing.clone()))?;
        registry.register(Box::new(m.held_out_episodes.clone()))?;
        Ok(m)
    }

    pub(crate) fn backend(&self, pool: &str, backend: &str) -> Option<BackendMetrics> {
        if !self.per_backend {
            return None;
        }
        let state = STATES.map(|s| self.backend_state.with_label_values(&[pool, backend, s]));
        state[0].set(1);
        Some(BackendMetrics {
            up: self.backend_up.with_label_values(&[pool, backend]),
            state,
            checks: RESULTS.map(|r| self.checks.with_label_values(&[pool, backend, r])),
            transitions: TRANSITION_TARGETS
                .map(|t| self.transitions.with_label_values(&[pool, backend, t])),
            ejections: self.ejections.with_label_values(&[pool, backend]),
            suspect: self.suspect.with_label_values(&[pool, backend]),
            admin: {
                let a = AdminState::ALL.map(|s| {
                    self.admin_state
                        .with_label_values(&[pool, backend, s.as_str()])
                });
                a[0].set(1);
                a
            },
            skipped: self.skipped.with_label_values(&[pool, backend]),
        })
    }

    pub(crate) fn remove_backend(&self, pool: &str, backend: &str) {
        if !self.per_backend {
            return;
        }
        let _ = self.backend_up.remove_label_values(&[pool, backend]);
        let _ = self.ejections.remove_label_values(&[pool, backend]);
        let _ = self.suspect.remove_label_values(&[pool, backend]);
        let _ = self.skipped.remove_label_values(&[pool, backend]);
        for s in AdminState::ALL {
            let _ = self
                .admin_state
                .remove_label_values(&[pool, backend, s.as_str()]);
        }
        for s in STATES {
            let _ = self.backend_state.remove_label_values(&[pool, backend, s]);
        }
        for r in RESULTS {
            let _ = self.checks.remove_label_values(&[pool, backend, r]);
        }
        for t in TRANSITION_TARGETS {
            let _ = self.transitions.remove_label_values(&[pool, backend, t]);
        }
    }

    pub(crate) fn pool(&self, pool: &str) -> PoolMetrics {
        for s in STATES {
            self.pool_backends.with_label_values(&[pool, s]);
        }
        self.held_out_routing.with_label_values(&[pool]);
        self.held_out_episodes.with_label_values(&[pool]);
        PoolMetrics {
            duration: self.duration.with_label_values(&[pool]),
            connections: self.connections.with_label_values(&[pool]),
            stall_retries: STALL_REASONS.map(|r| self.stall_retries.with_label_values(&[pool, r])),
        }
    }

    pub(crate) fn remove_pool(&self, pool: &str) {
        let _ = self.duration.remove_label_values(&[pool]);
        let _ = self.connections.remove_label_values(&[pool]);
        for r in STALL_REASONS {
            let _ = self.stall_retries.remove_label_values(&[pool, r]);
        }
        for s in STATES {
            let _ = self.pool_backends.remove_label_values(&[pool, s]);
        }
        let _ = self.held_out_routing.remove_label_values(&[pool]);
        let _ = self.held_out_episodes.remove_label_values(&[pool]);
    }

    /// The pool starts (`on`) or stops routing to held-out backends.
    pub(crate) fn set_rescue(&self, pool: &str, on: bool) {
        self.held_out_routing
            .with_label_values(&[pool])
            .set(on as i64);
        if on {
            self.held_out_episodes.with_label_values(&[pool]).inc();
        }
    }

    pub(crate) fn set_pool_counts(&self, pool: &str, counts: [i64; STATES.len()]) {
        for (s, n) in STATES.iter().zip(counts) {
            self.pool_backends.with_label_values(&[pool, s]).set(n);
        }
    }
}

impl BackendMetrics {
    pub(crate) fn record_check(&self, result_label: &str) {
        if let Some(i) = RESULTS.iter().position(|r| *r == result_label) {
            self.checks[i].inc();
        }
    }

    /// `state` is one of [`STATES`]; `routable` feeds `vigil_backend_up`.
    pub(crate) fn set_state(&self, state: &str, routable: bool) {
        for (g, s) in self.state.iter().zip(STATES) {
            g.set((s == state) as i64);
        }
        self.up.set(routable as i64);
    }

    pub(crate) fn record_transition(&self, to: &str) {
        if let Some(i) = TRANSITION_TARGETS.iter().position(|t| *t == to) {
            self.transitions[i].inc();
        }
    }

    pub(crate) fn record_ejection(&self) {
        self.ejections.inc();
    }

    pub(crate) fn record_suspect(&self) {
        self.suspect.inc();
    }

    pub(crate) fn set_admin(&self, state: AdminState) {
        for (g, s) in self.admin.iter().zip(AdminState::ALL) {
            g.set((s == state) as i64);
        }
    }

    pub(crate) fn record_skip(&self) {
        self.skipped.inc();
    }
}
