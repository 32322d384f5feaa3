//! A fleet of vigils sharing health through etcd (design: `docs/fleet.md`).
//!
//! One task per process keeps a session with etcd: a lease, a member key and a
//! heartbeat on it, a watch over the fleet's keys. From the live members it computes
//! which backends this member owns (rendezvous hashing, `copies` owners each) and tells
//! the checker; owners publish their transitions, the others apply them. When etcd
//! cannot be reached the member checks everything itself until the session is back.

mod owners;
mod session;
mod view;

pub use owners::{fingerprint, owners, score};

use super::{Control, InForce};
use crate::dataplane::Draining;
use prometheus::{IntGauge, Registry};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vigil_conf::{Config, FleetConfig};
use vigil_healthcheck::Checker;

/// What the fleet reaches of the rest of vigil: the checker (which backends this
/// member probes, their transitions), the control task (results of the others), the
/// configuration in force (check intervals) and whether the process is draining.
pub struct Reach {
    pub checker: Checker,
    pub control: Control,
    pub in_force: Arc<InForce>,
    pub draining: Draining,
}

impl Reach {
    fn config(&self) -> Arc<Config> {
        self.in_force.config()
    }
}

pub const MODE: &str = "vigil_fleet_mode";
pub const OWNED: &str = "vigil_fleet_owned_backends";

/// How long one etcd request may take before the session is given up.
fn request_timeout(ttl: Duration) -> Duration {
    ttl / 3
}

/// The heartbeat period: the shortest check interval of the pools, within
/// [100 ms, lease_ttl / 3].
pub fn heartbeat_period(config: &Config, ttl: Duration) -> Duration {
    let shortest = config
        .pools
        .iter()
        .map(|p| p.health_check.interval)
        .min()
        .unwrap_or(Duration::from_secs(1));
    shortest.clamp(Duration::from_millis(100), ttl / 3)
}

/// A member whose heartbeat has not been seen for this long is stale.
pub fn freshness_bound(period: Duration) -> Duration {
    period * 2 + Duration::from_secs(1)
}

pub struct Fleet {
    config: FleetConfig,
    /// The heartbeat period, and the freshness bound it gives (a reload that changes the
    /// pools' intervals changes them).
    period: Mutex<(Duration, Duration)>,
    view: Mutex<view::View>,
    mode: IntGauge,
    owned: IntGauge,
}

impl Fleet {
    /// Starts the fleet task on `runtime`; the member is local until it has joined.
    pub fn start(
        app: Reach,
        config: &Config,
        fleet: &FleetConfig,
        registry: &Registry,
        runtime: &tokio::runtime::Handle,
    ) -> prometheus::Result<Arc<Fleet>> {
        let mode = IntGauge::new(MODE, "1 while this vigil shares health through the fleet, 0 while it checks every backend itself.")?;
        let owned = IntGauge::new(OWNED, "Backends this vigil probes itself.")?;
        registry.register(Box::new(mode.clone()))?;
        registry.register(Box::new(owned.clone()))?;
        let period = heartbeat_period(config, fleet.lease_ttl);
        owned.set(app.checker.backends().len() as i64);
        let f = Arc::new(Fleet {
            config: fleet.clone(),
            period: Mutex::new((period, freshness_bound(period))),
            view: Mutex::new(view::View::default()),
            mode,
            owned,
        });
        runtime.spawn(run(Arc::new(app), f.clone()));
        Ok(f)
    }

    pub fn period(&self) -> Duration {
        self.period.lock().unwrap().0
    }

    /// This member's freshness bound (the default for a member not heard from yet).
    pub fn bound(&self) -> Duration {
        self.period.lock().unwrap().1
    }

    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// For `/health/detailed`: who the backend's health comes from, and how long ago
    /// that result arrived (None: this member probes it).
    pub fn backend(&self, pool: &str, address: &str) -> (String, Option<Duration>) {
        let view = self.view.lock().unwrap();
        let key = (pool.to_string(), address.to_string());
        if !view.shared || view.owned.contains(&key) {
            return (self.config.node.clone(), None);
        }
        let owners = owners(&view.live, self.config.copies, address);
        let best = view.published.get(&key).and_then(|by| {
            by.iter()
                .filter(|(n, _)| owners.contains(&n.as_str()))
                .max_by_key(|(_, p)| p.revision)
        });
        match best {
            Some((node, p)) => (node.clone(), Some(p.received.elapsed())),
            None => (
                owners.first().map(|s| s.to_string()).unwrap_or_default(),
                None,
            ),
        }
    }

    pub fn summary(&self) -> serde_json::Value {
        let view = self.view.lock().unwrap();
        json!({
            "node": self.config.node,
            "mode": if view.shared { "shared" } else { "local" },
            "members": view.live,
            "owned_backends": view.owned.len(),
            "heartbeat_ms": self.period().as_millis() as u64,
            "freshness_bound_ms": self.bound().as_millis() as u64,
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.config.prefix)
    }
}

/// Retries the session every second until vigil drains or stops; local in between.
async fn run(a: Arc<Reach>, fleet: Arc<Fleet>) {
    let mut outage_logged = false;
    loop {
        if a.draining.get() || a.control.is_closed() {
            return;
        }
        let result = session::session(&a, &fleet).await;
        let was_shared = fleet.view.lock().unwrap().shared;
        fleet.go_local(&a);
        match result {
            Err(e) if was_shared || !outage_logged => {
                tracing::warn!(node = %fleet.config.node, error = %e, "fleet: etcd unreachable; checking every backend locally");
                outage_logged = true;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_freshness_bound_is_two_heartbeats_and_a_second() {
        assert_eq!(
            freshness_bound(Duration::from_millis(200)),
            Duration::from_millis(1400)
        );
    }
}
