//! What the checker tells the proxy: for every pool, its backends with their weight
//! and whether they may receive traffic.
//!
//! An [`Endpoint`] is a backend as the request path sees it: where to connect, and the
//! few counters live traffic updates without a lock (in-flight requests for
//! `least_requests`, failures in a row for passive ejection). The checker and the
//! routing snapshot share one per backend.

use crate::state::Health;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// One backend of one pool as the request path sees it; shared with the checker.
#[derive(Debug)]
pub struct Endpoint {
    pub pool: Arc<str>,
    /// As configured: the backend's identity in state, logs and metrics.
    pub address: Arc<str>,
    pub socket_addr: SocketAddr,
    in_flight: AtomicU64,
    passive_failures: AtomicU32,
    /// Failures in a row that eject; 0 = passive ejection off. Updated on reload.
    passive_threshold: AtomicU32,
    /// Wakes the backend's task to consider an ejection.
    pub(crate) wake: Notify,
}

impl Endpoint {
    pub fn new(pool: &str, address: &str, socket_addr: SocketAddr, passive_threshold: u32) -> Self {
        Endpoint {
            pool: pool.into(),
            address: address.into(),
            socket_addr,
            in_flight: AtomicU64::new(0),
            passive_failures: AtomicU32::new(0),
            passive_threshold: AtomicU32::new(passive_threshold),
            wake: Notify::new(),
        }
    }

    /// Requests currently sent to this backend and not finished.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A live request got a good answer.
    pub fn report_success(&self) {
        // Read first: in the common case nothing is written and the line stays shared.
        if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A live request failed to connect or got a 5xx.
    pub fn report_failure(&self) {
        let threshold = self.passive_threshold.load(Ordering::Relaxed);
        let n = self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold > 0 && n == threshold {
            self.wake.notify_one();
        }
    }

    pub(crate) fn passive_failures(&self) -> u32 {
        self.passive_failures.load(Ordering::Relaxed)
    }

    pub(crate) fn clear_passive_failures(&self) {
        self.passive_failures.store(0, Ordering::Relaxed);
    }

    pub(crate) fn set_passive_threshold(&self, n: u32) {
        self.passive_threshold.store(n, Ordering::Relaxed);
    }
}

/// A backend's state as routing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberState {
    pub health: Health,
    pub ejected: bool,
}

impl MemberState {
    /// Only `up` and not ejected backends receive traffic.
    pub fn routable(&self) -> bool {
        self.health == Health::Up && !self.ejected
    }

    /// The `state` label: ejection wins over health.
    pub fn label(&self) -> &'static str {
        if self.ejected {
            "ejected"
        } else {
            self.health.as_str()
        }
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    pub endpoint: Arc<Endpoint>,
    pub weight: u32,
    pub state: MemberState,
}

impl PartialEq for Member {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.endpoint, &other.endpoint)
            && self.weight == other.weight
            && self.state == other.state
    }
}

/// Every pool's backends, in configuration order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Membership {
    pub pools: BTreeMap<Arc<str>, Vec<Member>>,
}

impl Membership {
    pub fn pool(&self, name: &str) -> Option<&[Member]> {
        self.pools.get(name).map(Vec::as_slice)
    }
}

/// Receives a new membership whenever a backend's routing state or the set of backends
/// changed (never for checks that changed nothing). Implemented by the proxy, which
/// turns it into its routing snapshot.
pub trait Publish: Send + Sync + 'static {
    fn publish(&self, membership: Arc<Membership>);
}
