//! What one check concluded, with the label it is counted under.

use crate::agent::{AgentHealth, AgentReply};
use std::time::Duration;
use tokio::time::Instant;

/// The result of one check, with the label it is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed, with the agent words an HTTP check's body held (read by pools with
    /// `agent` on; see [`crate::agent`]). Every HTTP check reads them, so pools that
    /// share a probe each judge its result by their own setting.
    Success(AgentReply),
    /// The backend answered, but not as expected.
    Failure(String),
    /// No complete answer within the check's timeout.
    Timeout,
    /// The connection could not be made (refused, unreachable, reset before a reply).
    ConnectError(String),
}

impl Outcome {
    /// A pass with nothing more to say (TCP and gRPC checks).
    pub fn success() -> Outcome {
        Outcome::Success(AgentReply::NONE)
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success(_))
    }

    /// `result` label of `vigil_health_checks_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success(_) => "success",
            Outcome::Failure(_) => "failure",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError(_) => "connect_error",
        }
    }

    /// For logs and `last_error`.
    pub fn describe(&self, timeout: Duration) -> String {
        match self {
            Outcome::Success(_) => "check passed".to_string(),
            Outcome::Failure(why) => why.clone(),
            Outcome::Timeout => format!("no answer within {timeout:?}"),
            Outcome::ConnectError(why) => format!("connect error: {why}"),
        }
    }
}

/// One check's result as this backend's pool judges it (`outcome::judge`).
pub(crate) struct Checked {
    pub outcome: Outcome,
    /// The agent's words to apply, for a pool with agent checks.
    pub agent: Option<AgentReply>,
    pub latency: Duration,
    pub ended: Instant,
}

/// A check's outcome as a pool sees it. With `agent` on: the reply a passing check
/// carried, to apply, and a `down`, `fail` or `stopped` in it fails the check (its
/// other words still count, as in HAProxy). With it off the words mean nothing.
pub(crate) fn judge(outcome: Outcome, agent: bool) -> (Outcome, Option<AgentReply>) {
    match outcome {
        Outcome::Success(reply) if agent => match reply.health {
            Some(AgentHealth::Down(word)) => (
                Outcome::Failure(format!("the agent says {word}")),
                Some(reply),
            ),
            _ => (Outcome::Success(reply), Some(reply)),
        },
        other => (other, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentMode;

    fn parse(s: &str) -> AgentReply {
        AgentReply::parse(s.as_bytes())
    }

    #[test]
    fn judged_by_the_pool() {
        let down = Outcome::Success(parse("drain down"));
        let (o, r) = judge(down.clone(), true);
        assert_eq!(o, Outcome::Failure("the agent says down".into()));
        assert_eq!(r.and_then(|r| r.mode), Some(AgentMode::Drain));
        assert_eq!(judge(down.clone(), false), (down, None));
        let up = Outcome::Success(parse("up 50%"));
        assert_eq!(judge(up.clone(), true), (up.clone(), Some(parse("up 50%"))));
        assert_eq!(judge(Outcome::Timeout, true), (Outcome::Timeout, None));
    }
}
