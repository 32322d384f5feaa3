//! One backend's task: sleep until the next deadline, take a permit, check, record,
//! schedule the next check from the end of this one. Also ends ejections on time and
//! considers new ones when the request path reports failures.
//!
//! Because the next deadline counts from the end of the previous check, one backend
//! never has two checks in flight, however slow it is.

use crate::membership::AdminState;
use crate::metrics::CheckerMetrics;
use crate::outcome::Outcome;
use crate::probe::Probes;
use crate::schedule::{base_delay, initial_delay, next_delay};
use crate::shared::{ProbeRegistry, SharedProbe};
use crate::spec::BackendSpec;
use crate::state::Health;
use crate::table::{BackendTable, Slot};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::{sleep_until, Instant};

/// Checker-wide counts, for tests and the admin API.
#[derive(Default)]
pub(crate) struct Stats {
    tasks_alive: AtomicUsize,
    /// Notified when the last task ends.
    all_ended: Notify,
    checks_in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    checks_done: AtomicU64,
    connections_opened: AtomicU64,
}

impl Stats {
    pub fn tasks_alive(&self) -> usize {
        self.tasks_alive.load(Ordering::SeqCst)
    }

    pub fn peak_in_flight(&self) -> usize {
        self.peak_in_flight.load(Ordering::SeqCst)
    }

    pub fn checks_done(&self) -> u64 {
        self.checks_done.load(Ordering::Relaxed)
    }

    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Ordering::Relaxed)
    }

    /// Returns once no backend task is running.
    pub async fn all_ended(&self) {
        loop {
            let ended = self.all_ended.notified();
            if self.tasks_alive() == 0 {
                return;
            }
            ended.await;
        }
    }
}

/// What every backend task shares.
pub(crate) struct Shared {
    pub table: BackendTable,
    pub stats: Stats,
    pub metrics: CheckerMetrics,
    pub probes: Arc<dyn Probes>,
    /// One probe per (address, check settings), shared by the pools naming it.
    pub probes_shared: ProbeRegistry,
    /// The global bound on checks in flight.
    pub permits: Arc<Semaphore>,
    /// A task changed a backend's routing state: the publisher rebuilds the membership.
    pub changed: Notify,
    /// Where health transitions of backends this process probes are sent (a fleet
    /// publishes them); None outside a fleet.
    pub transitions: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<HealthEvent>>>,
    pub shutdown: watch::Sender<bool>,
}

/// A backend this process probes changed health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    pub pool: String,
    pub address: String,
    pub health: crate::state::Health,
    pub reason: String,
}

/// When a new backend's first check happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// At a random point in `[0, fast_interval)`: backends known at start-up.
    Spread,
    /// At once: a backend added while running (reload). The global bound on checks
    /// in flight still applies.
    Now,
}

/// Counts the task as alive from creation to drop, however it ends.
struct Alive(Arc<Shared>);

impl Alive {
    fn new(shared: Arc<Shared>) -> Self {
        shared.stats.tasks_alive.fetch_add(1, Ordering::SeqCst);
        Alive(shared)
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        if self.0.stats.tasks_alive.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.stats.all_ended.notify_waiters();
        }
    }
}

/// One check in flight: counted (and its peak kept) from creation to drop, however the
/// check ends.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn new(shared: &'a Shared) -> Self {
        let now = shared.stats.checks_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.stats.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        shared.metrics.in_flight.inc();
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.stats.checks_in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.in_flight.dec();
    }
}

/// Starts the task of a backend just put in the table.
pub(crate) fn spawn(
    runtime: &tokio::runtime::Handle,
    shared: &Arc<Shared>,
    slot: Arc<Slot>,
    start: Start,
) {
    let alive = Alive::new(shared.clone());
    runtime.spawn(run(alive, slot, start));
}

