//! vigil's health subsystem: active checks, passive ejection, and the membership
//! the proxy routes from.
//!
//! - [`state`]: the typed `unknown → up ↔ down` machine, a pure `observe`.
//! - [`schedule`]: a pure `next_delay` (fast while changing, backoff while down, jitter).
//! - [`passive`]: ejection arithmetic (doubling, cap, decay, share of a pool).
//! - [`probe`], `http` and `grpc`: TCP, HTTP(S) and gRPC checks over one pooled
//!   keep-alive connection (`conn`: plain or TLS);
//!   [`Probes`] is the seam tests script.
//! - [`agent`]: HAProxy agent words (`drain`, `maint`, `NN%`…) read from a passing
//!   HTTP check's body, and what they leave a backend in.
//! - `table`: the one owner of every backend's live state.
//! - [`checker`]: one task per backend (`task`), a global bound on checks in flight,
//!   runtime add/remove/update; [`membership`]: what it publishes.
//! - [`metrics`]: the checker's Prometheus families.
//! - [`load_report`]: ORCA load reports from backends, and the weights they earn.
//!
//! This crate does not know the YAML config; the proxy translates it.

#![forbid(unsafe_code)]

pub mod agent;
pub mod checker;
mod conn;
mod grpc;
mod http;
pub mod load_report;
pub mod membership;
pub mod metrics;
pub mod outcome;
pub mod passive;
pub mod probe;
pub mod schedule;
mod shared;
pub mod spec;
pub mod state;
mod status;
mod table;
mod task;

pub use agent::{AgentHealth, AgentMode, AgentReply, AgentState};
pub use checker::{ApplyReport, Checker, CheckerOptions, Owns};
pub use conn::TlsClient;
pub use grpc::GrpcSpec;
pub use http::HttpSpec;
pub use membership::{
    median_latency, route_held_out, AdminState, Cut, Endpoint, Member, MemberState, Membership,
    Publish, Repeat,
};
pub use outcome::Outcome;
pub use passive::PassivePolicy;
pub use probe::{BoxFuture, Probe, ProbeSpec, Prober, Probes};
pub use schedule::Schedule;
pub use spec::{BackendSpec, CheckPolicy};
pub use state::{Health, Thresholds, Tracker, Transition, Verdict};
pub use status::BackendStatus;
pub use task::HealthEvent;

/// Raises the soft open-file limit to the hard one (every backend holds a check
/// connection, and a proxy a few more of its own); returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
        }
    }
}

/// The fuzz tests' settings: 2,000 cases unless `PROPTEST_CASES` says more (`make
/// fuzz`), and no regression files in the tree (a failure prints its minimal input).
#[cfg(test)]
mod fuzzing {
    use proptest::prelude::ProptestConfig;

    pub(crate) fn config() -> ProptestConfig {
        ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::with_cases(
                std::env::var("PROPTEST_CASES")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(2_000),
            )
        }
    }
}
