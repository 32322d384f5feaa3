//! One backend's task: sleep until the next deadline, take a permit, check, record,
//! schedule the next check from the end of this one. Also ends ejections on time and
//! considers new ones when the request path reports failures.
//!
//! Because the next deadline counts from the end of the previous check, one backend
//! never has two checks in flight, however slow it is.

use crate::checker::{BackendSpec, Entry, Inner};
use crate::probe::{Outcome, Prober};
use crate::schedule::{initial_delay, next_delay};
use crate::state::{Transition, Verdict};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::{sleep_until, Instant};

/// Decrements the live-task count however the task ends.
struct Alive(Arc<Inner>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.tasks_alive.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One check in flight: counted (and its peak kept) from creation to drop, however the
/// check ends.
struct InFlight<'a>(&'a Inner);

impl<'a> InFlight<'a> {
    fn new(inner: &'a Inner) -> Self {
        let now = inner.checks_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        inner.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        inner.metrics.in_flight.inc();
        InFlight(inner)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.checks_in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.in_flight.dec();
    }
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

pub(crate) async fn run(inner: Arc<Inner>, entry: Arc<Entry>, start: Start) {
    let _alive = Alive(inner.clone());
    let mut stop = entry.stop.subscribe();
    let mut shutdown = inner.shutdown.subscribe();
    let mut rng = StdRng::from_entropy();
    let mut spec = entry.spec();
    let mut prober = Prober::new(spec.socket_addr);
    let mut deadline = Instant::now()
        + match start {
            Start::Spread => initial_delay(&spec.policy.schedule, &mut rng),
            Start::Now => std::time::Duration::ZERO,
        };

    loop {
        if *stop.borrow() || *shutdown.borrow() {
            return;
        }
        let ejected_until = {
            let mut d = entry.detail.lock().unwrap();
            d.next_check = Some(deadline);
            d.ejected_until
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = shutdown.changed() => return,
            _ = entry.changed.notified() => {
                let new = entry.spec();
                if new.policy.probe != spec.policy.probe || new.socket_addr != spec.socket_addr {
                    prober.reset();
                    prober.set_addr(new.socket_addr);
                }
                if new.policy.schedule != spec.policy.schedule {
                    // Keep the state; only the spacing changes, from now.
                    let d = entry.detail.lock().unwrap().tracker.clone();
                    deadline = deadline.min(Instant::now() + next_delay(&d, &new.policy.schedule, &mut rng));
                }
                spec = new;
                continue;
            }
            _ = entry.backend.wake.notified() => {
                consider_ejection(&inner, &entry);
                continue;
            }
            _ = sleep_until(ejected_until.unwrap_or(deadline)), if ejected_until.is_some() => {
                end_ejection(&inner, &entry);
                continue;
            }
            _ = sleep_until(deadline) => {}
        }

        let permit = tokio::select! {
            p = inner.permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return, // closed: the checker is gone
            },
            _ = stop.changed() => return,
            _ = shutdown.changed() => return,
        };
        let started = Instant::now();
        inner
            .metrics
            .lag
            .observe(started.duration_since(deadline).as_secs_f64());
        let in_flight = InFlight::new(&inner);
        let opened_before = prober.connections_opened();
        let outcome = tokio::select! {
            o = prober.check(&spec.policy.probe, spec.policy.timeout) => o,
            _ = stop.changed() => return,
        };
        let ended = Instant::now();
        drop(in_flight);
        drop(permit);

        let opened = prober.connections_opened() - opened_before;
        if opened > 0 {
            inner
                .connections_opened
                .fetch_add(opened, Ordering::Relaxed);
            entry.pool_metrics.connections.inc_by(opened);
        }
        inner.checks_done.fetch_add(1, Ordering::Relaxed);
        let latency = ended.duration_since(started);
        entry.pool_metrics.duration.observe(latency.as_secs_f64());
        if let Some(m) = &entry.metrics {
            m.record_check(outcome.label());
        }

        let tracker = record(&inner, &entry, &outcome, latency, ended, &spec);
        deadline = ended + next_delay(&tracker, &spec.policy.schedule, &mut rng);
    }
}

