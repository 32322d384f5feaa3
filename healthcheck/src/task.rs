//! One backend's task: sleep until the next deadline, take a permit, check, record,
//! schedule the next check from the end of this one. Also ends ejections on time and
//! considers new ones when the request path reports failures.
//!
//! Because the next deadline counts from the end of the previous check, one backend
//! never has two checks in flight, however slow it is.

use crate::membership::AdminState;
use crate::metrics::CheckerMetrics;
use crate::outcome::{Checked, Outcome};
use crate::probe::Probes;
use crate::schedule::{base_delay, initial_delay, next_delay};
use crate::shared::{ProbeRegistry, ProbeState, SharedProbe};
use crate::spec::BackendSpec;
use crate::state::{Health, Transition};
use crate::table::{BackendTable, Slot};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, MutexGuard, Notify, Semaphore};
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

/// Each pass: wait for the check to fall due, run it (or take a fresh enough shared
/// result), apply its outcome.
async fn run(alive: Alive, slot: Arc<Slot>, start: Start) {
    let mut task = Task::new(&alive.0, slot, start);
    loop {
        let probe = match task.wait().await {
            Pass::Stop => return,
            Pass::Again => continue,
            Pass::Check(probe) => probe,
        };
        if task.skip() {
            continue;
        }
        let Some(checked) = task.check(&probe).await else {
            return;
        };
        task.apply(&checked);
    }
}

/// How a wait for the next check ended.
enum Pass {
    /// The backend was removed, or the checker shut down: the task ends.
    Stop,
    /// Woken for something else (maintenance, a spec change, an ejection); wait again.
    Again,
    /// The check is due, through this probe.
    Check(Arc<SharedProbe>),
}

/// What a backend's task keeps from one pass to the next.
struct Task<'a> {
    shared: &'a Shared,
    slot: Arc<Slot>,
    stop: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
    rng: StdRng,
    spec: Arc<BackendSpec>,
    /// The probe is taken on the first pass that probes (not for a backend owned
    /// elsewhere).
    held: Option<Arc<SharedProbe>>,
    /// The shared probe's result this backend took last (never take one twice).
    seen: u64,
    /// Checks asked for at once take no result that started before they were asked.
    forced: bool,
    owned: bool,
    deadline: Instant,
}

impl<'a> Task<'a> {
    fn new(shared: &'a Shared, slot: Arc<Slot>, start: Start) -> Self {
        let mut rng = StdRng::from_entropy();
        let spec = slot.spec();
        let deadline = Instant::now()
            + match start {
                Start::Spread => initial_delay(&spec.policy.schedule, &mut rng),
                Start::Now => Duration::ZERO,
            };
        Task {
            shared,
            stop: slot.stopped(),
            shutdown: shared.shutdown.subscribe(),
            rng,
            spec,
            held: None,
            seen: 0,
            forced: false,
            owned: slot.owned(),
            deadline,
            slot,
        }
    }

    /// Waits until the check falls due, or something else happens first.
    async fn wait(&mut self) -> Pass {
        if *self.stop.borrow() || *self.shutdown.borrow() {
            return Pass::Stop;
        }
        if self.slot.admin() == AdminState::Maintenance {
            return self.pause().await;
        }
        let probing = self.probing();
        let ejected_until = if probing {
            self.slot.scheduled(self.deadline)
        } else {
            self.slot.scheduled_none();
            self.slot.ejected_until()
        };
        let slot = &*self.slot;
        tokio::select! {
            _ = self.stop.changed() => Pass::Stop,
            _ = self.shutdown.changed() => Pass::Stop,
            _ = slot.changed().notified() => self.reread_spec(),
            _ = slot.check_now().notified() => {
                self.deadline = Instant::now();
                self.forced = true;
                Pass::Again
            }
            _ = slot.endpoint().wake.notified() => {
                if self.shared.table.consider_ejection(slot) {
                    self.shared.changed.notify_one();
                }
                Pass::Again
            }
            _ = sleep_until(ejected_until.unwrap_or(self.deadline)), if ejected_until.is_some() => {
                if slot.end_ejection(Instant::now()) {
                    self.shared.changed.notify_one();
                }
                Pass::Again
            }
            _ = sleep_until(self.deadline), if probing => {
                self.held.clone().map_or(Pass::Again, Pass::Check)
            }
        }
    }

