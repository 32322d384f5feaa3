//! The backend table: the one owner of every backend's live state (health, check
//! history, ejection, what its agent said). Backend tasks record into it, the
//! publisher and the admin status read it; all through the methods here and in the
//! submodules: `checks` (what a check changes), `agent`, `ejection`, `stall` (suspects)
//! and `views` (membership, status).
//!
//! Keyed by (pool, address) in a `DashMap`, so `apply` can add, remove and update
//! backends while checks run; a kept backend keeps its state whatever else changed.

use crate::agent::AgentState;
use crate::membership::{AdminState, Endpoint, MemberState};
use crate::metrics::{BackendMetrics, CheckerMetrics, PoolMetrics};
use crate::spec::BackendSpec;
use crate::state::{Health, Tracker};
use dashmap::DashMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

mod agent;
mod checks;
mod ejection;
mod stall;
mod views;

/// (pool, address) as configured.
pub(crate) type Key = (Arc<str>, Arc<str>);

/// Live state of one backend.
#[derive(Debug, Clone)]
struct Live {
    tracker: Tracker,
    checks: u64,
    last_check: Option<Instant>,
    last_latency: Option<Duration>,
    next_check: Option<Instant>,
    last_error: Option<String>,
    last_transition: Instant,
    ejected_until: Option<Instant>,
    /// Ejections on record, before decay.
    ejections: u32,
    last_ejection_end: Option<Instant>,
    /// Suspect (stuck requests): since when, and the endpoint's progress mark then.
    suspect: Option<(Instant, u64)>,
    admin: AdminState,
    /// What its agent said (pools with `health_check.agent`).
    agent: AgentState,
    /// Routable at the last state change, and ever (slow start is for a return).
    routable: bool,
    been_routable: bool,
    checks_skipped: u64,
    /// When the last check ran or was skipped, in `clock_ms`.
    served_mark: u64,
}

impl Live {
    fn new(now: Instant) -> Self {
        Live {
            tracker: Tracker::default(),
            checks: 0,
            last_check: None,
            last_latency: None,
            next_check: None,
            last_error: None,
            last_transition: now,
            ejected_until: None,
            ejections: 0,
            last_ejection_end: None,
            suspect: None,
            admin: AdminState::Ready,
            agent: AgentState::default(),
            routable: false,
            been_routable: false,
            checks_skipped: 0,
            served_mark: 0,
        }
    }

    fn member_state(&self) -> MemberState {
        MemberState {
            health: self.tracker.health,
            ejected: self.ejected_until.is_some(),
            suspect: self.suspect.is_some(),
            admin: self.admin,
            agent: self.agent.hold(),
            rescued: false,
        }
    }

    /// Down by its checks, ejected or suspect: capacity the pool has lost.
    fn unavailable(&self) -> bool {
        self.tracker.health == Health::Down
            || self.ejected_until.is_some()
            || self.suspect.is_some()
    }
}

/// How a spec given to [`Slot::set_spec`] differs from the one in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpecChange {
    None,
    /// Only its position among the pool's backends.
    Order,
    /// Its settings: the task must re-read them.
    Settings,
}

/// One backend in the table.
pub(crate) struct Slot {
    key: Key,
    endpoint: Arc<Endpoint>,
    spec: Mutex<(Arc<BackendSpec>, usize)>,
    live: Mutex<Live>,
    stop: watch::Sender<bool>,
    changed: Notify,
    /// Check at once (the backend became suspect).
    check_now: Notify,
    metrics: Option<BackendMetrics>,
    pool_metrics: PoolMetrics,
    /// The shared probe this backend's checks go through (0: none, in maintenance).
    probe_id: AtomicU64,
    /// Probed by this process (always, outside a fleet); false: a fleet member owns it
    /// and its results arrive through [`Slot::shared_health`].
    owned: AtomicBool,
}

