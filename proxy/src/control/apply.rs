//! The one path from a desired configuration to the running state:
//! [`Controller::apply`], run by the control task (`control.rs`) alone. Start applies
//! the file onto an empty state; reload validates the whole file first, then applies
//! it; discovered backends apply through it too. On any error the configuration in
//! force keeps serving. Kept backends keep their state and schedule.

use super::discovery::Discovery;
use super::error::ApplyError;
use super::{Control, InForce};
use crate::edge::limits::EdgeLimits;
use crate::edge::tls::ListenerTlsState;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::ProxyMetrics;
use serde_json::json;
use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use vigil_conf::Config;
use vigil_healthcheck::Checker;

/// What the control task owns: the file's configuration, and handles to everything an
/// apply changes. Nothing else applies, so nothing here needs a lock.
pub struct Controller {
    pub in_force: Arc<InForce>,
    pub checker: Checker,
    pub metrics: Arc<ProxyMetrics>,
    pub edge: Arc<EdgeLimits>,
    pub access_log: Arc<AccessLog>,
    /// TLS listeners, by address: certificates are re-read on every apply.
    pub tls: Vec<(SocketAddr, Arc<ListenerTlsState>)>,
    /// The file reloads read; None for the demo's embedded config.
    pub config_path: Option<PathBuf>,
    /// The configuration as the file has it (without discovered backends).
    pub file_config: Arc<Config>,
    pub discovery: Arc<Discovery>,
    /// For the discovery tasks this starts, to send what they find.
    pub control: Control,
}

/// What a successful apply changed.
#[derive(Debug, Default)]
pub struct Changes {
    pub pools_added: Vec<String>,
    pub pools_removed: Vec<String>,
    pub pools_changed: Vec<String>,
    pub backends_added: Vec<String>,
    pub backends_removed: Vec<String>,
    pub backends_updated: Vec<String>,
    /// Top-level sections applied in place: `limits`, `access_log`.
    pub settings_changed: Vec<String>,
}

impl Changes {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "pools": {"added": self.pools_added, "removed": self.pools_removed, "changed": self.pools_changed},
            "backends": {"added": self.backends_added, "removed": self.backends_removed, "updated": self.backends_updated},
            "settings": self.settings_changed,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.pools_added.is_empty()
            && self.pools_removed.is_empty()
            && self.pools_changed.is_empty()
            && self.backends_added.is_empty()
            && self.backends_removed.is_empty()
            && self.backends_updated.is_empty()
            && self.settings_changed.is_empty()
    }
}

/// Settings Pingora or the metrics registry fixed at start-up.
fn restart_only(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    // Certificates and min_version reload; what is bound, and how, does not.
    let bound = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| (l.address, l.max_connections, l.http2, l.tls.is_some()))
            .collect::<Vec<_>>()
    };
    if bound(old) != bound(new) {
        out.push("listeners".to_string());
    }
    if old.admin.address != new.admin.address {
        out.push("admin.address".to_string());
    }
    if old.threads != new.threads {
        out.push("threads".to_string());
    }
    if old.cpu_affinity != new.cpu_affinity {
        out.push("cpu_affinity".to_string());
    }
    if old.grace_period != new.grace_period {
        out.push("grace_period".to_string());
    }
    if old.metrics != new.metrics {
        out.push("metrics.per_backend".to_string());
    }
    if old.upgrade_socket != new.upgrade_socket {
        out.push("upgrade_socket".to_string());
    }
    if old.fleet != new.fleet {
        out.push("fleet".to_string());
    }
    if old.http2 != new.http2 {
        out.push("http2".to_string());
    }
    out
}

impl Controller {
    pub(super) fn checker(&self) -> &Checker {
        &self.checker
    }

    /// Reloads the config file. Counts and logs the outcome either way.
    pub fn reload(&mut self) -> Result<Changes, ApplyError> {
        let result = self.reload_inner();
        match &result {
            Ok(summary) => {
                self.metrics.reload_succeeded();
                if summary.is_empty() {
                    tracing::info!(changes = "none", "configuration reloaded");
                } else {
                    tracing::info!(changes = %summary.to_json(), "configuration reloaded");
                }
            }
            Err(e) => {
                self.metrics.reload_failed();
                tracing::error!(errors = %e.lines().join("; "), "configuration reload rejected; the previous configuration keeps serving");
            }
        }
        result
    }

    fn reload_inner(&mut self) -> Result<Changes, ApplyError> {
        let path = self.config_path.as_ref().ok_or(ApplyError::NoFile)?;
        let new = vigil_conf::load(path).map_err(ApplyError::Invalid)?;
        self.apply(new)
    }

