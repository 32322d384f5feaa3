//! A fleet of vigils sharing health through etcd (design: `docs/fleet.md`).
//!
//! One task per process keeps a session with etcd: a lease, a member key and a
//! heartbeat on it, a watch over the fleet's keys. From the live members it computes
//! which backends this member owns (rendezvous hashing, `copies` owners each) and tells
//! the checker; owners publish their transitions, the others apply them. When etcd
//! cannot be reached the member checks everything itself until the session is back.

use super::{Control, InForce};
use crate::dataplane::Draining;
use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use prometheus::{IntGauge, Registry};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use vigil_conf::{Config, FleetConfig};
use vigil_healthcheck::{Checker, Health};

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

/// Rendezvous score of `node` for a backend address: the same on every member.
/// Pools naming the same address get the same owners, so one member's shared probe
/// serves them all.
pub fn score(node: &str, address: &str) -> u64 {
    // FNV-1a over the two names (separated), then a splitmix finish.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [node, address] {
        for b in part.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The `copies` members of `live` that own the backend at `address`.
pub fn owners<'a>(live: &'a [String], copies: usize, address: &str) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = live
        .iter()
        .map(|n| (score(n, address), n.as_str()))
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.into_iter().take(copies).map(|(_, n)| n).collect()
}

/// Backends that changed hands at a recompute.
#[derive(Default)]
struct Handover {
    taken: Vec<(String, String)>,
    released: Vec<(String, String)>,
    /// This member's set of backends changed: its member key must say so.
    announce: bool,
}

/// A state an owner published.
#[derive(Debug, Clone)]
struct Published {
    health: Health,
    reason: String,
    revision: i64,
    received: Instant,
}

#[derive(Default)]
struct View {
    shared: bool,
    /// Members with a key: when their heartbeat (or any write) was last seen, and
    /// their own freshness bound (from the period their heartbeat announces).
    members: BTreeMap<String, (Instant, Duration)>,
    /// Each member's set of backends, as a fingerprint (its member key says it).
    /// Ownership is shared only among members with this member's set: during a rolling
    /// config change (or while discovery answers differ) a backend is never owned by a
    /// member that does not have it.
    sets: HashMap<String, u64>,
    /// This member's fingerprint, as last announced.
    mine: u64,
    /// By (pool, address), by publishing node.
    published: HashMap<(String, String), HashMap<String, Published>>,
    /// The live members the ownership was last computed from.
    live: Vec<String>,
    /// Backends this member probes (all of them while local).
    owned: HashSet<(String, String)>,
    generation: u64,
}

pub struct Fleet {
    config: FleetConfig,
    /// The heartbeat period, and the freshness bound it gives (a reload that changes the
    /// pools' intervals changes them).
    period: Mutex<(Duration, Duration)>,
    view: Mutex<View>,
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
            view: Mutex::new(View::default()),
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

