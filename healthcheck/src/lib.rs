//! vigil's health subsystem: active checks, passive ejection, and the membership
//! the proxy routes from.
//!
//! - [`state`]: the typed `unknown → up ↔ down` machine, a pure `observe`.
//! - [`schedule`]: a pure `next_delay` (fast while changing, backoff while down, jitter).
//! - [`passive`]: ejection arithmetic (doubling, cap, decay, share of a pool).
//! - [`probe`] and `http`: TCP and HTTP checks over one pooled keep-alive connection.
//! - [`checker`]: one task per backend, a global bound on checks in flight, runtime
//!   add/remove/update; [`membership`]: what it publishes, only when it changed.
//! - [`metrics`]: the checker's Prometheus families.
//!
//! This crate does not know the YAML config; the proxy translates it.

pub mod checker;
mod http;
pub mod membership;
pub mod metrics;
pub mod passive;
pub mod probe;
pub mod schedule;
pub mod state;
mod status;
mod task;

pub use checker::{ApplyReport, BackendSpec, CheckPolicy, Checker, CheckerOptions};
pub use http::HttpSpec;
pub use membership::{Backend, Member, MemberState, Membership, Publish};
pub use passive::PassivePolicy;
pub use probe::{Outcome, ProbeSpec, Prober};
pub use schedule::Schedule;
pub use state::{Health, Thresholds, Tracker, Transition, Verdict};
pub use status::BackendStatus;