/// Applies one outcome to the backend's state; logs and publishes a transition.
fn record(
    inner: &Inner,
    entry: &Entry,
    outcome: &Outcome,
    latency: std::time::Duration,
    at: Instant,
    spec: &BackendSpec,
) -> crate::state::Tracker {
    let timeout = spec.policy.timeout;
    let verdict = if outcome.is_success() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    let mut d = entry.detail.lock().unwrap();
    d.checks += 1;
    d.last_check = Some(at);
    d.last_latency = Some(latency);
    let describe = || outcome.describe(timeout);
    let transition = d
        .tracker
        .observe(verdict, describe, &spec.policy.thresholds);
    if !outcome.is_success() {
        d.last_error = Some(describe());
    }
    if let Some(t) = &transition {
        d.last_transition = at;
        entry.refresh_state_metrics(&d);
        if let Some(m) = &entry.metrics {
            m.record_transition(t.to.as_str());
        }
        log_transition(entry, t, d.ejected_until.is_some());
    } else {
        tracing::debug!(pool = %entry.key.0, backend = %entry.key.1, result = outcome.label(), ?latency, "health check");
    }
    let tracker = d.tracker.clone();
    drop(d);
    if transition.is_some() {
        inner.republish.notify_one();
    }
    tracker
}

fn log_transition(entry: &Entry, t: &Transition, ejected: bool) {
    let (pool, backend, reason) = (&*entry.key.0, &*entry.key.1, t.reason.as_str());
    let (from, to, consecutive) = (t.from.as_str(), t.to.as_str(), t.consecutive);
    if t.to == crate::state::Health::Up {
        tracing::info!(
            pool,
            backend,
            from,
            to,
            reason,
            consecutive,
            ejected,
            "backend is up"
        );
    } else {
        tracing::warn!(
            pool,
            backend,
            from,
            to,
            reason,
            consecutive,
            ejected,
            "backend is down"
        );
    }
}

/// The request path reported `consecutive_failures` in a row: eject if allowed.
fn consider_ejection(inner: &Inner, entry: &Entry) {
    let spec = entry.spec();
    let policy = &spec.policy.passive;
    let failures = entry.backend.passive_failures();
    if !policy.enabled() || failures < policy.consecutive_failures {
        return;
    }
    let _one_at_a_time = inner.ejection_lock.lock().unwrap();
    let (mut ejected, mut size) = (0usize, 0usize);
    for e in inner.entries.iter().filter(|e| e.key.0 == entry.key.0) {
        size += 1;
        if e.key != entry.key && e.detail.lock().unwrap().ejected_until.is_some() {
            ejected += 1;
        }
    }
    let now = Instant::now();
    let mut d = entry.detail.lock().unwrap();
    entry.backend.clear_passive_failures();
    if d.ejected_until.is_some() {
        return;
    }
    if !policy.may_eject(ejected, size) {
        tracing::debug!(pool = %entry.key.0, backend = %entry.key.1, "not ejected: max_ejected_percent reached");
        return;
    }
    let clean_for = d
        .last_ejection_end
        .map(|t| now.duration_since(t))
        .unwrap_or(std::time::Duration::MAX);
    let previous = policy.decayed(d.ejections, clean_for);
    let duration = policy.ejection_duration(previous);
    d.ejections = previous + 1;
    d.ejected_until = Some(now + duration);
    d.last_error = Some(format!("{failures} failures in a row on live traffic"));
    entry.refresh_state_metrics(&d);
    if let Some(m) = &entry.metrics {
        m.record_ejection();
        m.record_transition("ejected");
    }
    let reason = format!("{failures} failures in a row on live traffic; ejected for {duration:?}");
    tracing::warn!(
        pool = &*entry.key.0,
        backend = &*entry.key.1,
        from = d.tracker.health.as_str(),
        to = "ejected",
        reason = reason.as_str(),
        consecutive = failures,
        "backend ejected"
    );
    drop(d);
    inner.republish.notify_one();
}

fn end_ejection(inner: &Inner, entry: &Entry) {
    let now = Instant::now();
    let mut d = entry.detail.lock().unwrap();
    let Some(until) = d.ejected_until else { return };
    if now < until {
        return;
    }
    d.ejected_until = None;
    d.last_ejection_end = Some(now);
    entry.backend.clear_passive_failures();
    entry.refresh_state_metrics(&d);
    tracing::info!(
        pool = &*entry.key.0,
        backend = &*entry.key.1,
        from = "ejected",
        to = d.tracker.health.as_str(),
        reason = "ejection time ended",
        consecutive = 0u32,
        "backend ejection ended"
    );
    drop(d);
    inner.republish.notify_one();
}
