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
    /// Skip a check when live requests succeeded since the last one (never with
    /// `agent`: the agent must be heard while the backend serves).
    pub skip_while_serving: bool,
    /// Read HAProxy agent words from a passing HTTP check's body ([`crate::agent`]).
    pub agent: bool,
}

impl Default for CheckPolicy {
    fn default() -> Self {
        CheckPolicy {
            probe: ProbeSpec::Http(Default::default()),
            thresholds: Thresholds::default(),
            schedule: Schedule::default(),
            timeout: Duration::from_secs(2),
            passive: PassivePolicy::default(),
            skip_while_serving: false,
            agent: false,
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
    /// The pool's `slow_start`: how long its weight ramps up after it becomes routable
    /// again. Zero: off.
    pub slow_start: Duration,
    pub policy: Arc<CheckPolicy>,
}
