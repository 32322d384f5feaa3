//! The checker: one task per backend, a global bound on checks in flight, and a
//! publisher that hands the proxy a new [`Membership`] only when it changed.
//!
//! State lives in a `DashMap` keyed by (pool, address), so `apply` can add, remove and
//! update backends while checks run; a kept backend keeps its state and schedule
//! whatever else changed.

use crate::membership::{Backend, Member, MemberState, Membership, Publish};
use crate::metrics::{BackendMetrics, CheckerMetrics, PoolMetrics};
use crate::passive::PassivePolicy;
use crate::probe::ProbeSpec;
use crate::schedule::Schedule;
use crate::state::{Thresholds, Tracker};
use crate::task::Start;
use dashmap::DashMap;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

/// How one pool's backends are checked.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckPolicy {
    pub probe: ProbeSpec,
    pub thresholds: Thresholds,
    pub schedule: Schedule,
    /// The whole check, connect included, counted from when it really starts.
    pub timeout: Duration,
    pub passive: PassivePolicy,
}

impl Default for CheckPolicy {
    fn default() -> Self {
        CheckPolicy {
            probe: ProbeSpec::Http(Default::default()),
            thresholds: Thresholds::default(),
            schedule: Schedule::default(),
            timeout: Duration::from_secs(2),
            passive: PassivePolicy::default(),
        }
    }
}

/// One backend as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSpec {
    pub pool: String,
    pub address: String,
    pub socket_addr: SocketAddr,
    pub weight: u32,
    pub policy: Arc<CheckPolicy>,
}

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

pub(crate) type Key = (Arc<str>, Arc<str>);

/// Live detail of one backend, for the admin API.
#[derive(Debug, Clone)]
pub(crate) struct Detail {
    pub tracker: Tracker,
    pub checks: u64,
    pub last_check: Option<Instant>,
    pub last_latency: Option<Duration>,
    pub next_check: Option<Instant>,
    pub last_error: Option<String>,
    pub last_transition: Instant,
    pub ejected_until: Option<Instant>,
    /// Ejections on record, before decay.
    pub ejections: u32,
    pub last_ejection_end: Option<Instant>,
}

pub(crate) struct Entry {
    pub key: Key,
    pub backend: Arc<Backend>,
    pub spec: Mutex<(Arc<BackendSpec>, usize)>,
    pub detail: Mutex<Detail>,
    pub stop: watch::Sender<bool>,
    /// The spec changed: the task reloads it.
    pub changed: Notify,
    pub metrics: Option<BackendMetrics>,
    pub pool_metrics: PoolMetrics,
}

impl Entry {
    pub fn spec(&self) -> Arc<BackendSpec> {
        // Poisoning needs a panic while holding this short lock; none of its users panic.
        self.spec.lock().unwrap().0.clone()
    }

    pub fn member_state(d: &Detail) -> MemberState {
        MemberState {
            health: d.tracker.health,
            ejected: d.ejected_until.is_some(),
        }
    }

    pub fn refresh_state_metrics(&self, d: &Detail) {
        if let Some(m) = &self.metrics {
            let s = Self::member_state(d);
            m.set_state(s.label(), s.routable());
        }
    }
}

pub(crate) struct Inner {
    pub entries: DashMap<Key, Arc<Entry>>,
    pub permits: Arc<Semaphore>,
    permit_total: Mutex<usize>,
    publisher: Arc<dyn Publish>,
    last_published: Mutex<Option<Arc<Membership>>>,
    pub republish: Arc<Notify>,
    pub metrics: CheckerMetrics,
    pools: Mutex<HashMap<Arc<str>, PoolMetrics>>,
    pub tasks_alive: AtomicUsize,
    /// Set by the first `apply`: backends it brings are spread over `fast_interval`
    /// (a thousand backends must not fire at once); later ones are checked at once.
    applied: AtomicBool,
    pub checks_in_flight: AtomicUsize,
    pub peak_in_flight: AtomicUsize,
    pub checks_done: AtomicU64,
    pub connections_opened: AtomicU64,
    /// Serialises ejection decisions so two backends cannot both take the last slot.
    pub ejection_lock: Mutex<()>,
    pub shutdown: watch::Sender<bool>,
    runtime: Handle,
}

