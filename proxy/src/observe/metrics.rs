//! The proxy's Prometheus families (CONTRACT §7). Per-pool and per-backend handles are
//! resolved when a routing snapshot is built, so the request path only increments.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use std::time::Duration;
use vigil_healthcheck::metrics::{counters, gauges, register};
use vigil_healthcheck::Member;

pub mod names {
    pub const REQUESTS: &str = "vigil_requests_total";
    pub const UPSTREAM_REQUESTS: &str = "vigil_upstream_requests_total";
    pub const REQUEST_DURATION: &str = "vigil_request_duration_seconds";
    pub const RETRIES: &str = "vigil_upstream_retries_total";
    pub const NO_HEALTHY: &str = "vigil_no_healthy_backend_total";
    pub const PANIC: &str = "vigil_panic_routed_requests_total";
    pub const FALLBACK: &str = "vigil_upstream_fallback_attempts_total";
    pub const RELOADS: &str = "vigil_config_reloads_total";
    pub const LAST_RELOAD: &str = "vigil_config_last_reload_success_timestamp_seconds";
    pub const ACCESS_LOG_DROPPED: &str = "vigil_access_log_dropped_total";
    pub const ADMIN_UNAUTHORIZED: &str = "vigil_admin_unauthorized_total";
    pub const ACCEPT_ERRORS: &str = "vigil_accept_errors_total";
    pub const UPSTREAM_CONNECTIONS: &str = "vigil_upstream_connections_opened_total";
    pub const CLIENT_CONNECTIONS: &str = "vigil_client_connections";
    pub const CLIENT_REFUSED: &str = "vigil_client_connections_refused_total";
    pub const TLS_HANDSHAKES: &str = "vigil_tls_handshakes_total";
    pub const CLIENT_TIMEOUTS: &str = "vigil_client_timeouts_total";
    pub const TLS_EXPIRY: &str = "vigil_tls_certificate_expiry_timestamp_seconds";
    pub const POOL_LATENCY: &str = "vigil_pool_latency_estimate_seconds";
    pub const QUEUE_LENGTH: &str = "vigil_pool_queue_length";
    pub const QUEUE_WAIT: &str = "vigil_pool_queue_wait_seconds";
    pub const REFUSED: &str = "vigil_requests_refused_total";
    pub const REPORTED_UTILIZATION: &str = "vigil_backend_reported_utilization";
    pub const EFFECTIVE_WEIGHT: &str = "vigil_backend_effective_weight";
    pub const MALFORMED_REPORTS: &str = "vigil_load_reports_malformed_total";
}

