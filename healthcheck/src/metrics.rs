//! The checker's Prometheus families (CONTRACT §7), registered once; per-backend
//! handles are created when a backend is added and their series removed with it.

use crate::membership::AdminState;
use prometheus::core::Collector;
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
    backends: BackendFamilies,
    pools: PoolFamilies,
    pub(crate) in_flight: IntGauge,
    pub(crate) lag: Histogram,
    per_backend: bool,
}

/// The families labelled by pool and backend: registered always, with series only
/// when per-backend metrics are on.
#[derive(Clone)]
struct BackendFamilies {
    up: IntGaugeVec,
    state: IntGaugeVec,
    checks: IntCounterVec,
    transitions: IntCounterVec,
    ejections: IntCounterVec,
    suspect: IntCounterVec,
    admin_state: IntGaugeVec,
    skipped: IntCounterVec,
}

/// The families labelled by pool.
#[derive(Clone)]
struct PoolFamilies {
    duration: HistogramVec,
    connections: IntCounterVec,
    backends: IntGaugeVec,
    stall_retries: IntCounterVec,
    held_out_routing: IntGaugeVec,
    held_out_episodes: IntCounterVec,
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
        Ok(CheckerMetrics {
            backends: BackendFamilies::register(registry)?,
            pools: PoolFamilies::register(registry)?,
            in_flight: register(
                registry,
                IntGauge::new(names::IN_FLIGHT, "Health checks in flight")?,
            )?,
            lag: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(names::LAG, "How late checks start against their schedule")
                        .buckets(vec![
                            0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                            0.5, 1.0, 5.0,
                        ]),
                )?,
            )?,
            per_backend,
        })
    }

    pub(crate) fn backend(&self, pool: &str, backend: &str) -> Option<BackendMetrics> {
        if !self.per_backend {
            return None;
        }
        let f = &self.backends;
        let state = STATES.map(|s| f.state.with_label_values(&[pool, backend, s]));
        state[0].set(1);
        Some(BackendMetrics {
            up: f.up.with_label_values(&[pool, backend]),
            state,
            checks: RESULTS.map(|r| f.checks.with_label_values(&[pool, backend, r])),
            transitions: TRANSITION_TARGETS
                .map(|t| f.transitions.with_label_values(&[pool, backend, t])),
            ejections: f.ejections.with_label_values(&[pool, backend]),
            suspect: f.suspect.with_label_values(&[pool, backend]),
            admin: {
                let a = AdminState::ALL.map(|s| {
                    f.admin_state
                        .with_label_values(&[pool, backend, s.as_str()])
                });
                a[0].set(1);
                a
            },
            skipped: f.skipped.with_label_values(&[pool, backend]),
        })
    }

    pub(crate) fn remove_backend(&self, pool: &str, backend: &str) {
        if !self.per_backend {
            return;
        }
        let f = &self.backends;
        let _ = f.up.remove_label_values(&[pool, backend]);
        let _ = f.ejections.remove_label_values(&[pool, backend]);
        let _ = f.suspect.remove_label_values(&[pool, backend]);
        let _ = f.skipped.remove_label_values(&[pool, backend]);
        for s in AdminState::ALL {
            let _ = f
                .admin_state
                .remove_label_values(&[pool, backend, s.as_str()]);
        }
        for s in STATES {
            let _ = f.state.remove_label_values(&[pool, backend, s]);
        }
        for r in RESULTS {
            let _ = f.checks.remove_label_values(&[pool, backend, r]);
        }
        for t in TRANSITION_TARGETS {
            let _ = f.transitions.remove_label_values(&[pool, backend, t]);
        }
    }

    pub(crate) fn pool(&self, pool: &str) -> PoolMetrics {
        let f = &self.pools;
        for s in STATES {
            f.backends.with_label_values(&[pool, s]);
        }
        f.held_out_routing.with_label_values(&[pool]);
        f.held_out_episodes.with_label_values(&[pool]);
        PoolMetrics {
            duration: f.duration.with_label_values(&[pool]),
            connections: f.connections.with_label_values(&[pool]),
            stall_retries: STALL_REASONS.map(|r| f.stall_retries.with_label_values(&[pool, r])),
        }
    }

    pub(crate) fn remove_pool(&self, pool: &str) {
        let f = &self.pools;
        let _ = f.duration.remove_label_values(&[pool]);
        let _ = f.connections.remove_label_values(&[pool]);
        for r in STALL_REASONS {
            let _ = f.stall_retries.remove_label_values(&[pool, r]);
        }
        for s in STATES {
            let _ = f.backends.remove_label_values(&[pool, s]);
        }
        let _ = f.held_out_routing.remove_label_values(&[pool]);
        let _ = f.held_out_episodes.remove_label_values(&[pool]);
    }

    /// The pool starts (`on`) or stops routing to held-out backends.
    pub(crate) fn set_rescue(&self, pool: &str, on: bool) {
        self.pools
            .held_out_routing
            .with_label_values(&[pool])
            .set(on as i64);
        if on {
            self.pools
                .held_out_episodes
                .with_label_values(&[pool])
                .inc();
        }
    }

    pub(crate) fn set_pool_counts(&self, pool: &str, counts: [i64; STATES.len()]) {
        for (s, n) in STATES.iter().zip(counts) {
            self.pools.backends.with_label_values(&[pool, s]).set(n);
        }
    }
}

