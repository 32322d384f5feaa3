//! What one check concluded, with the label it is counted under.

use std::time::Duration;

/// The result of one check, with the label it is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The backend answered, but not as expected.
    Failure(String),
    /// No complete answer within the check's timeout.
    Timeout,
    /// The connection could not be made (refused, unreachable, reset before a reply).
    ConnectError(String),
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// `result` label of `vigil_health_checks_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure(_) => "failure",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError(_) => "connect_error",
        }
    }

    /// For logs and `last_error`.
    pub fn describe(&self, timeout: Duration) -> String {
        match self {
            Outcome::Success => "check passed".to_string(),
            Outcome::Failure(why) => why.clone(),
            Outcome::Timeout => format!("no answer within {timeout:?}"),
            Outcome::ConnectError(why) => format!("connect error: {why}"),
        }
    }
}