/// Seconds since the epoch, as the `*_timestamp_seconds` gauges and the admin API
/// give times.
pub fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The `pool` label of requests answered before they were routed (no route, a refused
/// head, a request without Host): pool names never contain `-` alone.
pub const UNROUTED: &str = "-";

/// The `kind` of a fallback attempt: to a held-out backend, or failing open.
pub const FALLBACK_KINDS: [&str; 2] = ["held_out", "fail_open"];

pub const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// `reason` of `vigil_requests_refused_total`, in [`QueueHandles::refused`]'s order
/// (`Refused as usize`).
/// `retry_budget` is a retry not sent (`budget.rs`), the request ending without it.
pub const REFUSED_REASONS: [&str; 3] = ["queue_full", "queue_timeout", "retry_budget"];
/// Index of `retry_budget` in [`REFUSED_REASONS`] (the queue's are `Refused as usize`).
pub const REFUSED_RETRY_BUDGET: usize = 2;

/// Index into [`CLASSES`]; informational and odd codes count with their neighbours.
pub fn class_index(status: u16) -> usize {
    match status {
        0..=299 => 0,
        300..=399 => 1,
        400..=499 => 2,
        _ => 3,
    }
}

pub struct ProxyMetrics {
    pools: PoolFamilies,
    queues: QueueFamilies,
    clients: ClientFamilies,
    pub reloads: IntCounterVec,
    pub last_reload_success: Gauge,
    pub access_log_dropped: IntCounter,
    pub admin_unauthorized: IntCounter,
    pub accept_errors: IntCounterVec,
    pub tls_expiry: IntGaugeVec,
    per_backend: bool,
}

/// The families labelled by pool (and backend): what requests got and what it took.
struct PoolFamilies {
    requests: IntCounterVec,
    upstream: IntCounterVec,
    duration: HistogramVec,
    retries: IntCounterVec,
    connections: IntCounterVec,
    no_healthy: IntCounterVec,
    panic: IntCounterVec,
    fallback: IntCounterVec,
    latency: GaugeVec,
    utilization: GaugeVec,
    weight: GaugeVec,
    malformed: IntCounterVec,
}

/// A pool's queue (`max_requests`, `queue`): its length, the waits, the refusals.
struct QueueFamilies {
    length: IntGaugeVec,
    wait: HistogramVec,
    refused: IntCounterVec,
}

/// Handles of one pool's queue.
pub struct QueueHandles {
    pub length: IntGauge,
    pub wait: Histogram,
    /// By [`REFUSED_REASONS`].
    pub refused: [IntCounter; 3],
}

/// The families labelled by listener: client connections, timeouts and handshakes.
struct ClientFamilies {
    connections: IntGaugeVec,
    refused: IntCounterVec,
    timeouts: IntCounterVec,
    handshakes: IntCounterVec,
}

/// Handles of one pool, resolved off the request path.
pub struct PoolHandles {
    pub requests: [IntCounter; 4],
    pub duration: Histogram,
    pub retries: IntCounter,
    pub connections_opened: IntCounter,
    pub no_healthy: IntCounter,
    pub panic: IntCounter,
    /// Attempts outside the candidates, by [`FALLBACK_KINDS`].
    pub fallback: [IntCounter; 2],
    /// Per member, in member order; empty when per-backend metrics are off.
    pub upstream: Vec<[IntCounter; 4]>,
    pub queue: QueueHandles,
    /// Load reports refused as malformed (`balance: load_report`).
    pub malformed_reports: IntCounter,
}

impl ProxyMetrics {
    pub fn new(registry: &Registry, per_backend: bool) -> prometheus::Result<Self> {
        let r = registry;
        let m = ProxyMetrics {
            pools: PoolFamilies::register(r)?,
            queues: QueueFamilies::register(r)?,
            clients: ClientFamilies::register(r)?,
            reloads: counters(
                r,
                names::RELOADS,
                "Configuration reloads by result",
                &["result"],
            )?,
            last_reload_success: register(
                r,
                Gauge::new(
                    names::LAST_RELOAD,
                    "Unix time of the last successful configuration load",
                )?,
            )?,
            access_log_dropped: register(
                r,
                IntCounter::new(
                    names::ACCESS_LOG_DROPPED,
                    "Access log lines dropped because the writer fell behind",
                )?,
            )?,
            admin_unauthorized: register(
                r,
                IntCounter::new(
                    names::ADMIN_UNAUTHORIZED,
                    "Admin POSTs refused for a missing or wrong token",
                )?,
            )?,
            accept_errors: counters(
                r,
                names::ACCEPT_ERRORS,
                "Failed accept() calls, by listener and reason",
                &["listener", "reason"],
            )?,
            tls_expiry: gauges(
                r,
                names::TLS_EXPIRY,
                "Unix time at which each served certificate expires",
                &["listener", "name"],
            )?,
            per_backend,
        };
        for result in ["success", "failure"] {
            m.reloads.with_label_values(&[result]);
        }
        Ok(m)
    }

    /// Counts a client cut for being too slow (`kind`: `write` or `body`).
    pub fn client_timeout(&self, listener: &str, kind: &str) {
        self.clients
            .timeouts
            .with_label_values(&[listener, kind])
            .inc();
    }

    /// A listener's open-connections gauge and refusals counter.
    pub fn listener(&self, address: &str) -> (IntGauge, IntCounter) {
        (
            self.clients.connections.with_label_values(&[address]),
            self.clients.refused.with_label_values(&[address]),
        )
    }

    /// Sets each pool's usual answer time from its members (at scrape time); pools with
    /// no answer yet have no series.
    pub fn set_pool_latency<'a>(&self, medians: impl IntoIterator<Item = (&'a str, Duration)>) {
        self.pools.latency.reset();
        for (pool, median) in medians {
            self.pools
                .latency
                .with_label_values(&[pool])
                .set(median.as_secs_f64());
        }
    }

    /// Sets each backend's reported utilization (when it reports) and the weight it is
    /// balanced by (at scrape time): `(pool, backend, utilization, weight)`.
    pub fn set_backend_load<'a>(
        &self,
        rows: impl IntoIterator<Item = (&'a str, &'a str, Option<f64>, f64)>,
    ) {
        self.pools.utilization.reset();
        self.pools.weight.reset();
        if !self.per_backend {
            return;
        }
        for (pool, backend, utilization, weight) in rows {
            if let Some(u) = utilization {
                self.pools
                    .utilization
                    .with_label_values(&[pool, backend])
                    .set(u);
            }
            self.pools
                .weight
                .with_label_values(&[pool, backend])
                .set(weight);
        }
    }

    /// A TLS listener's handshake counters: success, failure, timeout.
    pub fn handshakes(&self, address: &str) -> [IntCounter; 3] {
        ["success", "failure", "timeout"]
            .map(|r| self.clients.handshakes.with_label_values(&[address, r]))
    }

    /// `vigil_requests_total{pool="-"}` by class, present from start.
    pub fn unrouted(&self) -> [IntCounter; 4] {
        CLASSES.map(|c| self.pools.requests.with_label_values(&[UNROUTED, c]))
    }

    pub fn pool(&self, pool: &str, members: &[Member]) -> PoolHandles {
        PoolHandles {
            requests: CLASSES.map(|c| self.pools.requests.with_label_values(&[pool, c])),
            duration: self.pools.duration.with_label_values(&[pool]),
            retries: self.pools.retries.with_label_values(&[pool]),
            connections_opened: self.pools.connections.with_label_values(&[pool]),
            no_healthy: self.pools.no_healthy.with_label_values(&[pool]),
            panic: self.pools.panic.with_label_values(&[pool]),
            fallback: FALLBACK_KINDS.map(|k| self.pools.fallback.with_label_values(&[pool, k])),
            queue: QueueHandles {
                length: self.queues.length.with_label_values(&[pool]),
                wait: self.queues.wait.with_label_values(&[pool]),
                refused: REFUSED_REASONS.map(|r| self.queues.refused.with_label_values(&[pool, r])),
            },
            malformed_reports: self.pools.malformed.with_label_values(&[pool]),
            upstream: if self.per_backend {
                members
                    .iter()
                    .map(|m| {
                        CLASSES.map(|c| {
                            self.pools
                                .upstream
                                .with_label_values(&[pool, &m.endpoint.address, c])
                        })
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    pub fn remove_pool(&self, pool: &str) {
        for c in CLASSES {
            let _ = self.pools.requests.remove_label_values(&[pool, c]);
        }
        let _ = self.pools.duration.remove_label_values(&[pool]);
        let _ = self.pools.retries.remove_label_values(&[pool]);
        let _ = self.pools.connections.remove_label_values(&[pool]);
        let _ = self.pools.no_healthy.remove_label_values(&[pool]);
        let _ = self.pools.panic.remove_label_values(&[pool]);
        let _ = self.pools.malformed.remove_label_values(&[pool]);
        let _ = self.queues.length.remove_label_values(&[pool]);
        let _ = self.queues.wait.remove_label_values(&[pool]);
        for r in REFUSED_REASONS {
            let _ = self.queues.refused.remove_label_values(&[pool, r]);
        }
        for k in FALLBACK_KINDS {
            let _ = self.pools.fallback.remove_label_values(&[pool, k]);
        }
    }

    pub fn remove_backend(&self, pool: &str, backend: &str) {
        for c in CLASSES {
            let _ = self.pools.upstream.remove_label_values(&[pool, backend, c]);
        }
    }

    pub fn reload_succeeded(&self) {
        self.reloads.with_label_values(&["success"]).inc();
        self.mark_loaded();
    }

    /// A configuration was loaded (at start or by reload).
    pub fn mark_loaded(&self) {
        self.last_reload_success
            .set(unix_seconds(std::time::SystemTime::now()));
    }

    pub fn reload_failed(&self) {
        self.reloads.with_label_values(&["failure"]).inc();
    }
}

impl PoolFamilies {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(PoolFamilies {
            requests: counters(
                r,
                names::REQUESTS,
                "Requests answered, by pool and status class",
                &["pool", "status_class"],
            )?,
            upstream: counters(
                r,
                names::UPSTREAM_REQUESTS,
                "Responses received from backends",
                &["pool", "backend", "status_class"],
            )?,
            duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        names::REQUEST_DURATION,
                        "Time from request to the end of the response",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                        2.5, 5.0, 10.0, 30.0,
                    ]),
                    &["pool"],
                )?,
            )?,
            retries: counters(
                r,
                names::RETRIES,
                "Requests retried on another backend",
                &["pool"],
            )?,
            connections: counters(
                r,
                names::UPSTREAM_CONNECTIONS,
                "Connections opened to backends for requests (not reused from the keep-alive pool)",
                &["pool"],
            )?,
            no_healthy: counters(
                r,
                names::NO_HEALTHY,
                "Requests answered 503 for want of an alive backend",
                &["pool"],
            )?,
            panic: counters(
                r,
                names::PANIC,
                "Requests routed to all backends because the pool was below panic_threshold",
                &["pool"],
            )?,
            fallback: counters(
                r,
                names::FALLBACK,
                "Attempts sent to a backend that is not routable because no routable one was left to try: held out (ejected or suspect, passing its checks) or, failing open, down",
                &["pool", "kind"],
            )?,
            latency: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        names::POOL_LATENCY,
                        "What the pool usually takes to answer (median of its backends' decaying averages); stuck requests are judged against it",
                    ),
                    &["pool"],
                )?,
            )?,
            utilization: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        names::REPORTED_UTILIZATION,
                        "The utilization a backend last reported in its answers (ORCA; pools with balance: load_report)",
                    ),
                    &["pool", "backend"],
                )?,
            )?,
            weight: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        names::EFFECTIVE_WEIGHT,
                        "The weight a backend is balanced by now: its configured weight (scaled by its agent), or the one its load reports earn",
                    ),
                    &["pool", "backend"],
                )?,
            )?,
            malformed: counters(
                r,
                names::MALFORMED_REPORTS,
                "Load reports in backends' answers that could not be read, ignored",
                &["pool"],
            )?,
        })
    }
}

