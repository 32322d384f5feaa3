//! The checker: one task per backend, a global bound on checks in flight, and a
//! publisher that hands the proxy a new [`Membership`](crate::Membership) whenever a backend's routing
//! state or the set of backends changed.
//!
//! Live state is in the [`BackendTable`](crate::table); `apply` adds, removes and
//! updates backends while checks run, and a kept backend keeps its state and schedule
//! whatever else changed.

use crate::membership::{AdminState, Publish};
use crate::metrics::{CheckerMetrics, PoolMetrics};
use crate::probe::{NetProbes, Probes};
use crate::spec::BackendSpec;
use crate::state::Health;
use crate::status::BackendStatus;
use crate::table::{BackendTable, Key, Slot, SpecChange};
use crate::task::{HealthEvent, Shared, Start, Stats};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::{watch, Notify, Semaphore};

#[derive(Debug, Clone)]
pub struct CheckerOptions {
    pub max_concurrent_checks: usize,
    pub per_backend_metrics: bool,
}

impl Default for CheckerOptions {
    fn default() -> Self {
        CheckerOptions {
            max_concurrent_checks: 1024,
            per_backend_metrics: true,
        }
    }
}

/// Whether this process probes a backend, by (pool, address).
pub type Owns = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// What `apply` changed, as `pool/address` names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<String>,
}

impl ApplyReport {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.updated.is_empty()
    }
}

/// Handle to the running checker; cheap to clone.
#[derive(Clone)]
pub struct Checker {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    publisher: Arc<dyn Publish>,
    /// Set when the membership may have changed; cleared by the publish that reads it.
    dirty: AtomicBool,
    /// One publish at a time, so an older membership never overwrites a newer one.
    publishing: Mutex<()>,
    permit_total: Mutex<usize>,
    pools: Mutex<HashMap<Arc<str>, PoolMetrics>>,
    /// Set by the first `apply`: backends it brings are spread over `fast_interval`
    /// (a thousand backends must not fire at once); later ones are checked at once.
    applied: AtomicBool,
    /// Bumped when `apply` adds or removes backends.
    generation: std::sync::atomic::AtomicU64,
    /// Which backends this process probes (a fleet's rule); None: all of them. Asked
    /// for every backend `apply` adds, before its first check.
    owns: Mutex<Option<Owns>>,
    /// Health found by the process this one took over from, by (pool, address), used
    /// once when such a backend is added.
    seed: Mutex<HashMap<(String, String), (Health, AdminState)>>,
    runtime: Handle,
}

impl Checker {
    /// Starts a checker whose tasks run on `runtime`; nothing is checked until `apply`.
    pub fn new(
        runtime: Handle,
        options: CheckerOptions,
        publisher: Arc<dyn Publish>,
        registry: &prometheus::Registry,
    ) -> prometheus::Result<Checker> {
        Checker::with_probes(runtime, options, publisher, registry, Arc::new(NetProbes))
    }

    /// [`Checker::new`] with the probes given: tests script them.
    pub fn with_probes(
        runtime: Handle,
        options: CheckerOptions,
        publisher: Arc<dyn Publish>,
        registry: &prometheus::Registry,
        probes: Arc<dyn Probes>,
    ) -> prometheus::Result<Checker> {
        let permits = options.max_concurrent_checks.max(1);
        let shared = Arc::new(Shared {
            table: BackendTable::default(),
            stats: Stats::default(),
            metrics: CheckerMetrics::new(registry, options.per_backend_metrics)?,
            probes,
            probes_shared: Default::default(),
            permits: Arc::new(Semaphore::new(permits)),
            changed: Notify::new(),
            transitions: Mutex::new(None),
            shutdown: watch::channel(false).0,
        });
        let inner = Arc::new(Inner {
            shared,
            publisher,
            dirty: AtomicBool::new(false),
            publishing: Mutex::new(()),
            permit_total: Mutex::new(permits),
            pools: Mutex::new(HashMap::new()),
            applied: AtomicBool::new(false),
            generation: Default::default(),
            owns: Mutex::new(None),
            seed: Mutex::new(HashMap::new()),
            runtime: runtime.clone(),
        });
        runtime.spawn(republish(Arc::downgrade(&inner), inner.shared.clone()));
        runtime.spawn(watch_stalls(inner.shared.clone()));
        Ok(Checker { inner })
    }

