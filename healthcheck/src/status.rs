//! A read-only view of every backend's live detail, for the admin API.

use crate::state::Health;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct BackendStatus {
    pub pool: String,
    pub address: String,
    /// As configured (its agent may scale it: `agent`).
    pub weight: u32,
    pub health: Health,
    pub ejected: bool,
    /// Requests to it are stuck: no new ones until it answers.
    pub suspect: bool,
    pub admin: crate::AdminState,
    /// What its agent said, for a pool with `health_check.agent`.
    pub agent: Option<crate::agent::AgentState>,
    /// Checks skipped because live traffic succeeded (`skip_while_serving`).
    pub checks_skipped: u64,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    pub checks: u64,
    pub last_check_ago: Option<Duration>,
    pub last_latency: Option<Duration>,
    pub next_check_in: Option<Duration>,
    pub last_error: Option<String>,
    pub last_transition_ago: Duration,
    pub ejected_for: Option<Duration>,
    pub in_flight_requests: u64,
    /// Other pools whose backend at this address is checked by the same probe (same
    /// address and check settings): one check serves them all.
    pub shared_with: Vec<String>,
    /// The shared probe's id (0 in maintenance).
    pub probe_id: u64,
}

impl BackendStatus {
    /// `unknown|up|down|ejected|suspect`, as [`MemberState::label`](crate::MemberState::label).
    pub fn state_label(&self) -> &'static str {
        crate::MemberState {
            health: self.health,
            ejected: self.ejected,
            suspect: self.suspect,
            admin: self.admin,
            agent: self.agent.unwrap_or_default().hold(),
            rescued: false,
        }
        .label()
    }
}
