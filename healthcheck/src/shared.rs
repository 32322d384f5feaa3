//! One probe per distinct (address, check settings), however many pools name the
//! backend: one check connection, at most one check in flight, and its last result
//! shared.
//!
//! Each pool's backend keeps its own schedule and its own rise/fall (see `task.rs`);
//! when its check falls due and the shared probe has a result younger than half the
//! backend's current interval, it takes that result instead of probing, and counts its
//! next check from when that result was taken. So pools that share a backend fall into
//! step, and the backend sees the single-pool rate.

use crate::outcome::Outcome;
use crate::probe::{Probe, ProbeSpec, Probes};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// One finished check, as the probe keeps it for the others.
#[derive(Debug, Clone)]
pub(crate) struct Shot {
    /// Unique per check in the process (never 0).
    pub seq: u64,
    pub started: Instant,
    pub ended: Instant,
    pub outcome: Outcome,
}

pub(crate) struct ProbeState {
    pub probe: Box<dyn Probe>,
    pub last: Option<Shot>,
}

impl ProbeState {
    /// The last result, if it started no earlier than `not_before` and is not the one
    /// the caller took last time (`seen`).
    pub fn reusable(&self, not_before: Instant, seen: u64) -> Option<Shot> {
        self.last
            .as_ref()
            .filter(|s| s.started >= not_before && s.seq != seen)
            .cloned()
    }

    /// Keeps a finished check for the others; returns its sequence number.
    pub fn keep(&mut self, started: Instant, ended: Instant, outcome: Outcome) -> u64 {
        // Unique in the process, so a backend that moves between probes never takes
        // the same result twice.
        static SEQ: AtomicU64 = AtomicU64::new(1);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        self.last = Some(Shot {
            seq,
            started,
            ended,
            outcome,
        });
        seq
    }
}

pub(crate) struct SharedProbe {
    /// Unique per probe for the life of the process: tells the admin view which pools
    /// share one.
    pub id: u64,
    spec: ProbeSpec,
    timeout: Duration,
    /// Held for the whole of a check, so there is one in flight at a time.
    pub state: tokio::sync::Mutex<ProbeState>,
}

/// Every live probe, by address. Backends hold the probes (`Arc`); the registry only
/// finds them, so a probe and its connection go when the last backend using it does.
#[derive(Default)]
pub(crate) struct ProbeRegistry {
    by_addr: Mutex<HashMap<SocketAddr, Vec<Weak<SharedProbe>>>>,
    next_id: AtomicU64,
}

impl ProbeRegistry {
    /// The probe for `addr` checked with `spec` and `timeout`, made if there is none.
    pub fn get(
        &self,
        probes: &dyn Probes,
        addr: SocketAddr,
        spec: &ProbeSpec,
        timeout: Duration,
    ) -> Arc<SharedProbe> {
        let mut map = self.by_addr.lock().unwrap();
        let list = map.entry(addr).or_default();
        list.retain(|w| w.strong_count() > 0);
        let found = list
            .iter()
            .filter_map(Weak::upgrade)
            .find(|p| p.spec == *spec && p.timeout == timeout);
        if let Some(p) = found {
            return p;
        }
        let probe = Arc::new(SharedProbe {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            spec: spec.clone(),
            timeout,
            state: tokio::sync::Mutex::new(ProbeState {
                probe: probes.probe(addr),
                last: None,
            }),
        });
        list.push(Arc::downgrade(&probe));
        // Addresses whose probes are all gone.
        map.retain(|_, l| l.iter().any(|w| w.strong_count() > 0));
        probe
    }

    /// Probes alive now (for tests and the admin view).
    pub fn len(&self) -> usize {
        self.by_addr
            .lock()
            .unwrap()
            .values()
            .flatten()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::BoxFuture;

    struct Never;
    impl Probe for Never {
        fn check<'a>(&'a mut self, _: &'a ProbeSpec) -> BoxFuture<'a, Outcome> {
            Box::pin(async { Outcome::success() })
        }
        fn connections_opened(&self) -> u64 {
            0
        }
        fn retarget(&mut self, _: SocketAddr) {}
    }
    struct NeverProbes;
    impl Probes for NeverProbes {
        fn probe(&self, _: SocketAddr) -> Box<dyn Probe> {
            Box::new(Never)
        }
    }

    #[test]
    fn the_same_address_and_check_share_one_probe_until_the_last_user_goes() {
        let r = ProbeRegistry::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let t = Duration::from_secs(1);
        let one = r.get(&NeverProbes, a, &ProbeSpec::Tcp, t);
        let two = r.get(&NeverProbes, a, &ProbeSpec::Tcp, t);
        assert!(Arc::ptr_eq(&one, &two));
        let other_timeout = r.get(&NeverProbes, a, &ProbeSpec::Tcp, Duration::from_secs(2));
        assert!(!Arc::ptr_eq(&one, &other_timeout));
        let other_addr = r.get(
            &NeverProbes,
            "127.0.0.1:2".parse().unwrap(),
            &ProbeSpec::Tcp,
            t,
        );
        assert!(!Arc::ptr_eq(&one, &other_addr));
        assert_eq!(r.len(), 3);
        drop((one, two, other_timeout));
        assert_eq!(r.len(), 1);
        let again = r.get(&NeverProbes, a, &ProbeSpec::Tcp, t);
        assert_ne!(again.id, other_addr.id);
    }

    #[test]
    fn a_result_is_reused_only_if_recent_enough_and_not_already_taken() {
        let mut s = ProbeState {
            probe: Box::new(Never),
            last: None,
        };
        let t0 = Instant::now();
        assert!(s.reusable(t0, 0).is_none());
        let seq = s.keep(t0, t0 + Duration::from_millis(5), Outcome::success());
        assert!(s.reusable(t0, 0).is_some());
        assert!(s.reusable(t0, seq).is_none(), "taken already");
        assert!(
            s.reusable(t0 + Duration::from_millis(1), 0).is_none(),
            "too old"
        );
    }
}