impl QueueFamilies {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(QueueFamilies {
            length: gauges(
                r,
                names::QUEUE_LENGTH,
                "Requests waiting in the pool's queue for a backend below max_requests",
                &["pool"],
            )?,
            wait: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        names::QUEUE_WAIT,
                        "Time requests waited in the pool's queue (those that got a backend and those that timed out)",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                        2.5, 5.0, 10.0,
                    ]),
                    &["pool"],
                )?,
            )?,
            refused: counters(
                r,
                names::REFUSED,
                "Requests answered 503 without a backend: the pool's queue was full, or the wait in it timed out",
                &["pool", "reason"],
            )?,
        })
    }
}

impl ClientFamilies {
    /// Also registers the peer-caused TLS and HTTP/2 counters the logging layer keeps.
    fn register(r: &Registry) -> prometheus::Result<Self> {
        register(r, crate::observe::logging::TLS_WARNINGS.clone())?;
        register(r, crate::observe::logging::H2_HANDSHAKE_ERRORS.clone())?;
        Ok(ClientFamilies {
            connections: gauges(
                r,
                names::CLIENT_CONNECTIONS,
                "Client connections open, by listener",
                &["listener"],
            )?,
            refused: counters(
                r,
                names::CLIENT_REFUSED,
                "Client connections closed at once because the listener had max_connections open",
                &["listener"],
            )?,
            timeouts: counters(
                r,
                names::CLIENT_TIMEOUTS,
                "Clients cut for being too slow, by listener and kind (write: taking a write of the answer; body: sending the request body)",
                &["listener", "kind"],
            )?,
            handshakes: counters(
                r,
                names::TLS_HANDSHAKES,
                "TLS handshakes with clients, by listener and result (success, failure, timeout)",
                &["listener", "result"],
            )?,
        })
    }
}