impl BackendFamilies {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        let pb = &["pool", "backend"];
        let pbs = &["pool", "backend", "state"];
        Ok(BackendFamilies {
            up: gauges(
                r,
                names::BACKEND_UP,
                "1 when the backend receives traffic (up and not ejected)",
                pb,
            )?,
            state: gauges(
                r,
                names::BACKEND_STATE,
                "1 for the backend's current state",
                pbs,
            )?,
            checks: counters(
                r,
                names::CHECKS,
                "Active health checks by result",
                &["pool", "backend", "result"],
            )?,
            transitions: counters(
                r,
                names::TRANSITIONS,
                "Backend state changes by target state",
                &["pool", "backend", "to"],
            )?,
            ejections: counters(r, names::EJECTIONS, "Passive ejections", pb)?,
            suspect: counters(
                r,
                names::SUSPECT,
                "Times the backend became suspect: requests stuck far beyond the pool's usual answer time",
                pb,
            )?,
            admin_state: gauges(
                r,
                names::ADMIN_STATE,
                "1 for the backend's admin state (POST /admin/backend)",
                pbs,
            )?,
            skipped: counters(
                r,
                names::SKIPPED,
                "Active checks skipped because live requests succeeded (skip_while_serving)",
                pb,
            )?,
        })
    }
}

impl PoolFamilies {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(PoolFamilies {
            duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(names::CHECK_DURATION, "Duration of active health checks")
                        .buckets(vec![
                            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                            2.5, 5.0, 10.0,
                        ]),
                    &["pool"],
                )?,
            )?,
            connections: counters(
                r,
                names::CONNECTIONS_OPENED,
                "Connections opened by health checks",
                &["pool"],
            )?,
            backends: gauges(
                r,
                names::POOL_BACKENDS,
                "Backends of a pool by state",
                &["pool", "state"],
            )?,
            stall_retries: counters(
                r,
                names::STALL_RETRIES,
                "Requests cut while waiting on a stuck backend and retried on another, by reason",
                &["pool", "reason"],
            )?,
            held_out_routing: gauges(
                r,
                names::HELD_OUT_ROUTING,
                "1 while the pool routes to ejected or suspect backends that pass their checks, because no other backend is routable",
                &["pool"],
            )?,
            held_out_episodes: counters(
                r,
                names::HELD_OUT_EPISODES,
                "Times the pool began routing to ejected or suspect backends because no other backend was routable",
                &["pool"],
            )?,
        })
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

/// Registers `family` and hands it back (the proxy's metrics use these too).
pub fn register<F: Collector + Clone + 'static>(
    registry: &Registry,
    family: F,
) -> prometheus::Result<F> {
    registry.register(Box::new(family.clone()))?;
    Ok(family)
}

/// An integer counter family by `labels`, registered.
pub fn counters(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

/// An integer gauge family by `labels`, registered.
pub fn gauges(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
}