    /// Makes `new` the configuration in force: settings applied in place, routes and
    /// pool settings, then the checked backends, then metrics of what is gone. Refuses
    /// (changing nothing) settings only a restart applies and an access log it cannot
    /// open.
    pub fn apply(&mut self, new: Config) -> Result<Changes, ApplyError> {
        let found = self.discovery.found_for(&new);
        let changes = self.apply_merged(super::discovery::merge(&new, &found))?;
        self.discovery.sync(&self.control, &new.dns, &new.pools);
        self.file_config = Arc::new(new);
        Ok(changes)
    }

    /// A pool's discovery found `backends` (all of them): the file's configuration in
    /// force with them merged in is applied. On an error nothing changes.
    /// `token` names the discovery task: one a reload has replaced changes nothing
    /// (false).
    pub fn apply_discovered(
        &mut self,
        pool: &str,
        token: u64,
        backends: Vec<vigil_conf::BackendConfig>,
    ) -> Result<bool, ApplyError> {
        if !self.discovery.is_current(pool, token) {
            return Ok(false);
        }
        let before = self.discovery.set_found(pool, backends);
        let found = self.discovery.found_for(&self.file_config);
        match self.apply_merged(super::discovery::merge(&self.file_config, &found)) {
            Ok(_) => Ok(true),
            Err(e) => {
                self.discovery.restore_found(pool, before);
                Err(e)
            }
        }
    }

    /// [`Controller::apply`] of a configuration with discovered backends merged in.
    fn apply_merged(&self, new: Config) -> Result<Changes, ApplyError> {
        let old = self.in_force.config();
        let restart = restart_only(&old, &new);
        if !restart.is_empty() {
            return Err(ApplyError::NeedsRestart(restart));
        }

        // Every certificate and CA file is read again (a file may have changed, not
        // the config); all of them must load before anything changes.
        let prepared = crate::control::certs::prepare(&new).map_err(ApplyError::Invalid)?;
        let pool_tls = Arc::new(prepared.pools);

        let known = crate::control::certs::warnings(&old);
        for w in crate::control::certs::warnings(&new) {
            if !known.contains(&w) {
                tracing::warn!("{w}");
            }
        }
        let mut changes = Changes::default();
        if old.access_log != new.access_log {
            self.access_log.configure(&new.access_log).map_err(|e| {
                let path = new
                    .access_log
                    .path
                    .as_deref()
                    .unwrap_or(std::path::Path::new("-"));
                ApplyError::AccessLog(format!(
                    "access_log.path: cannot open {}: {e}",
                    path.display()
                ))
            })?;
            changes.settings_changed.push("access_log".into());
        }
        if old.limits != new.limits {
            self.edge.set(&new.limits);
            changes.settings_changed.push("limits".into());
        }
        let mut renewed = false;
        for (address, loaded) in prepared.listeners {
            // Which listeners have TLS is fixed at start (`restart_only`).
            let tls = new.listeners.iter().find(|l| l.address == address);
            let state = self.tls.iter().find(|(a, _)| *a == address);
            if let (Some(tls), Some((_, state))) = (tls.and_then(|l| l.tls.as_ref()), state) {
                renewed |= state.install(tls, loaded);
            }
        }
        if renewed {
            changes.settings_changed.push("certificates".into());
        }
        let old_pools: BTreeSet<String> = old.pools.iter().map(|p| p.name.clone()).collect();
        let new_pools: BTreeSet<String> = new.pools.iter().map(|p| p.name.clone()).collect();
        changes.pools_added = new_pools.difference(&old_pools).cloned().collect();
        changes.pools_removed = old_pools.difference(&new_pools).cloned().collect();
        for p in &new.pools {
            if let Some(o) = old.pools.iter().find(|o| o.name == p.name) {
                if o != p {
                    changes.pools_changed.push(p.name.clone());
                }
            }
        }

        // Routes and pool settings first, then membership: a request never sees a
        // pool whose settings and backends come from different files for long, and
        // every backend it can be sent to is one the checker has marked up.
        let new = Arc::new(new);
        self.in_force.set_config(new.clone(), pool_tls.clone());
        self.checker
            .set_max_concurrent_checks(new.checker.max_concurrent_checks);
        let report = self
            .checker
            .apply(crate::control::convert::backend_specs(&new, &pool_tls));
        changes.backends_added = report.added;
        changes.backends_removed = report.removed;
        changes.backends_updated = report.updated;

        let kept: HashSet<(&str, &str)> = new
            .pools
            .iter()
            .flat_map(|p| {
                p.backends
                    .iter()
                    .map(move |b| (p.name.as_str(), b.address.as_str()))
            })
            .collect();
        for p in &old.pools {
            if !new_pools.contains(&p.name) {
                self.metrics.remove_pool(&p.name);
            }
            for b in &p.backends {
                if !kept.contains(&(p.name.as_str(), b.address.as_str())) {
                    self.metrics.remove_backend(&p.name, &b.address);
                }
            }
        }
        Ok(changes)
    }
}
