//! The running proxy's shared state: the routing snapshot (one `ArcSwap`), the
//! checker that keeps it true, metrics, and the configuration in force.

use crate::access_log::AccessLog;
use crate::edge::EdgeLimits;
use crate::metrics::ProxyMetrics;
use crate::routing::RoutingTable;
use anyhow::Context;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;
use vigil_conf::{Config, PoolConfig};
use vigil_healthcheck::{Checker, CheckerOptions, Membership, Publish};

/// Builds the next routing snapshot whenever pools (reload) or membership (checker)
/// change, off the request path, and stores it.
pub struct TablePublisher {
    pub table: Arc<ArcSwap<RoutingTable>>,
    state: Mutex<(Vec<Arc<PoolConfig>>, Arc<Membership>)>,
    metrics: Arc<ProxyMetrics>,
}

impl TablePublisher {
    fn rebuild(&self, state: &(Vec<Arc<PoolConfig>>, Arc<Membership>)) {
        let table = RoutingTable::build(&state.0, &state.1, &self.metrics);
        self.table.store(Arc::new(table));
    }

    /// New pool settings (reload): rebuild with the membership we have.
    pub fn set_pools(&self, pools: Vec<Arc<PoolConfig>>) {
        let mut state = self.state.lock().unwrap();
        state.0 = pools;
        self.rebuild(&state);
    }
}

impl Publish for TablePublisher {
    fn publish(&self, membership: Arc<Membership>) {
        let mut state = self.state.lock().unwrap();
        state.1 = membership;
        self.rebuild(&state);
    }
}

pub struct App {
    pub publisher: Arc<TablePublisher>,
    pub checker: Checker,
    pub metrics: Arc<ProxyMetrics>,
    pub registry: prometheus::Registry,
    pub config: Mutex<Arc<Config>>,
    /// Limits on client requests, read by Pingora per request head and by the proxy.
    pub edge: Arc<EdgeLimits>,
    pub access_log: Arc<AccessLog>,
    /// The file reloads read; None for the demo's embedded config.
    pub config_path: Option<PathBuf>,
    pub started: Instant,
    /// Requests between `request_filter` and `logging`; drain waits for zero.
    pub in_flight: AtomicUsize,
    pub draining: AtomicBool,
    pub(crate) reload_lock: Mutex<()>,
}

impl App {
    /// Wires a validated config to a running checker on `runtime`.
    pub fn start(
        config: Config,
        config_path: Option<PathBuf>,
        runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<Arc<App>> {
        let registry = prometheus::Registry::new();
        let metrics = Arc::new(ProxyMetrics::new(&registry, config.metrics.per_backend)?);
        let publisher = Arc::new(TablePublisher {
            table: Arc::new(ArcSwap::from_pointee(RoutingTable::empty())),
            state: Mutex::new((Vec::new(), Arc::default())),
            metrics: metrics.clone(),
        });
        let checker = Checker::new(
            runtime,
            CheckerOptions {
                max_concurrent_checks: config.checker.max_concurrent_checks,
                per_backend_metrics: config.metrics.per_backend,
            },
            publisher.clone(),
            &registry,
        )?;
        let access_log = Arc::new(
            AccessLog::start(&config.access_log, metrics.access_log_dropped.clone())
                .context("cannot open the access log")?,
        );
        let edge = Arc::new(EdgeLimits::new(
            &config.limits,
            metrics.unrouted(),
            access_log.clone(),
        ));
        publisher.set_pools(config.pools.iter().cloned().map(Arc::new).collect());
        checker.apply(crate::convert::backend_specs(&config));
        metrics.mark_loaded();
        Ok(Arc::new(App {
            publisher,
            checker,
            metrics,
            registry,
            config: Mutex::new(Arc::new(config)),
            edge,
            access_log,
            config_path,
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            reload_lock: Mutex::new(()),
        }))
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.lock().unwrap().clone()
    }

    pub fn table(&self) -> Arc<RoutingTable> {
        self.publisher.table.load_full()
    }
}