    /// Maintenance: no checks, and no hold on the check connection, until the operator
    /// changes it (or anything else about the backend).
    async fn pause(&mut self) -> Pass {
        self.held = None;
        self.slot.set_probe_id(0);
        self.slot.scheduled_none();
        tokio::select! {
            _ = self.stop.changed() => return Pass::Stop,
            _ = self.shutdown.changed() => return Pass::Stop,
            _ = self.slot.changed().notified() => {}
        }
        self.spec = self.slot.spec();
        self.deadline = Instant::now();
        self.forced = true;
        Pass::Again
    }

    /// Whether this pass probes the backend; takes the probe, or lets it go.
    fn probing(&mut self) -> bool {
        // Ownership is read on every pass: a wake-up that told of it may have been taken
        // by another branch (maintenance, a spec change).
        let owned = self.slot.owned();
        if owned && !self.owned {
            // Taken over from a fleet member: probed at once, from the last shared state.
            self.deadline = Instant::now();
            self.forced = true;
        }
        self.owned = owned;
        // A backend owned elsewhere is still probed here while it is suspect: only a
        // check can end a suspicion that keeps requests away (its health stays the
        // owner's).
        // (Not while the owner says it is down: suspicion could never end, and nothing is
        // routed to it anyway.)
        let probing = owned || (self.slot.is_suspect() && self.slot.tracker().health == Health::Up);
        if !probing {
            // A fleet member probes it: no checks, no check connection; passive
            // ejection still runs here.
            self.held = None;
            self.slot.set_probe_id(0);
        } else if self.held.is_none() {
            self.held = Some(probe_for(self.shared, &self.slot, &self.spec));
        }
        probing
    }

    /// The spec changed: the probe is let go if it no longer fits, and the schedule
    /// follows.
    fn reread_spec(&mut self) -> Pass {
        if self.slot.admin() == AdminState::Maintenance {
            return Pass::Again;
        }
        let new = self.slot.spec();
        if new.policy.probe != self.spec.policy.probe
            || new.socket_addr != self.spec.socket_addr
            || new.policy.timeout != self.spec.policy.timeout
        {
            // Taken again on the next pass that probes.
            self.held = None;
        }
        if new.policy.schedule != self.spec.policy.schedule {
            // Keep the state; only the spacing changes, from now.
            let t = self.slot.tracker();
            self.deadline = self
                .deadline
                .min(Instant::now() + next_delay(&t, &new.policy.schedule, &mut self.rng));
        }
        self.spec = new;
        Pass::Again
    }

    /// `skip_while_serving`: true if live traffic stands in for the check due, which
    /// is then scheduled anew. Never with agent checks: traffic going well says nothing
    /// of what the agent would.
    fn skip(&mut self) -> bool {
        let policy = &self.spec.policy;
        if !(policy.skip_while_serving && !policy.agent && self.slot.skip_check()) {
            return false;
        }
        self.deadline = Instant::now()
            + next_delay(
                &self.slot.tracker(),
                &self.spec.policy.schedule,
                &mut self.rng,
            );
        true
    }

    /// The check's outcome, its latency and when it ended: a result another pool's
    /// check of the same backend took recently enough (less than half this backend's
    /// interval before it fell due) is taken as is, and judged by this pool's settings.
    /// None if the task is to end.
    async fn check(&mut self, probe: &SharedProbe) -> Option<Checked> {
        let not_before = if std::mem::take(&mut self.forced) {
            self.deadline
        } else {
            let fresh = base_delay(&self.slot.tracker(), &self.spec.policy.schedule) / 2;
            self.deadline.checked_sub(fresh).unwrap_or(self.deadline)
        };
        let state = tokio::select! {
            s = probe.state.lock() => s,
            _ = self.stop.changed() => return None,
            _ = self.shutdown.changed() => return None,
        };
        match state.reusable(not_before, self.seen) {
            Some(shot) => {
                drop(state);
                self.seen = shot.seq;
                Some(self.judged(shot.outcome, shot.ended - shot.started, shot.ended, 0))
            }
            None => self.probe(state).await,
        }
    }