    /// Every backend probed here (outside a session, or when etcd is lost).
    fn go_local(&self, app: &Reach) {
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
    fn recompute(&self, app: &Reach, force: bool) -> Handover {
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
    fn member_value(&self, app: &Reach) -> String {
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
    fn absorb(&self, app: &Reach, key: &str, value: Option<&str>, revision: i64) -> bool {
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

/// Retries the session every second until vigil drains or stops; local in between.
async fn run(a: Arc<Reach>, fleet: Arc<Fleet>) {
    let mut outage_logged = false;
    loop {
        if a.draining.get() || a.control.is_closed() {
            return;
        }
        let result = session(&a, &fleet).await;
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

async fn timed<T, E: std::fmt::Display>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {limit:?}")),
    }
}

fn health_value(health: Health, reason: &str) -> Option<String> {
    let word = match health {
        Health::Up => "up",
        Health::Down => "down",
        _ => return None,
    };
    Some(json!({"health": word, "reason": reason}).to_string())
}

/// One session: joined until an etcd request fails or times out, the lease is lost,
/// or the watch ends.
async fn session(app: &Arc<Reach>, fleet: &Arc<Fleet>) -> Result<(), String> {
    let cfg = &fleet.config;
    let limit = request_timeout(cfg.lease_ttl);
    let options = ConnectOptions::new()
        .with_connect_timeout(limit)
        .with_keep_alive(limit, limit);
    let mut client = timed(limit, "connect", Client::connect(&cfg.etcd, Some(options))).await?;
    let lease = timed(
        limit,
        "lease grant",
        client.lease_grant(cfg.lease_ttl.as_secs() as i64, None),
    )
    .await?
    .id();
    let (mut keeper, mut alive) =
        timed(limit, "lease keep-alive", client.lease_keep_alive(lease)).await?;
    let on_lease = || Some(PutOptions::new().with_lease(lease));
    let member = fleet.member_value(app);
    timed(
        limit,
        "put",
        client.put(
            fleet.key(&format!("members/{}", cfg.node)),
            member,
            on_lease(),
        ),
    )
    .await?;
    let mut round: u64 = 0;
    timed(
        limit,
        "put",
        client.put(
            fleet.key(&format!("rounds/{}", cfg.node)),
            beat_value(round, fleet.period()),
            on_lease(),
        ),
    )
    .await?;

    // Everything there is, then every change after it.
    let all = timed(
        limit,
        "get",
        client.get(fleet.key(""), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = all.header().map_or(0, |h| h.revision());
    {
        let mut view = fleet.view.lock().unwrap();
        view.members.clear();
        view.sets.clear();
        view.published.clear();
        view.live.clear();
        // Everything this member owns in the new session is published afresh: its
        // keys went with the previous lease.
        view.owned.clear();
    }
    for kv in all.kvs() {
        if let (Ok(k), Ok(v)) = (kv.key_str(), kv.value_str()) {
            fleet.absorb(app, k, Some(v), kv.mod_revision());
        }
    }
    let mut watch = timed(
        limit,
        "watch",
        client.watch(
            fleet.key(""),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        ),
    )
    .await?;
    let mut transitions = app.checker.transitions();
    {
        fleet.view.lock().unwrap().shared = true;
        fleet.mode.set(1);
    }
    let handover = fleet.recompute(app, true);
    let members = fleet.view.lock().unwrap().live.clone();
    tracing::info!(node = %cfg.node, members = ?members, lease_ttl = ?cfg.lease_ttl, copies = cfg.copies, "joined the fleet; sharing health through etcd");
    hand_over(&mut client, fleet, app, handover, lease, limit).await?;

    let mut keep = tokio::time::interval(cfg.lease_ttl / 3);
    let mut beat_period = fleet.period();
    let mut beat = tokio::time::interval(beat_period);
    let mut look = tokio::time::interval(Duration::from_millis(100));
    for t in [&mut keep, &mut beat, &mut look] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            // Watch events first: a tick that has waited must not judge members on
            // heartbeats still queued. (Events come in bursts at handovers; a stream
            // busy for a whole lease_ttl/3, which would delay the keep-alive, would
            // need thousands of writes a second.)
            biased;
            msg = watch.message() => {
                let resp = msg.map_err(|e| format!("watch: {e}"))?.ok_or("watch ended")?;
                if resp.canceled() {
                    return Err(format!("watch canceled: {}", resp.cancel_reason()));
                }
                let mut changed = false;
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let Ok(key) = kv.key_str() else { continue };
                    let value = match ev.event_type() {
                        EventType::Put => kv.value_str().ok(),
                        EventType::Delete => None,
                    };
                    changed |= fleet.absorb(app, key, value, kv.mod_revision());
                }
                let handover = fleet.recompute(app, changed);
                hand_over(&mut client, fleet, app, handover, lease, limit).await?;
            }
            _ = keep.tick() => {
                timed(limit, "lease keep-alive", keeper.keep_alive()).await?;
                match timed(limit, "lease keep-alive", alive.message()).await? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => return Err("the lease expired".into()),
                }
            }
            _ = beat.tick() => {
                round += 1;
                timed(limit, "heartbeat", client.put(fleet.key(&format!("rounds/{}", cfg.node)), beat_value(round, beat_period), on_lease())).await?;
            }
            _ = look.tick() => {
                if app.draining.get() {
                    // Hand the backends to the others at once rather than after the lease.
                    let _ = timed(limit, "lease revoke", client.lease_revoke(lease)).await;
                    return Ok(());
                }
                // A reload may have changed the pools' intervals.
                let period = heartbeat_period(&app.config(), cfg.lease_ttl);
                if period != beat_period {
                    beat_period = period;
                    *fleet.period.lock().unwrap() = (period, freshness_bound(period));
                    beat = tokio::time::interval(period);
                    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
                let handover = fleet.recompute(app, false);
                hand_over(&mut client, fleet, app, handover, lease, limit).await?;
            }
            Some(ev) = transitions.recv() => {
                let mine = fleet.view.lock().unwrap().owned.contains(&(ev.pool.clone(), ev.address.clone()));
                if let (true, Some(value)) = (mine, health_value(ev.health, &ev.reason)) {
                    let key = fleet.key(&format!("health/{}/{}/{}", ev.pool, ev.address, cfg.node));
                    timed(limit, "put", client.put(key, value, on_lease())).await?;
                }
            }
        }
    }
}

/// A member's set of backends, the same on every member that has the same set.
pub fn fingerprint(mut backends: Vec<(String, String)>) -> u64 {
    backends.sort_unstable();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (p, a) in &backends {
        for b in p.bytes().chain([0xff]).chain(a.bytes()).chain([0xfe]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A heartbeat: its round, and the period it is sent at (others judge this member's
/// freshness by it).
fn beat_value(round: u64, period: Duration) -> String {
    json!({"round": round, "period_ms": period.as_millis() as u64}).to_string()
}

/// etcd's default limit on operations in one transaction.
const TXN_OPS: usize = 128;

/// Writes the current state of backends just taken over (if known) and deletes what
/// this member had published about backends it no longer owns (so a stale word never
/// comes back if they return to it), in transactions of up to [`TXN_OPS`].
async fn hand_over(
    client: &mut Client,
    fleet: &Fleet,
    app: &Reach,
    handover: Handover,
    lease: i64,
    limit: Duration,
) -> Result<(), String> {
    if handover.announce {
        let value = fleet.member_value(app);
        let key = fleet.key(&format!("members/{}", fleet.config.node));
        let options = PutOptions::new().with_lease(lease);
        timed(limit, "put", client.put(key, value, Some(options))).await?;
    }
    let key = |p: &str, a: &str| fleet.key(&format!("health/{p}/{a}/{}", fleet.config.node));
    let mut ops: Vec<TxnOp> = handover
        .released
        .iter()
        .map(|(p, a)| TxnOp::delete(key(p, a), None))
        .collect();
    if !handover.taken.is_empty() {
        let taken: HashSet<_> = handover.taken.into_iter().collect();
        for s in app.checker.status() {
            if !taken.contains(&(s.pool.clone(), s.address.clone())) {
                continue;
            }
            let reason = s.last_error.clone().unwrap_or_else(|| "taken over".into());
            if let Some(value) = health_value(s.health, &reason) {
                let options = PutOptions::new().with_lease(lease);
                ops.push(TxnOp::put(key(&s.pool, &s.address), value, Some(options)));
            }
        }
    }
    while !ops.is_empty() {
        let batch: Vec<TxnOp> = ops.drain(..ops.len().min(TXN_OPS)).collect();
        timed(limit, "txn", client.txn(Txn::new().and_then(batch))).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_owners_are_stable_spread_and_move_only_from_a_leaving_member() {
        let three: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut count: HashMap<&str, usize> = HashMap::new();
        let backends: Vec<String> = (0..3000)
            .map(|i| format!("10.0.{}.{}:80", i / 250, i % 250))
            .collect();
        for b in &backends {
            let o = owners(&three, 1, b);
            assert_eq!(o.len(), 1);
            *count.entry(o[0]).or_default() += 1;
        }
        for n in ["a", "b", "c"] {
            assert!((850..=1150).contains(&count[n]), "{count:?}");
        }
        // c leaves: only c's backends move.
        let two: Vec<String> = three[..2].to_vec();
        for b in &backends {
            let before = owners(&three, 1, b)[0];
            let after = owners(&two, 1, b)[0];
            if before != "c" {
                assert_eq!(before, after);
            }
        }
        // Two copies: two different owners.
        let o = owners(&three, 2, "x:1");
        assert_eq!(o.len(), 2);
        assert_ne!(o[0], o[1]);
        assert_eq!(owners(&three, 5, "x:1").len(), 3);
    }

    #[test]
    fn the_freshness_bound_is_two_heartbeats_and_a_second() {
        assert_eq!(
            freshness_bound(Duration::from_millis(200)),
            Duration::from_millis(1400)
        );
    }
}