async fn run(alive: Alive, slot: Arc<Slot>, start: Start) {
    let shared = &*alive.0;
    let mut stop = slot.stopped();
    let mut shutdown = shared.shutdown.subscribe();
    let mut rng = StdRng::from_entropy();
    let mut spec = slot.spec();
    // The probe is taken on the first pass that probes (not for a backend owned
    // elsewhere).
    let mut held: Option<Arc<SharedProbe>> = None;
    // The shared probe's result this backend took last (never take one twice).
    let mut seen = 0u64;
    // Checks asked for at once take no result that started before they were asked.
    let mut forced = false;
    let mut owned = slot.owned();
    let mut deadline = Instant::now()
        + match start {
            Start::Spread => initial_delay(&spec.policy.schedule, &mut rng),
            Start::Now => Duration::ZERO,
        };

    loop {
        if *stop.borrow() || *shutdown.borrow() {
            return;
        }
        if slot.admin() == AdminState::Maintenance {
            // No checks, and no hold on the check connection.
            held = None;
            slot.set_probe_id(0);
            slot.scheduled_none();
            tokio::select! {
                _ = stop.changed() => return,
                _ = shutdown.changed() => return,
                _ = slot.changed().notified() => {}
            }
            spec = slot.spec();
            deadline = Instant::now();
            forced = true;
            continue;
        }
        // Ownership is read on every pass: a wake-up that told of it may have been taken
        // by another branch (maintenance, a spec change).
        let now_owned = slot.owned();
        if now_owned && !owned {
            // Taken over from a fleet member: probed at once, from the last shared state.
            deadline = Instant::now();
            forced = true;
        }
        owned = now_owned;
        // A backend owned elsewhere is still probed here while it is suspect: only a
        // check can end a suspicion that keeps requests away (its health stays the
        // owner's).
        // (Not while the owner says it is down: suspicion could never end, and nothing is
        // routed to it anyway.)
        let probing = owned || (slot.is_suspect() && slot.tracker().health == Health::Up);
        if !probing {
            // A fleet member probes it: no checks, no check connection; passive
            // ejection still runs here.
            held = None;
            slot.set_probe_id(0);
        } else if held.is_none() {
            held = Some(probe_for(shared, &slot, &spec));
        }
        let probe = held.clone();
        let ejected_until = if probing {
            slot.scheduled(deadline)
        } else {
            slot.scheduled_none();
            slot.ejected_until()
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = shutdown.changed() => return,
            _ = slot.changed().notified() => {
                if slot.admin() == AdminState::Maintenance {
                    continue;
                }
                let new = slot.spec();
                if new.policy.probe != spec.policy.probe
                    || new.socket_addr != spec.socket_addr
                    || new.policy.timeout != spec.policy.timeout
                {
                    // Taken again on the next pass that probes.
                    held = None;
                }
                if new.policy.schedule != spec.policy.schedule {
                    // Keep the state; only the spacing changes, from now.
                    let t = slot.tracker();
                    deadline = deadline.min(Instant::now() + next_delay(&t, &new.policy.schedule, &mut rng));
                }
                spec = new;
                continue;
            }
            _ = slot.check_now().notified() => {
                deadline = Instant::now();
                forced = true;
                continue;
            }
            _ = slot.endpoint().wake.notified() => {
                if shared.table.consider_ejection(&slot) {
                    shared.changed.notify_one();
                }
                continue;
            }
            _ = sleep_until(ejected_until.unwrap_or(deadline)), if ejected_until.is_some() => {
                if slot.end_ejection(Instant::now()) {
                    shared.changed.notify_one();
                }
                continue;
            }
            _ = sleep_until(deadline), if probing => {}
        }
        let Some(probe) = probe else { continue };
        if spec.policy.skip_while_serving && slot.skip_check() {
            deadline =
                Instant::now() + next_delay(&slot.tracker(), &spec.policy.schedule, &mut rng);
            continue;
        }

        // A result another pool's check of the same backend took recently enough
        // (less than half this backend's interval before it fell due) is taken as is.
        let not_before = if std::mem::take(&mut forced) {
            deadline
        } else {
            let fresh = base_delay(&slot.tracker(), &spec.policy.schedule) / 2;
            deadline.checked_sub(fresh).unwrap_or(deadline)
        };
        let mut state = tokio::select! {
            s = probe.state.lock() => s,
            _ = stop.changed() => return,
            _ = shutdown.changed() => return,
        };
        let (outcome, latency, ended) = match state.reusable(not_before, seen) {
            Some(shot) => {
                drop(state);
                seen = shot.seq;
                slot.count_check(&shot.outcome, shot.ended - shot.started, 0);
                (shot.outcome, shot.ended - shot.started, shot.ended)
            }
            None => {
                // Stopping comes first: a permit freed by a check that shutdown just
                // cancelled must not start a new one while the backend still answers
                // the old (the bound holds at the backends too).
                let permit = tokio::select! {
                    biased;
                    _ = stop.changed() => return,
                    _ = shutdown.changed() => return,
                    p = shared.permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return, // closed: the checker is gone
                    },
                };
                let started = Instant::now();
                shared
                    .metrics
                    .lag
                    .observe(started.duration_since(deadline).as_secs_f64());
                let in_flight = InFlight::new(shared);
                let opened_before = state.probe.connections_opened();
                let outcome = tokio::select! {
                    o = tokio::time::timeout(spec.policy.timeout, state.probe.check(&spec.policy.probe)) => {
                        o.unwrap_or(Outcome::Timeout)
                    }
                    _ = stop.changed() => return,
                    _ = shutdown.changed() => return,
                };
                let ended = Instant::now();
                drop(in_flight);
                drop(permit);
                let opened = state.probe.connections_opened() - opened_before;
                seen = state.keep(started, ended, outcome.clone());
                drop(state);
                shared
                    .stats
                    .connections_opened
                    .fetch_add(opened, Ordering::Relaxed);
                shared.stats.checks_done.fetch_add(1, Ordering::Relaxed);
                let latency = ended.duration_since(started);
                slot.count_check(&outcome, latency, opened);
                (outcome, latency, ended)
            }
        };
        owned = slot.owned();
        if !owned {
            // Owned elsewhere (or no longer ours since the check began): the owner's
            // word is the health; a pass only ends a local suspicion.
            if outcome.is_success() && slot.unsuspect() {
                shared.changed.notify_one();
            }
            deadline = ended + next_delay(&slot.tracker(), &spec.policy.schedule, &mut rng);
            continue;
        }
        let (tracker, changed, transition) = slot.record(&outcome, latency, ended);
        if changed {
            shared.changed.notify_one();
        }
        if let Some(t) = transition {
            if let Some(tx) = shared.transitions.lock().unwrap().as_ref() {
                let _ = tx.send(HealthEvent {
                    pool: slot.key().0.to_string(),
                    address: slot.key().1.to_string(),
                    health: t.to,
                    reason: t.reason,
                });
            }
        }
        deadline = ended + next_delay(&tracker, &spec.policy.schedule, &mut rng);
    }
}

/// The shared probe for this backend's address and check settings.
fn probe_for(shared: &Shared, slot: &Slot, spec: &BackendSpec) -> Arc<SharedProbe> {
    let p = shared.probes_shared.get(
        &*shared.probes,
        spec.socket_addr,
        &spec.policy.probe,
        spec.policy.timeout,
    );
    slot.set_probe_id(p.id);
    p
}