    /// A check's raw outcome judged by this pool's settings, and counted.
    fn judged(&self, raw: Outcome, latency: Duration, ended: Instant, opened: u64) -> Checked {
        let (outcome, agent) = crate::outcome::judge(raw, self.spec.policy.agent);
        self.slot.count_check(&outcome, latency, opened);
        Checked {
            outcome,
            agent,
            latency,
            ended,
        }
    }

    /// Probes the backend under the global bound on checks in flight, and keeps the
    /// result for the other pools that share the probe.
    async fn probe(&mut self, mut state: MutexGuard<'_, ProbeState>) -> Option<Checked> {
        let shared = self.shared;
        // Stopping comes first: a permit freed by a check that shutdown just cancelled
        // must not start a new one while the backend still answers the old (the bound
        // holds at the backends too).
        let permit = tokio::select! {
            biased;
            _ = self.stop.changed() => return None,
            _ = self.shutdown.changed() => return None,
            p = shared.permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return None, // closed: the checker is gone
            },
        };
        // The permit may have been freed by a check that shutdown cancelled after this
        // task last looked at the shutdown signal (another thread sent it between the
        // two polls above): the signal is set before any such permit is freed, so
        // reading it now closes that window.
        if *self.shutdown.borrow() {
            return None;
        }
        let started = Instant::now();
        shared
            .metrics
            .lag
            .observe(started.duration_since(self.deadline).as_secs_f64());
        let in_flight = InFlight::new(shared);
        let opened_before = state.probe.connections_opened();
        let spec = &self.spec;
        let outcome = tokio::select! {
            o = tokio::time::timeout(spec.policy.timeout, state.probe.check(&spec.policy.probe)) => {
                o.unwrap_or(Outcome::Timeout)
            }
            _ = self.stop.changed() => return None,
            _ = self.shutdown.changed() => return None,
        };
        let ended = Instant::now();
        drop(in_flight);
        drop(permit);
        let opened = state.probe.connections_opened() - opened_before;
        self.seen = state.keep(started, ended, outcome.clone());
        drop(state);
        shared
            .stats
            .connections_opened
            .fetch_add(opened, Ordering::Relaxed);
        shared.stats.checks_done.fetch_add(1, Ordering::Relaxed);
        Some(self.judged(outcome, ended.duration_since(started), ended, opened))
    }

    /// Records the outcome, publishes a transition to the fleet, and schedules the
    /// next check from the end of this one. For a backend owned elsewhere (or no longer
    /// ours since the check began) the owner's word is the health: a pass only ends a
    /// local suspicion.
    fn apply(&mut self, c: &Checked) {
        let shared = self.shared;
        self.owned = self.slot.owned();
        let tracker = if self.owned {
            let (tracker, changed, transition) =
                self.slot
                    .record(&c.outcome, c.agent.as_ref(), c.latency, c.ended);
            if changed {
                shared.changed.notify_one();
            }
            if let Some(t) = transition {
                self.publish(t);
            }
            tracker
        } else {
            if c.outcome.is_success() && self.slot.unsuspect() {
                shared.changed.notify_one();
            }
            self.slot.tracker()
        };
        self.deadline = c.ended + next_delay(&tracker, &self.spec.policy.schedule, &mut self.rng);
    }

    /// Sends a health transition to the fleet, if this process is in one.
    fn publish(&self, t: Transition) {
        if let Some(tx) = self.shared.transitions.lock().unwrap().as_ref() {
            let _ = tx.send(HealthEvent {
                pool: self.slot.key().0.to_string(),
                address: self.slot.key().1.to_string(),
                health: t.to,
                reason: t.reason,
            });
        }
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
