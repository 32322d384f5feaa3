//! The running proxy, wired: the request path's [`DataPlane`], the configuration in
//! force ([`InForce`]) and the control task that changes it ([`Control`]), the checker
//! that keeps membership true, discovery and the fleet, metrics.
//!
//! Start applies the file onto an empty state, the same apply every reload goes
//! through (`control/apply.rs`), then hands that state to the control task.

use crate::control::apply::Controller;
use crate::control::discovery::Discovery;
use crate::control::fleet::{Fleet, Reach};
use crate::control::{Control, InForce};
use crate::dataplane::routing::RoutingTable;
use crate::dataplane::DataPlane;
use crate::edge::limits::EdgeLimits;
use crate::edge::tls::ListenerTlsState;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::ProxyMetrics;
use crate::observe::systemd::Notifier;
use crate::process::error::StartError;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use vigil_conf::{AccessLogConfig, Config, LimitsConfig};
use vigil_healthcheck::{AdminState, Checker, CheckerOptions, Health};

pub struct App {
    /// What the request path reads.
    pub(crate) plane: Arc<DataPlane>,
    /// The configuration in force, read without a lock.
    pub(crate) in_force: Arc<InForce>,
    /// To change what is in force: reloads, admin states.
    pub(crate) control: Control,
    pub(crate) checker: Checker,
    pub(crate) metrics: Arc<ProxyMetrics>,
    pub(crate) registry: prometheus::Registry,
    /// TLS listeners, by address (the control task renews their certificates).
    pub(crate) tls: Vec<(SocketAddr, Arc<ListenerTlsState>)>,
    /// The file reloads read; None for the demo's embedded config.
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) discovery: Arc<Discovery>,
    /// Set at start when the config has `fleet`.
    pub(crate) fleet: Option<Arc<Fleet>>,
    /// What systemd hears: readiness, reloads, the drain.
    pub(crate) notifier: Notifier,
}

impl App {
    /// A running state for `config`: the settings fixed at start taken from it, nothing
    /// else in force yet, then `config` applied like any reload, then the control task
    /// started with what it applied (telling `notifier` of each reload).
    pub fn start(
        config: Config,
        config_path: Option<PathBuf>,
        runtime: tokio::runtime::Handle,
        seed: HashMap<(String, String), (Health, AdminState)>,
        notifier: Notifier,
    ) -> Result<Arc<App>, StartError> {
        let registry = prometheus::Registry::new();
        let metrics = Arc::new(ProxyMetrics::new(&registry, config.metrics.per_backend)?);
        let empty = Arc::new(Config {
            pools: Vec::new(),
            limits: LimitsConfig::default(),
            access_log: AccessLogConfig::default(),
            ..config.clone()
        });
        let access_log = Arc::new(
            AccessLog::start(&empty.access_log, metrics.access_log_dropped.clone())
                .map_err(StartError::AccessLog)?,
        );
        let edge = Arc::new(EdgeLimits::new(
            &empty.limits,
            metrics.unrouted(),
            access_log.clone(),
        ));
        let plane = Arc::new(DataPlane::new(edge, access_log, metrics.clone()));
        let in_force = Arc::new(InForce::new(empty.clone(), plane.clone(), metrics.clone()));
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
        let discovery = Arc::new(Discovery::new(&registry, runtime.clone())?);
        let tls: Vec<_> = config
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
        let (control, commands) = Control::channel();
        let mut controller = Controller {
            in_force: in_force.clone(),
            checker: checker.clone(),
            metrics: metrics.clone(),
            edge: plane.edge.clone(),
            access_log: plane.access_log.clone(),
            tls: tls.clone(),
            config_path: config_path.clone(),
            file_config: empty,
            discovery: discovery.clone(),
            control: control.clone(),
        };
        controller.apply(config).map_err(StartError::Config)?;
        metrics.mark_loaded();
        crate::control::start(controller, commands, notifier.clone())
            .map_err(StartError::Runtime)?;
        let config = in_force.config();
        let fleet = match &config.fleet {
            None => None,
            Some(f) => {
                let reach = Reach {
                    checker: checker.clone(),
                    control: control.clone(),
                    in_force: in_force.clone(),
                    draining: plane.draining.clone(),
                };
                Some(Fleet::start(reach, &config, f, &registry, &runtime)?)
            }
        };
        Ok(Arc::new(App {
            plane,
            in_force,
            control,
            checker,
            metrics,
            registry,
            tls,
            config_path,
            discovery,
            fleet,
            notifier,
        }))
    }

    pub fn config(&self) -> Arc<Config> {
        self.in_force.config()
    }

    pub fn table(&self) -> Arc<RoutingTable> {
        self.plane.table()
    }

    pub fn draining(&self) -> bool {
        self.plane.draining()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.control.stop();
    }
}
