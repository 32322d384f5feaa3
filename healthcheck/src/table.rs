//! The backend table: the one owner of every backend's live state (health, check
//! history, ejection). Backend tasks record into it, the publisher and the admin
//! status read it; all through the methods here.
//!
//! Keyed by (pool, address) in a `DashMap`, so `apply` can add, remove and update
//! backends while checks run; a kept backend keeps its state whatever else changed.

use crate::membership::{clock_ms, AdminState, Endpoint, Member, MemberState, Membership};
use crate::metrics::{BackendMetrics, CheckerMetrics, PoolMetrics, STATES};
use crate::outcome::Outcome;
use crate::spec::BackendSpec;
use crate::state::{Health, Tracker, Transition, Verdict};
use crate::status::BackendStatus;
use dashmap::DashMap;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

mod stall;

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
            *guard = (Arc::new(spec), order);
            drop(guard);
            self.changed.notify_one();
        } else {
            guard.1 = order;
        }
        change
    }

    pub fn owned(&self) -> bool {
        self.owned.load(Ordering::SeqCst)
    }

    /// A check passed on a backend owned elsewhere: ends a suspicion, touches nothing
    /// else. True if it was suspect.
    pub fn unsuspect(&self) -> bool {
        let live = self.live.lock().unwrap();
        self.clear_suspect_on_check(live)
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

    /// Another fleet member's result for a backend this process does not probe: the
    /// health becomes `health` (one log line and the usual metrics if it changed).
    /// True if it changed.
    pub fn shared_health(&self, health: Health, reason: &str) -> bool {
        let mut live = self.live.lock().unwrap();
        if live.tracker.health == health {
            return false;
        }
        let t = Transition {
            from: live.tracker.health,
            to: health,
            consecutive: 0,
            reason: reason.to_string(),
        };
        live.tracker = Tracker {
            health,
            ..Tracker::default()
        };
        live.last_transition = Instant::now();
        if health != Health::Up {
            live.last_error = Some(reason.to_string());
        }
        self.refresh_state_metrics(&mut live);
        if let Some(m) = &self.metrics {
            m.record_transition(health.as_str());
        }
        let suspect = live.suspect.is_some();
        self.log_transition(&t, live.ejected_until.is_some());
        drop(live);
        if suspect && health == Health::Up {
            // Up again by its owner's word while suspect here: probe it locally.
            self.check_now.notify_one();
        }
        true
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

    /// Counts one finished check in the metrics.
    pub fn count_check(&self, outcome: &Outcome, latency: Duration, connections_opened: u64) {
        if connections_opened > 0 {
            self.pool_metrics.connections.inc_by(connections_opened);
        }
        self.pool_metrics.duration.observe(latency.as_secs_f64());
        if let Some(m) = &self.metrics {
            m.record_check(outcome.label());
        }
    }

    /// Applies one check's outcome; logs a transition. Returns the state after it and
    /// whether routing changed.
    pub fn record(
        &self,
        outcome: &Outcome,
        latency: Duration,
        at: Instant,
    ) -> (Tracker, bool, Option<Transition>) {
        let spec = self.spec();
        let timeout = spec.policy.timeout;
        let verdict = if outcome.is_success() {
            Verdict::Pass
        } else {
            Verdict::Fail
        };
        let mut live = self.live.lock().unwrap();
        live.served_mark = clock_ms();
        live.checks += 1;
        live.last_check = Some(at);
        live.last_latency = Some(latency);
        let describe = || outcome.describe(timeout);
        let transition = live
            .tracker
            .observe(verdict, describe, &spec.policy.thresholds);
        if !outcome.is_success() {
            live.last_error = Some(describe());
        }
        if let Some(t) = &transition {
            live.last_transition = at;
            self.refresh_state_metrics(&mut live);
            if let Some(m) = &self.metrics {
                m.record_transition(t.to.as_str());
            }
            self.log_transition(t, live.ejected_until.is_some());
        } else {
            tracing::debug!(pool = %self.key.0, backend = %self.key.1, result = outcome.label(), ?latency, "health check");
        }
        let tracker = live.tracker.clone();
        let unsuspected = outcome.is_success() && self.clear_suspect_on_check(live);
        let changed = transition.is_some() || unsuspected;
        (tracker, changed, transition)
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
    /// maintenance forgets the health it had (it was not checked meanwhile): the backend
    /// is checked at once and routed after that check passes.
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

    /// `skip_while_serving`: true if the check due now may be skipped because live
    /// requests to the backend succeeded since the last check (and none failed), and it
    /// is up and trusted. Counts the skip.
    pub fn skip_check(&self) -> bool {
        let mut live = self.live.lock().unwrap();
        let quiet_success = self.endpoint.served_well_since(live.served_mark);
        live.served_mark = clock_ms();
        let trusted = live.tracker.health == Health::Up
            && live.suspect.is_none()
            && live.ejected_until.is_none();
        if !(quiet_success && trusted) {
            return false;
        }
        live.checks_skipped += 1;
        if let Some(m) = &self.metrics {
            m.record_skip();
        }
        tracing::debug!(pool = %self.key.0, backend = %self.key.1, "health check skipped: live requests succeeded");
        true
    }

    fn log_transition(&self, t: &Transition, ejected: bool) {
        let (pool, backend, reason) = (&*self.key.0, &*self.key.1, t.reason.as_str());
        let (from, to, consecutive) = (t.from.as_str(), t.to.as_str(), t.consecutive);
        // One line per change: up is news, anything else a warning.
        macro_rules! line {
            ($level:ident, $message:literal) => {
                tracing::$level!(
                    pool,
                    backend,
                    from,
                    to,
                    reason,
                    consecutive,
                    ejected,
                    $message
                )
            };
        }
        if t.to == Health::Up {
            line!(info, "backend is up");
        } else {
            line!(warn, "backend is down");
        }
    }

    fn is_ejected(&self) -> bool {
        self.live.lock().unwrap().ejected_until.is_some()
    }

    /// Down by its checks, ejected or suspect (what `max_ejected_percent` counts).
    pub(crate) fn is_unavailable(&self) -> bool {
        self.live.lock().unwrap().unavailable()
    }

    /// Ejects for the policy's (doubling, decaying) duration unless already ejected.
    /// The caller holds the table's ejection lock and has checked the pool's share.
    fn eject(&self, failures: u32, now: Instant) {
        let spec = self.spec();
        let policy = &spec.policy.passive;
        let mut live = self.live.lock().unwrap();
        if live.ejected_until.is_some() {
            return;
        }
        let clean_for = live
            .last_ejection_end
            .map(|t| now.duration_since(t))
            .unwrap_or(Duration::MAX);
        let previous = policy.decayed(live.ejections, clean_for);
        let duration = policy.ejection_duration(previous);
        live.ejections = previous + 1;
        live.ejected_until = Some(now + duration);
        live.last_error = Some(format!("{failures} failures in a row on live traffic"));
        self.refresh_state_metrics(&mut live);
        if let Some(m) = &self.metrics {
            m.record_ejection();
            m.record_transition("ejected");
        }
        let reason =
            format!("{failures} failures in a row on live traffic; ejected for {duration:?}");
        tracing::warn!(
            pool = &*self.key.0,
            backend = &*self.key.1,
            from = live.tracker.health.as_str(),
            to = "ejected",
            reason = reason.as_str(),
            consecutive = failures,
            "backend ejected"
        );
    }

    /// Ends an ejection whose time is over; true if it did.
    pub fn end_ejection(&self, now: Instant) -> bool {
        let mut live = self.live.lock().unwrap();
        let Some(until) = live.ejected_until else {
            return false;
        };
        if now < until {
            return false;
        }
        live.ejected_until = None;
        live.last_ejection_end = Some(now);
        self.endpoint.clear_passive_failures();
        self.refresh_state_metrics(&mut live);
        tracing::info!(
            pool = &*self.key.0,
            backend = &*self.key.1,
            from = "ejected",
            to = live.tracker.health.as_str(),
            reason = "ejection time ended",
            consecutive = 0u32,
            "backend ejection ended"
        );
        true
    }

    fn member(&self) -> (usize, Member) {
        let (spec, order) = self.spec.lock().unwrap().clone();
        let live = self.live.lock().unwrap();
        let member = Member {
            endpoint: self.endpoint.clone(),
            weight: spec.weight,
            state: live.member_state(),
            recent_failures: live
                .tracker
                .consecutive_failures
                .saturating_add(live.ejections)
                .saturating_add(self.endpoint.passive_failures()),
        };
        drop(live);
        (order, member)
    }

    fn status(&self, now: Instant) -> (usize, BackendStatus) {
        let (spec, order) = self.spec.lock().unwrap().clone();
        let live = self.live.lock().unwrap().clone();
        let since = |t: Instant| now.saturating_duration_since(t);
        let status = BackendStatus {
            pool: spec.pool.clone(),
            address: spec.address.clone(),
            weight: spec.weight,
            health: live.tracker.health,
            ejected: live.ejected_until.is_some(),
            suspect: live.suspect.is_some(),
            admin: live.admin,
            checks_skipped: live.checks_skipped,
            consecutive_successes: live.tracker.consecutive_successes,
            consecutive_failures: live.tracker.consecutive_failures,
            checks: live.checks,
            last_check_ago: live.last_check.map(since),
            last_latency: live.last_latency,
            next_check_in: live.next_check.map(|t| t.saturating_duration_since(now)),
            last_error: live.last_error,
            last_transition_ago: since(live.last_transition),
            ejected_for: live.ejected_until.map(|t| t.saturating_duration_since(now)),
            in_flight_requests: self.endpoint.in_flight(),
            shared_with: Vec::new(),
            probe_id: 0,
        };
        (order, status)
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

    /// The request path reported the policy's failures in a row: ejects `slot` unless
    /// that would pass the pool's `max_ejected_percent`, which counts every backend the
    /// pool has lost (down, ejected or suspect), so that passive ejection never takes
    /// the last capacity of a pool already losing backends. True if it was ejected.
    pub fn consider_ejection(&self, slot: &Slot) -> bool {
        let spec = slot.spec();
        let policy = &spec.policy.passive;
        let failures = slot.endpoint.passive_failures();
        if !policy.enabled() || failures < policy.consecutive_failures {
            return false;
        }
        let _one_at_a_time = self.ejection_lock.lock().unwrap();
        slot.endpoint.clear_passive_failures();
        if slot.is_ejected() {
            return false;
        }
        let (mut out, mut size) = (0usize, 0usize);
        for s in self.slots.iter().filter(|s| s.key.0 == slot.key.0) {
            size += 1;
            if s.key != slot.key && s.is_unavailable() {
                out += 1;
            }
        }
        if !policy.may_eject(out, size) {
            tracing::debug!(pool = %slot.key.0, backend = %slot.key.1, "not ejected: max_ejected_percent reached");
            return false;
        }
        slot.eject(failures, Instant::now());
        true
    }

    /// Every pool's members in configuration order; sets the per-pool state counts.
    pub fn membership(&self, metrics: &CheckerMetrics) -> Membership {
        let mut pools: BTreeMap<Arc<str>, Vec<(usize, Member)>> = BTreeMap::new();
        for s in self.slots.iter() {
            pools.entry(s.key.0.clone()).or_default().push(s.member());
        }
        let mut membership = Membership::default();
        let mut rescuing = self.rescuing.lock().unwrap();
        rescuing.retain(|p| pools.contains_key(p));
        for (pool, mut members) in pools {
            members.sort_by_key(|(order, _)| *order);
            let mut members: Vec<Member> = members.into_iter().map(|(_, m)| m).collect();
            let rescued = crate::membership::route_held_out(&mut members);
            if rescued != rescuing.contains(&pool) {
                Self::log_rescue(&pool, &members, rescued);
                metrics.set_rescue(&pool, rescued);
                if rescued {
                    rescuing.insert(pool.clone());
                } else {
                    rescuing.remove(&pool);
                }
            }
            let mut counts = [0i64; STATES.len()];
            for m in &members {
                let i = STATES
                    .iter()
                    .position(|s| *s == m.state.label())
                    .unwrap_or(0);
                counts[i] += 1;
            }
            metrics.set_pool_counts(&pool, counts);
            membership.pools.insert(pool, members);
        }
        membership
    }

    /// One line when a pool starts routing to held-out backends, one when it stops.
    fn log_rescue(pool: &str, members: &[Member], rescued: bool) {
        if rescued {
            let backends: Vec<&str> = members
                .iter()
                .filter(|m| m.state.rescued)
                .map(|m| &*m.endpoint.address)
                .collect();
            tracing::warn!(
                pool,
                backends = backends.join(",").as_str(),
                "pool routing to ejected backends: no other backend is routable"
            );
        } else {
            tracing::info!(
                pool,
                "pool no longer routing to ejected backends: another backend is routable, or none passes its checks"
            );
        }
    }

    /// Every backend's live detail, by pool then configuration order.
    pub fn status(&self) -> Vec<BackendStatus> {
        let now = Instant::now();
        let mut out: Vec<(Arc<str>, usize, BackendStatus)> = self
            .slots
            .iter()
            .map(|s| {
                let (order, mut status) = s.status(now);
                status.probe_id = s.probe_id.load(Ordering::Relaxed);
                (s.key.0.clone(), order, status)
            })
            .collect();
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        // Which other pools share each backend's probe.
        let mut by_probe: std::collections::HashMap<u64, Vec<String>> = Default::default();
        for s in self.slots.iter() {
            let id = s.probe_id.load(Ordering::Relaxed);
            if id != 0 {
                by_probe.entry(id).or_default().push(s.key.0.to_string());
            }
        }
        out.into_iter()
            .map(|(_, _, mut s)| {
                if let Some(pools) = by_probe.get(&s.probe_id) {
                    s.shared_with = pools.iter().filter(|p| **p != s.pool).cloned().collect();
                    s.shared_with.sort();
                }
                s
            })
            .collect()
    }
}
