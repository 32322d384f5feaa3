//! The health checker driven directly (no proxy), for tests against real loopback
//! backends: a publisher that records every membership, a fast check policy, specs for
//! fake backends, and a checker on the current runtime.

use crate::FakeBackend;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vigil_healthcheck::*;

/// Records every membership it is handed.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<Arc<Membership>>>);

impl Publish for Recorder {
    fn publish(&self, m: Arc<Membership>) {
        self.0.lock().unwrap().push(m);
    }
}

impl Recorder {
    pub fn last(&self) -> Arc<Membership> {
        self.0.lock().unwrap().last().cloned().unwrap_or_default()
    }
    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

pub fn policy(interval_ms: u64) -> CheckPolicy {
    let d = Duration::from_millis(interval_ms);
    CheckPolicy {
        probe: ProbeSpec::Http(HttpSpec::default()),
        thresholds: Thresholds::new(1, 1),
        schedule: Schedule {
            interval: d,
            fast_interval: d,
            down_interval: d,
            backoff_multiplier: 1.0,
            max_down_interval: d,
            jitter: 0.0,
        },
        timeout: Duration::from_secs(2),
        passive: PassivePolicy::default(),
        skip_while_serving: false,
        agent: false,
    }
}

pub fn spec(pool: &str, b: &FakeBackend, weight: u32, policy: &Arc<CheckPolicy>) -> BackendSpec {
    BackendSpec {
        pool: pool.into(),
        address: b.addr.to_string(),
        socket_addr: b.addr,
        weight,
        slow_start: Duration::ZERO,
        policy: policy.clone(),
    }
}

pub fn checker(max: usize) -> (Checker, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let c = Checker::new(
        tokio::runtime::Handle::current(),
        CheckerOptions {
            max_concurrent_checks: max,
            per_backend_metrics: true,
        },
        rec.clone(),
        &prometheus::Registry::new(),
    )
    .unwrap();
    (c, rec)
}
