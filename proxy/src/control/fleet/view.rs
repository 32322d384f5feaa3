//! This member's view of the fleet: the members alive and their sets of backends, what
//! owners published, and the backends it owns; recomputed from etcd's keys.

use super::owners::{fingerprint, owners};
use super::{freshness_bound, Fleet, Reach};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use vigil_healthcheck::Health;

/// Backends that changed hands at a recompute.
#[derive(Default)]
pub(super) struct Handover {
    pub(super) taken: Vec<(String, String)>,
    pub(super) released: Vec<(String, String)>,
    /// This member's set of backends changed: its member key must say so.
    pub(super) announce: bool,
}

/// A state an owner published.
#[derive(Debug, Clone)]
pub(super) struct Published {
    pub(super) health: Health,
    pub(super) reason: String,
    pub(super) revision: i64,
    pub(super) received: Instant,
}

#[derive(Default)]
pub(super) struct View {
    pub(super) shared: bool,
    /// Members with a key: when their heartbeat (or any write) was last seen, and
    /// their own freshness bound (from the period their heartbeat announces).
    pub(super) members: BTreeMap<String, (Instant, Duration)>,
    /// Each member's set of backends, as a fingerprint (its member key says it).
    /// Ownership is shared only among members with this member's set: during a rolling
    /// config change (or while discovery answers differ) a backend is never owned by a
    /// member that does not have it.
    pub(super) sets: HashMap<String, u64>,
    /// This member's fingerprint, as last announced.
    pub(super) mine: u64,
    /// By (pool, address), by publishing node.
    pub(super) published: HashMap<(String, String), HashMap<String, Published>>,
    /// The live members the ownership was last computed from.
    pub(super) live: Vec<String>,
    /// Backends this member probes (all of them while local).
    pub(super) owned: HashSet<(String, String)>,
    pub(super) generation: u64,
}

impl Fleet {
    /// Every backend probed here (outside a session, or when etcd is lost).
    pub(super) fn go_local(&self, app: &Reach) {
        let mut view = self.view.lock().unwrap();
        view.shared = false;
        view.live = vec![self.config.node.clone()];
        let n = app.checker.set_owned(Arc::new(|_, _| true));
        view.owned = app.checker.backends().into_iter().collect();
        self.mode.set(0);
        self.owned.set(n as i64);
    }

