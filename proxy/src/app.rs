//! The running proxy's shared state: the one owner of what is in force (configuration
//! and membership, and the routing snapshot built from them), the checker that keeps
//! membership true, metrics, and the request counters drain waits on.
//!
//! Start and reload reach a running state the same way: [`App::apply`] (in `apply.rs`)
//! onto an empty one.

use crate::access_log::AccessLog;
use crate::edge::EdgeLimits;
use crate::error::StartError;
use crate::metrics::ProxyMetrics;
use crate::routing::RoutingTable;
use crate::tls::ListenerTlsState;
use crate::upstream_tls::PoolTls;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use vigil_conf::{AccessLogConfig, Config, LimitsConfig};
use vigil_healthcheck::{Checker, CheckerOptions, Membership, Publish};

/// The configuration in force and the checker's last membership, and the routing
/// snapshot built from both: rebuilt (off the request path) whenever either changes.
pub struct InForce {
    state: Mutex<State>,
    table: ArcSwap<RoutingTable>,
    metrics: Arc<ProxyMetrics>,
}

/// What the routing snapshot is built from.
struct State {
    config: Arc<Config>,
    /// Each pool's HTTPS settings, read from the files `config` names.
    tls: Arc<HashMap<String, Arc<PoolTls>>>,
    membership: Arc<Membership>,
}

impl InForce {
    fn new(config: Arc<Config>, metrics: Arc<ProxyMetrics>) -> Self {
        let state = State {
            config,
            tls: Arc::default(),
            membership: Arc::default(),
        };
        // No pools yet: the first apply builds the first real table.
        InForce {
            table: ArcSwap::from_pointee(RoutingTable::empty()),
            state: Mutex::new(state),
            metrics,
        }
    }

    fn rebuild(&self, s: &State) {
        let table = RoutingTable::build(&s.config.pools, &s.membership, &s.tls, &self.metrics);
        self.table.store(Arc::new(table));
    }

    pub fn config(&self) -> Arc<Config> {
        // Poisoning needs a panic while holding this lock; building a table does not panic.
        self.state.lock().unwrap().config.clone()
    }

    /// A new configuration: routes and pool settings now, with the membership we have.
    pub(crate) fn set_config(&self, config: Arc<Config>, tls: Arc<HashMap<String, Arc<PoolTls>>>) {
        let mut state = self.state.lock().unwrap();
        state.config = config;
        state.tls = tls;
        self.rebuild(&state);
    }

    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }
}

impl Publish for InForce {
    fn publish(&self, membership: Arc<Membership>) {
        let mut state = self.state.lock().unwrap();
        state.membership = membership;
        self.rebuild(&state);
    }
}

/// Requests between `request_filter` and `logging`; drain waits for zero.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    pub fn started(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    pub fn finished(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    pub fn get(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Returns when no request is in flight.
    pub async fn idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.get() == 0 {
                return;
            }
            idle.await;
        }
    }
}

pub struct App {
    pub(crate) in_force: Arc<InForce>,
    pub(crate) checker: Checker,
    pub(crate) metrics: Arc<ProxyMetrics>,
    pub(crate) registry: prometheus::Registry,
    /// Limits on client requests, read by Pingora per request head and by the proxy.
    pub(crate) edge: Arc<EdgeLimits>,
    pub(crate) access_log: Arc<AccessLog>,
    /// TLS listeners, by address: certificates are re-read on every apply.
    pub(crate) tls: Vec<(std::net::SocketAddr, Arc<ListenerTlsState>)>,
    /// The file reloads read; None for the demo's embedded config.
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) in_flight: InFlight,
    pub(crate) draining: AtomicBool,
    /// One reload at a time (read the file, apply it), so an older file never wins.
    pub(crate) reload_lock: Mutex<()>,
    pub(crate) apply_lock: Mutex<()>,
    /// The configuration as the file has it (without discovered backends).
    pub(crate) file_config: Mutex<Arc<Config>>,
    pub(crate) discovery: crate::discovery::Discovery,
    /// This App, for the tasks it starts (discovery) to apply through.
    pub(crate) me: std::sync::OnceLock<std::sync::Weak<App>>,
    /// Set at start when the config has `fleet`.
    pub(crate) fleet: std::sync::OnceLock<Arc<crate::fleet::Fleet>>,
}

impl App {
    /// SIGTERM or an upgrade has begun: the listeners are closed and requests in flight
    /// finish; every answer from now on closes its connection.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// A running state for `config`: the settings fixed at start taken from it, nothing
    /// else in force yet, then `config` applied like any reload.
    pub fn start(
        config: Config,
        config_path: Option<PathBuf>,
        runtime: tokio::runtime::Handle,
        seed: std::collections::HashMap<
            (String, String),
            (vigil_healthcheck::Health, vigil_healthcheck::AdminState),
        >,
    ) -> Result<Arc<App>, StartError> {
        let registry = prometheus::Registry::new();
        let metrics = Arc::new(ProxyMetrics::new(&registry, config.metrics.per_backend)?);
        let empty = Arc::new(Config {
            pools: Vec::new(),
            limits: LimitsConfig::default(),
            access_log: AccessLogConfig::default(),
            ..config.clone()
        });
        let in_force = Arc::new(InForce::new(empty.clone(), metrics.clone()));
        let checker = Checker::new(
            runtime.clone(),
            CheckerOptions {
                max_concurrent_checks: empty.checker.max_concurrent_checks,
                per_backend_metrics: empty.metrics.per_backend,
            },
            in_force.clone(),
            &registry,
        )?;
        checker.seed(seed);
        let discovery = crate::discovery::Discovery::new(&registry, runtime.clone())?;
        let access_log = Arc::new(
            AccessLog::start(&empty.access_log, metrics.access_log_dropped.clone())
                .map_err(StartError::AccessLog)?,
        );
        let edge = Arc::new(EdgeLimits::new(
            &empty.limits,
            metrics.unrouted(),
            access_log.clone(),
        ));
        let tls = config
            .listeners
            .iter()
            .filter(|l| l.tls.is_some())
            .map(|l| {
                let name = l.address.to_string();
                let handshakes = metrics.handshakes(&name);
                let state =
                    ListenerTlsState::new(name, l.http2, handshakes, metrics.tls_expiry.clone());
                (l.address, Arc::new(state))
            })
            .collect();
        let app = Arc::new(App {
            in_force,
            tls,
            checker,
            metrics,
            registry,
            edge,
            access_log,
            config_path,
            in_flight: InFlight::default(),
            draining: AtomicBool::new(false),
            reload_lock: Mutex::new(()),
            apply_lock: Mutex::new(()),
            file_config: Mutex::new(empty),
            discovery,
            me: std::sync::OnceLock::new(),
            fleet: std::sync::OnceLock::new(),
        });
        let _ = app.me.set(Arc::downgrade(&app));
        app.apply(config).map_err(StartError::Config)?;
        app.metrics.mark_loaded();
        let config = app.config();
        if let Some(f) = &config.fleet {
            let fleet = crate::fleet::Fleet::start(&app, &config, f, &app.registry, &runtime)?;
            let _ = app.fleet.set(fleet);
        }
        Ok(app)
    }

    pub fn config(&self) -> Arc<Config> {
        self.in_force.config()
    }

    pub fn table(&self) -> Arc<RoutingTable> {
        self.in_force.table()
    }
}