    /// Makes the set of checked backends exactly `specs`.
    pub fn apply(&self, specs: Vec<BackendSpec>) -> ApplyReport {
        let mut report = ApplyReport::default();
        let inner = &self.inner;
        let shared = &inner.shared;
        let first = !inner.applied.swap(true, Ordering::SeqCst);
        let start = if first { Start::Spread } else { Start::Now };
        let wanted: HashSet<Key> = specs
            .iter()
            .map(|s| (s.pool.as_str().into(), s.address.as_str().into()))
            .collect();
        for key in shared.table.retain(&wanted) {
            shared.metrics.remove_backend(&key.0, &key.1);
            report.removed.push(format!("{}/{}", key.0, key.1));
        }

        let mut pools_seen = HashSet::new();
        let mut reordered = false;
        for (order, spec) in specs.into_iter().enumerate() {
            let key: Key = (spec.pool.as_str().into(), spec.address.as_str().into());
            let name = format!("{}/{}", key.0, key.1);
            pools_seen.insert(key.0.clone());
            if let Some(slot) = shared.table.get(&key) {
                match slot.set_spec(spec, order) {
                    SpecChange::Settings => report.updated.push(name),
                    SpecChange::Order => reordered = true,
                    SpecChange::None => {}
                }
                continue;
            }
            let slot = Arc::new(Slot::new(
                spec,
                order,
                &shared.metrics,
                self.pool_metrics(&key.0),
            ));
            report.added.push(name);
            let seeded = inner
                .seed
                .lock()
                .unwrap()
                .remove(&(key.0.to_string(), key.1.to_string()));
            if let Some((health, admin)) = seeded {
                slot.seed(health, admin);
            }
            if let Some(owns) = inner.owns.lock().unwrap().as_ref() {
                slot.set_owned(owns(&key.0, &key.1));
            }
            shared.table.insert(slot.clone());
            crate::task::spawn(&inner.runtime, shared, slot, start);
        }

        inner.pools.lock().unwrap().retain(|name, _| {
            let keep = pools_seen.contains(name);
            if !keep {
                shared.metrics.remove_pool(name);
            }
            keep
        });
        if !report.added.is_empty() || !report.removed.is_empty() {
            inner.generation.fetch_add(1, Ordering::SeqCst);
        }
        // Only a membership that changed is published (the `Publish` promise).
        if reordered || !report.is_empty() {
            inner.dirty.store(true, Ordering::SeqCst);
            self.publish_now();
        }
        report
    }

    fn pool_metrics(&self, pool: &Arc<str>) -> PoolMetrics {
        let mut pools = self.inner.pools.lock().unwrap();
        pools
            .entry(pool.clone())
            .or_insert_with(|| self.inner.shared.metrics.pool(pool))
            .clone()
    }

    /// Changes the global bound on checks in flight.
    pub fn set_max_concurrent_checks(&self, n: usize) {
        let n = n.max(1);
        let permits = &self.inner.shared.permits;
        let mut total = self.inner.permit_total.lock().unwrap();
        if n > *total {
            permits.add_permits(n - *total);
        } else if n < *total {
            // Permits held by running checks are forgotten as they come back.
            let forgotten = permits.forget_permits(*total - n);
            let rest = (*total - n) - forgotten;
            if rest > 0 {
                let permits = permits.clone();
                self.inner.runtime.spawn(async move {
                    if let Ok(p) = permits.acquire_many(rest as u32).await {
                        p.forget();
                    }
                });
            }
        }
        *total = n;
    }

    /// Rebuilds the membership and hands it to the publisher if anything changed since
    /// the last one.
    pub fn publish_now(&self) {
        let inner = &self.inner;
        let _one = inner.publishing.lock().unwrap();
        if !inner.dirty.swap(false, Ordering::SeqCst) {
            return;
        }
        let membership = inner.shared.table.membership(&inner.shared.metrics);
        inner.publisher.publish(Arc::new(membership));
    }

    /// Before the first `apply`: the health and admin state another vigil found for
    /// backends, by (pool, address). Backends the first `apply` brings that are named
    /// here start from that state instead of unknown.
    pub fn seed(&self, states: HashMap<(String, String), (Health, AdminState)>) {
        *self.inner.seed.lock().unwrap() = states;
    }

    /// Sets a backend's admin state; `None` if no such backend. Returns the state
    /// before.
    pub fn set_admin(&self, pool: &str, address: &str, admin: AdminState) -> Option<AdminState> {
        let slot = self
            .inner
            .shared
            .table
            .get(&(pool.into(), address.into()))?;
        let before = slot.set_admin(admin);
        if before != admin {
            self.inner.dirty.store(true, Ordering::SeqCst);
            self.publish_now();
        }
        Some(before)
    }