    /// Members with a key whose heartbeat is fresh and whose backends are this
    /// member's (this one always).
    fn live(&self, view: &View, now: Instant) -> Vec<String> {
        view.members
            .iter()
            .filter(|(n, (heard, bound))| {
                **n == self.config.node
                    || (now.saturating_duration_since(*heard) <= *bound
                        && view.sets.get(*n) == Some(&view.mine))
            })
            .map(|(n, _)| n.clone())
            .chain(std::iter::once(self.config.node.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Recomputes ownership if the live members or the backends changed; returns the
    /// backends newly owned (to publish their state) and those no longer owned (to
    /// delete what this member published about them).
    pub(super) fn recompute(&self, app: &Reach, force: bool) -> Handover {
        let now = Instant::now();
        let mut view = self.view.lock().unwrap();
        let generation = app.checker.generation();
        let backends = app.checker.backends();
        let mut announce = false;
        if force || generation != view.generation {
            let mine = fingerprint(backends.clone());
            announce = mine != view.mine;
            view.mine = mine;
        }
        let live = self.live(&view, now);
        if !force && live == view.live && generation == view.generation {
            return Handover::default();
        }
        if live != view.live {
            tracing::info!(node = %self.config.node, members = ?live, "fleet members changed");
        }
        view.live = live;
        view.generation = generation;
        // One rule for the backends there are and those a reload or a lookup adds later.
        let (copies, rule_live, me) = (
            self.config.copies,
            view.live.clone(),
            self.config.node.clone(),
        );
        let rule: vigil_healthcheck::Owns =
            Arc::new(move |_, a| owners(&rule_live, copies, a).contains(&me.as_str()));
        let (owned, follow): (HashSet<_>, Vec<_>) = {
            let (o, f): (Vec<_>, Vec<_>) = backends.into_iter().partition(|(p, a)| rule(p, a));
            (o.into_iter().collect(), f)
        };
        let n = app.checker.set_owned(rule);
        let taken: Vec<_> = owned.difference(&view.owned).cloned().collect();
        let released: Vec<_> = view.owned.difference(&owned).cloned().collect();
        view.owned = owned;
        // What owners published about backends this member does not have (yet) is
        // kept: a reload or a lookup may add them here later. Owners delete their keys
        // when they let a backend go, and leases take the rest.
        self.owned.set(n as i64);
        // Backends owned elsewhere take their owners' last word now.
        for (p, a) in follow {
            if let Some((node, pb)) = self.best(&view, &p, &a) {
                let reason = format!("fleet: {node}: {}", pb.reason);
                app.control.shared_health(&p, &a, pb.health, reason);
            }
        }
        Handover {
            taken,
            released,
            announce,
        }
    }

    /// This member's key: its name, pid and set of backends.
    pub(super) fn member_value(&self, app: &Reach) -> String {
        let mine = {
            let mut view = self.view.lock().unwrap();
            view.mine = fingerprint(app.checker.backends());
            view.mine
        };
        json!({"node": self.config.node, "pid": std::process::id(), "backends": format!("{mine:016x}")})
            .to_string()
    }

    /// The latest state published by one of the backend's current owners.
    fn best(&self, view: &View, pool: &str, address: &str) -> Option<(String, Published)> {
        let owners = owners(&view.live, self.config.copies, address);
        view.published
            .get(&(pool.to_string(), address.to_string()))?
            .iter()
            .filter(|(n, _)| owners.contains(&n.as_str()))
            .max_by_key(|(_, p)| p.revision)
            .map(|(n, p)| (n.clone(), p.clone()))
    }

    /// One key's put or delete, from the initial read or the watch. Returns true if
    /// ownership may have changed.
    pub(super) fn absorb(
        &self,
        app: &Reach,
        key: &str,
        value: Option<&str>,
        revision: i64,
    ) -> bool {
        let Some(rest) = key
            .strip_prefix(&self.config.prefix)
            .and_then(|r| r.strip_prefix('/'))
        else {
            return false;
        };
        let now = Instant::now();
        let mut view = self.view.lock().unwrap();
        if let Some(node) = rest.strip_prefix("members/") {
            return match value {
                Some(v) => {
                    let bound = self.bound();
                    let m = view.members.entry(node.to_string()).or_insert((now, bound));
                    m.0 = now;
                    let set = serde_json::from_str::<serde_json::Value>(v)
                        .ok()
                        .and_then(|v| v["backends"].as_str().map(str::to_string))
                        .and_then(|h| u64::from_str_radix(&h, 16).ok())
                        .unwrap_or(0);
                    view.sets.insert(node.to_string(), set);
                    false
                }
                None => {
                    view.members.remove(node);
                    view.sets.remove(node);
                    for by in view.published.values_mut() {
                        by.remove(node);
                    }
                    true
                }
            };
        }
        if let Some(node) = rest.strip_prefix("rounds/") {
            let period = value
                .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
                .and_then(|v| v["period_ms"].as_u64())
                .map(Duration::from_millis);
            if let Some(m) = view.members.get_mut(node) {
                m.0 = now;
                // A heartbeat without its period (an older build) keeps the bound it had.
                if let Some(period) = period {
                    m.1 = freshness_bound(period);
                }
            }
            // Whether it became live again is seen by the next `recompute`.
            return false;
        }
        let Some(parts) = rest.strip_prefix("health/") else {
            return false;
        };
        let mut it = parts.splitn(3, '/');
        let (Some(pool), Some(address), Some(node)) = (it.next(), it.next(), it.next()) else {
            return false;
        };
        let k = (pool.to_string(), address.to_string());
        match value.and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok()) {
            Some(v) => {
                let health = match v["health"].as_str() {
                    Some("up") => Health::Up,
                    Some("down") => Health::Down,
                    _ => return false,
                };
                if let Some(m) = view.members.get_mut(node) {
                    m.0 = now;
                }
                let p = Published {
                    health,
                    reason: v["reason"].as_str().unwrap_or_default().to_string(),
                    revision,
                    received: now,
                };
                view.published
                    .entry(k.clone())
                    .or_default()
                    .insert(node.to_string(), p);
                if view.shared && !view.owned.contains(&k) {
                    if let Some((node, pb)) = self.best(&view, pool, address) {
                        drop(view);
                        let reason = format!("fleet: {node}: {}", pb.reason);
                        app.control.shared_health(pool, address, pb.health, reason);
                    }
                }
            }
            None => {
                if let Some(by) = view.published.get_mut(&k) {
                    by.remove(node);
                }
            }
        }
        false
    }
}