/// Handle to the running checker; cheap to clone.
#[derive(Clone)]
pub struct Checker {
    pub(crate) inner: Arc<Inner>,
}

impl Checker {
    /// Starts a checker whose tasks run on `runtime`; nothing is checked until `apply`.
    pub fn new(
        runtime: Handle,
        options: CheckerOptions,
        publisher: Arc<dyn Publish>,
        registry: &prometheus::Registry,
    ) -> prometheus::Result<Checker> {
        let permits = options.max_concurrent_checks.max(1);
        let inner = Arc::new(Inner {
            entries: DashMap::new(),
            permits: Arc::new(Semaphore::new(permits)),
            permit_total: Mutex::new(permits),
            publisher,
            last_published: Mutex::new(None),
            republish: Arc::new(Notify::new()),
            metrics: CheckerMetrics::new(registry, options.per_backend_metrics)?,
            pools: Mutex::new(HashMap::new()),
            tasks_alive: AtomicUsize::new(0),
            applied: AtomicBool::new(false),
            checks_in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            checks_done: AtomicU64::new(0),
            connections_opened: AtomicU64::new(0),
            ejection_lock: Mutex::new(()),
            shutdown: watch::channel(false).0,
            runtime: runtime.clone(),
        });
        let weak = Arc::downgrade(&inner);
        let republish = inner.republish.clone();
        let mut stop = inner.shutdown.subscribe();
        runtime.spawn(async move {
            // Transitions only mark the membership dirty; this one task rebuilds it,
            // so a thousand backends coming up at once cost a few rebuilds, not a thousand.
            loop {
                tokio::select! {
                    _ = republish.notified() => {}
                    _ = stop.changed() => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                // Rebuilding is O(backends) and the proxy's snapshot build with it: do it
                // off the checker's thread, or ten thousand backends coming up at once
                // would starve the very checks whose timeouts are running.
                let rebuilt =
                    tokio::task::spawn_blocking(move || Checker { inner }.publish_now()).await;
                if rebuilt.is_err() {
                    return;
                }
            }
        });
        Ok(Checker { inner })
    }

    /// Makes the set of checked backends exactly `specs`.
    pub fn apply(&self, specs: Vec<BackendSpec>) -> ApplyReport {
        let mut report = ApplyReport::default();
        let inner = &self.inner;
        let first = !inner.applied.swap(true, Ordering::SeqCst);
        let start = if first { Start::Spread } else { Start::Now };
        let wanted: HashSet<(String, String)> = specs
            .iter()
            .map(|s| (s.pool.clone(), s.address.clone()))
            .collect();
        let gone: Vec<Key> = inner
            .entries
            .iter()
            .filter(|e| !wanted.contains(&(e.key().0.to_string(), e.key().1.to_string())))
            .map(|e| e.key().clone())
            .collect();
        for key in gone {
            if let Some((_, entry)) = inner.entries.remove(&key) {
                // The task sees this, ends, and drops its pooled connection with it.
                let _ = entry.stop.send(true);
                inner.metrics.remove_backend(&key.0, &key.1);
                report.removed.push(format!("{}/{}", key.0, key.1));
            }
        }

        let mut pools_seen = HashSet::new();
        for (order, spec) in specs.into_iter().enumerate() {
            let key: Key = (spec.pool.as_str().into(), spec.address.as_str().into());
            pools_seen.insert(key.0.clone());
            let spec = Arc::new(spec);
            if let Some(entry) = inner.entries.get(&key).map(|e| e.clone()) {
                let mut guard = entry.spec.lock().unwrap();
                if *guard.0 != *spec || guard.1 != order {
                    let changed = *guard.0 != *spec;
                    entry
                        .backend
                        .set_passive_threshold(spec.policy.passive.consecutive_failures);
                    *guard = (spec, order);
                    drop(guard);
                    if changed {
                        entry.changed.notify_one();
                        report.updated.push(format!("{}/{}", key.0, key.1));
                    }
                }
                continue;
            }
            let pool_metrics = self.pool_metrics(&key.0);
            let entry = Arc::new(Entry {
                backend: Arc::new(Backend::new(
                    &spec.pool,
                    &spec.address,
                    spec.socket_addr,
                    spec.policy.passive.consecutive_failures,
                )),
                metrics: inner.metrics.backend(&key.0, &key.1),
                pool_metrics,
                spec: Mutex::new((spec, order)),
                detail: Mutex::new(Detail {
                    tracker: Tracker::default(),
                    checks: 0,
                    last_check: None,
                    last_latency: None,
                    next_check: None,
                    last_error: None,
                    last_transition: Instant::now(),
                    ejected_until: None,
                    ejections: 0,
                    last_ejection_end: None,
                }),
                stop: watch::channel(false).0,
                changed: Notify::new(),
                key: key.clone(),
            });
            report.added.push(format!("{}/{}", key.0, key.1));
            inner.entries.insert(key, entry.clone());
            inner.tasks_alive.fetch_add(1, Ordering::SeqCst);
            inner
                .runtime
                .spawn(crate::task::run(inner.clone(), entry, start));
        }

        let mut pools = inner.pools.lock().unwrap();
        pools.retain(|name, _| {
            let keep = pools_seen.contains(name);
            if !keep {
                inner.metrics.remove_pool(name);
            }
            keep
        });
        drop(pools);
        self.publish_now();
        report
    }

    fn pool_metrics(&self, pool: &Arc<str>) -> PoolMetrics {
        let mut pools = self.inner.pools.lock().unwrap();
        pools
            .entry(pool.clone())
            .or_insert_with(|| self.inner.metrics.pool(pool))
            .clone()
    }

    /// Changes the global bound on checks in flight.
    pub fn set_max_concurrent_checks(&self, n: usize) {
        let n = n.max(1);
        let mut total = self.inner.permit_total.lock().unwrap();
        if n > *total {
            self.inner.permits.add_permits(n - *total);
        } else if n < *total {
            // Permits held by running checks are forgotten as they come back.
            let forgotten = self.inner.permits.forget_permits(*total - n);
            let rest = (*total - n) - forgotten;
            if rest > 0 {
                let permits = self.inner.permits.clone();
                self.inner.runtime.spawn(async move {
                    if let Ok(p) = permits.acquire_many(rest as u32).await {
                        p.forget();
                    }
                });
            }
        }
        *total = n;
    }

    /// Rebuilds the membership and hands it to the publisher if it changed.
    pub fn publish_now(&self) {
        let inner = &self.inner;
        let mut last = inner.last_published.lock().unwrap();
        let mut pools: BTreeMap<Arc<str>, Vec<(usize, Member)>> = BTreeMap::new();
        for e in inner.entries.iter() {
            let (spec, order) = e.spec.lock().unwrap().clone();
            let state = Entry::member_state(&e.detail.lock().unwrap());
            pools.entry(e.key.0.clone()).or_default().push((
                order,
                Member {
                    backend: e.backend.clone(),
                    weight: spec.weight,
                    state,
                },
            ));
        }
        let mut membership = Membership::default();
        for (pool, mut members) in pools {
            members.sort_by_key(|(order, _)| *order);
            let mut counts = [0i64; 4];
            for (_, m) in &members {
                let i = crate::metrics::STATES
                    .iter()
                    .position(|s| *s == m.state.label())
                    .unwrap_or(0);
                counts[i] += 1;
            }
            inner.metrics.set_pool_counts(&pool, counts);
            membership
                .pools
                .insert(pool, members.into_iter().map(|(_, m)| m).collect());
        }
        if last.as_deref() != Some(&membership) {
            let m = Arc::new(membership);
            *last = Some(m.clone());
            inner.publisher.publish(m);
        }
    }

    /// Stops every task; the checker does nothing after this.
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
    }

    /// Backend tasks still running (for leak tests and the admin API).
    pub fn tasks_alive(&self) -> usize {
        self.inner.tasks_alive.load(Ordering::SeqCst)
    }

    /// Tasks alive on the checker's runtime (backend tasks, the publisher, and
    /// whatever else the owner spawned there).
    pub fn runtime_tasks(&self) -> usize {
        self.inner.runtime.metrics().num_alive_tasks()
    }

    /// Most checks ever in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.inner.peak_in_flight.load(Ordering::SeqCst)
    }

    pub fn checks_done(&self) -> u64 {
        self.inner.checks_done.load(Ordering::Relaxed)
    }

    pub fn connections_opened(&self) -> u64 {
        self.inner.connections_opened.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.inner.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.entries.is_empty()
    }
}