impl Slot {
    pub fn new(
        spec: BackendSpec,
        order: usize,
        metrics: &CheckerMetrics,
        pool_metrics: PoolMetrics,
    ) -> Slot {
        let key: Key = (spec.pool.as_str().into(), spec.address.as_str().into());
        let endpoint = Endpoint::new(
            &spec.pool,
            &spec.address,
            spec.socket_addr,
            spec.policy.passive.consecutive_failures,
        );
        endpoint.set_slow_start(spec.slow_start);
        Slot {
            endpoint: Arc::new(endpoint),
            metrics: metrics.backend(&key.0, &key.1),
            pool_metrics,
            spec: Mutex::new((Arc::new(spec), order)),
            live: Mutex::new(Live::new(Instant::now())),
            stop: watch::channel(false).0,
            changed: Notify::new(),
            check_now: Notify::new(),
            probe_id: AtomicU64::new(0),
            owned: AtomicBool::new(true),
            key,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn spec(&self) -> Arc<BackendSpec> {
        // Poisoning needs a panic while holding this short lock; none of its users panic.
        self.spec.lock().unwrap().0.clone()
    }

    /// Replaces the spec; a settings change wakes the task.
    pub fn set_spec(&self, spec: BackendSpec, order: usize) -> SpecChange {
        let mut guard = self.spec.lock().unwrap();
        let change = if *guard.0 != spec {
            SpecChange::Settings
        } else if guard.1 != order {
            SpecChange::Order
        } else {
            SpecChange::None
        };
        if change == SpecChange::Settings {
            self.endpoint
                .set_passive_threshold(spec.policy.passive.consecutive_failures);
            self.endpoint.set_slow_start(spec.slow_start);
            let agent_off = guard.0.policy.agent && !spec.policy.agent;
            *guard = (Arc::new(spec), order);
            drop(guard);
            if agent_off {
                let mut live = self.live.lock().unwrap();
                self.forget_agent(&mut live, "health_check.agent turned off");
            }
            self.changed.notify_one();
        } else {
            guard.1 = order;
        }
        change
    }

    pub fn owned(&self) -> bool {
        self.owned.load(Ordering::SeqCst)
    }

    /// Whether this process probes the backend (a fleet decides); wakes the task.
    /// Returns true if it changed.
    pub fn set_owned(&self, owned: bool) -> bool {
        let changed = self.owned.swap(owned, Ordering::SeqCst) != owned;
        if changed {
            self.changed.notify_one();
        }
        changed
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    pub fn set_probe_id(&self, id: u64) {
        self.probe_id.store(id, Ordering::Relaxed);
    }

    /// Wakes when the spec changed.
    pub fn changed(&self) -> &Notify {
        &self.changed
    }

    /// Wakes when the backend should be checked at once.
    pub fn check_now(&self) -> &Notify {
        &self.check_now
    }

    /// Ends the backend's task (removed from the config).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn tracker(&self) -> Tracker {
        self.live.lock().unwrap().tracker.clone()
    }

    /// Notes the next check's deadline; returns when an ejection ends, if ejected.
    pub fn scheduled(&self, deadline: Instant) -> Option<Instant> {
        let mut live = self.live.lock().unwrap();
        live.next_check = Some(deadline);
        live.ejected_until
    }

    /// When the ejection in force ends, if one is.
    pub fn ejected_until(&self) -> Option<Instant> {
        self.live.lock().unwrap().ejected_until
    }

    /// No check is scheduled (maintenance).
    pub fn scheduled_none(&self) {
        self.live.lock().unwrap().next_check = None;
    }

    /// After any change of state: metrics, and slow start when the backend becomes
    /// routable again (not the first time: a backend at start gets its full weight).
    fn refresh_state_metrics(&self, live: &mut Live) {
        let s = live.member_state();
        let routable = s.routable();
        if routable && !live.routable && live.been_routable {
            self.endpoint.start_ramp();
        }
        live.routable = routable;
        live.been_routable |= routable;
        if let Some(m) = &self.metrics {
            m.set_state(s.label(), routable);
            m.set_admin(live.admin);
        }
    }

    pub fn admin(&self) -> AdminState {
        self.live.lock().unwrap().admin
    }

    /// Sets the operator's state; logs a change. Returns the state before. Leaving
    /// maintenance forgets the health it had, and what its agent said (it was not
    /// checked meanwhile): the backend is checked at once and routed after that check
    /// passes.
    pub fn set_admin(&self, admin: AdminState) -> AdminState {
        let mut live = self.live.lock().unwrap();
        let before = live.admin;
        if before == admin {
            return before;
        }
        live.admin = admin;
        // A backend owned by another fleet member kept receiving its owner's results.
        if before == AdminState::Maintenance && self.owned() {
            live.tracker = Tracker::default();
            live.last_transition = Instant::now();
            self.forget_agent(&mut live, "maintenance ended");
        }
        self.refresh_state_metrics(&mut live);
        tracing::info!(
            pool = &*self.key.0,
            backend = &*self.key.1,
            from = before.as_str(),
            to = admin.as_str(),
            "backend admin state changed"
        );
        drop(live);
        // The task stops or resumes checking.
        self.changed.notify_one();
        if before == AdminState::Maintenance {
            self.check_now.notify_one();
        }
        before
    }

    /// Starts with the health another process had found (a binary upgrade), so the
    /// backend is routed from the first moment without a flap to unknown.
    pub fn seed(&self, health: Health, admin: AdminState) {
        let mut live = self.live.lock().unwrap();
        live.tracker.health = health;
        live.admin = admin;
        self.refresh_state_metrics(&mut live);
    }
}

/// Every backend being checked.
#[derive(Default)]
pub(crate) struct BackendTable {
    slots: DashMap<Key, Arc<Slot>>,
    /// Serialises ejection decisions so two backends cannot both take the last slot.
    ejection_lock: Mutex<()>,
    /// Per pool: resends of stuck requests still allowed, and its requests counted so
    /// far (see `stall.rs`).
    resends: Mutex<std::collections::HashMap<Arc<str>, (f64, u64)>>,
    /// Pools routing to held-out backends now, because nothing else is routable.
    rescuing: Mutex<HashSet<Arc<str>>>,
}

impl BackendTable {
    pub fn get(&self, key: &Key) -> Option<Arc<Slot>> {
        self.slots.get(key).map(|s| s.clone())
    }

    pub fn insert(&self, slot: Arc<Slot>) {
        self.slots.insert(slot.key.clone(), slot);
    }

    /// Removes and stops every backend whose key is not in `wanted`; returns their keys.
    pub fn retain(&self, wanted: &HashSet<Key>) -> Vec<Key> {
        let gone: Vec<Key> = self
            .slots
            .iter()
            .filter(|s| !wanted.contains(s.key()))
            .map(|s| s.key().clone())
            .collect();
        for key in &gone {
            if let Some((_, slot)) = self.slots.remove(key) {
                // The task sees this, ends, and drops its pooled connection with it.
                slot.stop();
            }
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Every backend's slot.
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.slots.iter().map(|s| s.clone()).collect()
    }
}
