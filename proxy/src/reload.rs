//! Live reload: validate the whole file first, then swap; on any error the old
//! configuration keeps serving. Kept backends keep their state and schedule.

use crate::app::App;
use serde_json::json;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use vigil_conf::{Config, ConfigErrors};

#[derive(Debug)]
pub enum ReloadError {
    /// The file has errors; nothing changed.
    Invalid(ConfigErrors),
    /// The file changes settings that only a restart applies; nothing changed.
    NeedsRestart(Vec<String>),
    /// The new access log file cannot be opened; nothing changed.
    AccessLog(String),
    /// Running from the embedded demo config: there is no file to reload.
    NoFile,
}

impl ReloadError {
    /// One line per problem, `FILE:LINE:COL: message` where there is a position.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(errs) => errs.iter().map(|e| e.to_string()).collect(),
            ReloadError::NeedsRestart(what) => what
                .iter()
                .map(|w| format!("{w} changed: restart vigil to apply it; nothing was reloaded"))
                .collect(),
            ReloadError::AccessLog(e) => vec![e.clone()],
            ReloadError::NoFile => {
                vec!["no configuration file to reload (embedded demo config)".into()]
            }
        }
    }
}

/// What a successful reload changed.
#[derive(Debug, Default)]
pub struct ReloadSummary {
    pub pools_added: Vec<String>,
    pub pools_removed: Vec<String>,
    pub pools_changed: Vec<String>,
    pub backends_added: Vec<String>,
    pub backends_removed: Vec<String>,
    pub backends_updated: Vec<String>,
    /// Top-level sections applied in place: `limits`, `access_log`.
    pub settings_changed: Vec<String>,
}

impl ReloadSummary {
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
    if old.listeners != new.listeners {
        out.push("listeners".to_string());
    }
    if old.admin.address != new.admin.address {
        out.push("admin.address".to_string());
    }
    if old.threads != new.threads {
        out.push("threads".to_string());
    }
    if old.grace_period != new.grace_period {
        out.push("grace_period".to_string());
    }
    if old.metrics != new.metrics {
        out.push("metrics.per_backend".to_string());
    }
    out
}

impl App {
    /// [`App::reload`] on the blocking pool: it reads a file and may resolve names,
    /// which must not stall the event loop of SIGHUP, `--watch` or the admin listener.
    pub async fn reload_off_thread(
        self: &Arc<Self>,
    ) -> Result<Result<ReloadSummary, ReloadError>, tokio::task::JoinError> {
        let app = self.clone();
        tokio::task::spawn_blocking(move || app.reload()).await
    }

    /// Reloads the config file. Counts and logs the outcome either way.
    pub fn reload(&self) -> Result<ReloadSummary, ReloadError> {
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

    fn reload_inner(&self) -> Result<ReloadSummary, ReloadError> {
        // SIGHUP, --watch and POST /admin/reload may race; one reload at a time.
        let _one = self.reload_lock.lock().unwrap();
        let path = self.config_path.as_ref().ok_or(ReloadError::NoFile)?;
        let new = vigil_conf::load(path).map_err(ReloadError::Invalid)?;
        let old = self.config();
        let restart = restart_only(&old, &new);
        if !restart.is_empty() {
            return Err(ReloadError::NeedsRestart(restart));
        }

        let mut summary = ReloadSummary::default();
        if old.access_log != new.access_log {
            self.access_log.configure(&new.access_log).map_err(|e| {
                let path = new
                    .access_log
                    .path
                    .as_deref()
                    .unwrap_or(std::path::Path::new("-"));
                ReloadError::AccessLog(format!(
                    "access_log.path: cannot open {}: {e}",
                    path.display()
                ))
            })?;
            summary.settings_changed.push("access_log".into());
        }
        if old.limits != new.limits {
            self.edge.set(&new.limits);
            summary.settings_changed.push("limits".into());
        }
        let old_pools: BTreeSet<&str> = old.pools.iter().map(|p| p.name.as_str()).collect();
        let new_pools: BTreeSet<&str> = new.pools.iter().map(|p| p.name.as_str()).collect();
        summary.pools_added = new_pools
            .difference(&old_pools)
            .map(|s| s.to_string())
            .collect();
        summary.pools_removed = old_pools
            .difference(&new_pools)
            .map(|s| s.to_string())
            .collect();
        for p in &new.pools {
            if let Some(o) = old.pools.iter().find(|o| o.name == p.name) {
                if o != p {
                    summary.pools_changed.push(p.name.clone());
                }
            }
        }

        // Routes and pool settings first, then membership: a request never sees a
        // pool whose settings and backends come from different files for long, and
        // every backend it can be sent to is one the checker has marked up.
        self.publisher
            .set_pools(new.pools.iter().cloned().map(Arc::new).collect());
        self.checker
            .set_max_concurrent_checks(new.checker.max_concurrent_checks);
        let report = self.checker.apply(crate::convert::backend_specs(&new));
        summary.backends_added = report.added;
        summary.backends_removed = report.removed;
        summary.backends_updated = report.updated;

        let kept: HashSet<(String, String)> = new
            .pools
            .iter()
            .flat_map(|p| {
                p.backends
                    .iter()
                    .map(move |b| (p.name.clone(), b.address.clone()))
            })
            .collect();
        for p in &old.pools {
            if !new_pools.contains(p.name.as_str()) {
                self.metrics.remove_pool(&p.name);
            }
            for b in &p.backends {
                if !kept.contains(&(p.name.clone(), b.address.clone())) {
                    self.metrics.remove_backend(&p.name, &b.address);
                }
            }
        }
        *self.config.lock().unwrap() = Arc::new(new);
        Ok(summary)
    }
}
