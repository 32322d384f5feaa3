//! What a backend's agent says (`health_check.agent`): its state, changed by the words
//! a passing check carried and forgotten when it can no longer be trusted; one log line
//! per change, never one per check.

use super::{Live, Slot};
use crate::agent::{AgentReply, AgentState};

impl Slot {
    /// Applies the words a check of a pool with `agent` on carried; true if the state
    /// changed (and with it routing: a hold or a weight).
    pub(super) fn hear_agent(&self, live: &mut Live, reply: &AgentReply) -> bool {
        if reply.unknown > 0 {
            tracing::debug!(
                pool = %self.key.0,
                backend = %self.key.1,
                unknown = reply.unknown,
                "agent words not understood, ignored"
            );
        }
        self.set_agent(live, live.agent.after(reply), "the agent said so")
    }

    /// Back to ready at 100%: the agent was turned off, or the backend comes back from
    /// the operator's maintenance, where its agent was not heard. True if it changed.
    pub(super) fn forget_agent(&self, live: &mut Live, reason: &str) -> bool {
        self.set_agent(live, AgentState::default(), reason)
    }

    fn set_agent(&self, live: &mut Live, to: AgentState, reason: &str) -> bool {
        let from = live.agent;
        if from == to {
            return false;
        }
        live.agent = to;
        self.refresh_state_metrics(live);
        tracing::info!(
            pool = &*self.key.0,
            backend = &*self.key.1,
            from = %from,
            to = %to,
            reason,
            "backend agent state changed"
        );
        true
    }
}