    /// From now on, every health transition of a backend this process probes is sent
    /// here (a fleet publishes them). Replaces an earlier receiver.
    pub fn transitions(&self) -> tokio::sync::mpsc::UnboundedReceiver<HealthEvent> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.inner.shared.transitions.lock().unwrap() = Some(tx);
        rx
    }

    /// Every backend, as (pool, address).
    pub fn backends(&self) -> Vec<(String, String)> {
        self.inner
            .shared
            .table
            .slots()
            .iter()
            .map(|s| (s.key().0.to_string(), s.key().1.to_string()))
            .collect()
    }

    /// Increases whenever `apply` adds or removes backends.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// Which backends this process probes (`owns(pool, address)`); the others take
    /// their health from [`Checker::set_shared_health`]. A backend taken over is
    /// probed at once, from the health it had. Returns how many it probes.
    pub fn set_owned(&self, owns: Owns) -> usize {
        let mut n = 0;
        // Backends added from now on are asked too.
        *self.inner.owns.lock().unwrap() = Some(owns.clone());
        for slot in self.inner.shared.table.slots() {
            let mine = owns(&slot.key().0, &slot.key().1);
            slot.set_owned(mine);
            n += usize::from(mine);
        }
        n
    }

    /// Whether this process probes the backend; None if there is no such backend.
    pub fn owned(&self, pool: &str, address: &str) -> Option<bool> {
        let slot = self
            .inner
            .shared
            .table
            .get(&(pool.into(), address.into()))?;
        Some(slot.owned())
    }

    /// A fleet member's result for a backend this process does not probe. Ignored for
    /// a backend it probes itself (its own checks decide) or does not have. True if the
    /// health changed (logged once, published).
    pub fn set_shared_health(
        &self,
        pool: &str,
        address: &str,
        health: Health,
        reason: &str,
    ) -> bool {
        let Some(slot) = self.inner.shared.table.get(&(pool.into(), address.into())) else {
            return false;
        };
        if slot.owned() || !slot.shared_health(health, reason) {
            return false;
        }
        // The publisher task rebuilds once for a burst of these.
        self.inner.shared.changed.notify_one();
        true
    }

    /// Every backend's live detail, by pool then configuration order.
    pub fn status(&self) -> Vec<BackendStatus> {
        self.inner.shared.table.status()
    }

    /// Stops every task and waits up to `timeout` for them to end (each drops its
    /// check connection); true if they all did.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        let _ = self.inner.shared.shutdown.send(true);
        tokio::time::timeout(timeout, self.inner.shared.stats.all_ended())
            .await
            .is_ok()
    }

    /// Backend tasks still running (for leak tests and the admin API).
    pub fn tasks_alive(&self) -> usize {
        self.inner.shared.stats.tasks_alive()
    }

    /// Tasks alive on the checker's runtime (backend tasks, the publisher, and
    /// whatever else the owner spawned there).
    pub fn runtime_tasks(&self) -> usize {
        self.inner.runtime.metrics().num_alive_tasks()
    }

    /// Most checks ever in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.inner.shared.stats.peak_in_flight()
    }

    /// Probes alive: one per distinct (address, check settings) not in maintenance.
    pub fn probes(&self) -> usize {
        self.inner.shared.probes_shared.len()
    }

    pub fn checks_done(&self) -> u64 {
        self.inner.shared.stats.checks_done()
    }

    pub fn connections_opened(&self) -> u64 {
        self.inner.shared.stats.connections_opened()
    }

    pub fn len(&self) -> usize {
        self.inner.shared.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How often stuck requests are looked for.
const STALL_WATCH: Duration = Duration::from_millis(50);

/// Looks for backends with stuck requests (see `table/stall.rs`).
async fn watch_stalls(shared: Arc<Shared>) {
    let mut stop = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(STALL_WATCH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let (changed, suspects) = shared.table.watch_stalls();
        for s in suspects {
            s.check_now().notify_one();
        }
        if changed {
            shared.changed.notify_one();
        }
    }
}

/// Tasks only mark the membership changed; this one task rebuilds it, so a thousand
/// backends coming up at once cost a few rebuilds, not a thousand.
async fn republish(inner: std::sync::Weak<Inner>, shared: Arc<Shared>) {
    let mut stop = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = shared.changed.notified() => {}
            _ = stop.changed() => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        inner.dirty.store(true, Ordering::SeqCst);
        // Rebuilding is O(backends) and the proxy's snapshot build with it: do it off
        // the checker's thread, or ten thousand backends coming up at once would starve
        // the very checks whose timeouts are running.
        let rebuilt = tokio::task::spawn_blocking(move || Checker { inner }.publish_now()).await;
        if rebuilt.is_err() {
            return;
        }
    }
}
