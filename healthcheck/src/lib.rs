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

#![deny(unsafe_code)]

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

/// Raises the soft open-file limit to the hard one (every backend holds a check
/// connection, and a proxy a few more of its own); returns the soft limit now in force.
#[allow(unsafe_code)]
pub fn raise_fd_limit() -> u64 {
    // SAFETY: plain libc calls on a stack struct. The crate's one `unsafe` block.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let soft = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!(soft, "cannot raise the open-file limit");
                return soft;
            }
        }
        lim.rlim_cur
    }
}
