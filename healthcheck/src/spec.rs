//! What the checker is told about each backend: its address, weight and how it is checked.

use crate::passive::PassivePolicy;
use crate::probe::ProbeSpec;
use crate::schedule::Schedule;
use crate::state::Thresholds;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
