//! One backend's reported load: the weight its reports earn, smoothed, held back for a
//! blackout after reports (re)start and dropped when they stop, as gRPC's weighted
//! round robin does (gRFC A58).

use super::Report;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Share of each new weight in the moving average. gRPC uses the latest report alone;
/// backends here report on every response, so one odd report (a GC pause, a burst of
/// errors) would swing traffic. At 0.3 a single report moves the weight by under a
/// third, and a real change of load is 92% taken in after seven reports (1 − 0.7⁷),
/// a fraction of a second at any useful request rate.
pub const EWMA_ALPHA: f64 = 0.3;

/// One backend's reports; shared by every thread that sees its responses.
#[derive(Debug, Default)]
pub struct LoadReports {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    weight: Weight,
    /// From the latest report, with or without a weight, and when it came.
    utilization: Option<(f64, Instant)>,
}

#[derive(Debug, Default, Clone, Copy)]
enum Weight {
    /// No report gave a weight yet, or the last one expired.
    #[default]
    None,
    Known {
        smoothed: f64,
        /// When reports started giving weights: the blackout runs from here.
        non_empty_since: Instant,
        last_update: Instant,
    },
}

impl LoadReports {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in a report. One without a usable weight (no traffic, no utilization)
    /// updates the utilization only: it neither resets nor refreshes the weight.
    pub fn record(&self, report: &Report, error_penalty: f64, now: Instant) {
        let mut state = self.lock();
        state.utilization = Some((report.utilization(), now));
        let Some(weight) = report.weight(error_penalty) else {
            return;
        };
        state.weight = match state.weight {
            Weight::None => Weight::Known {
                smoothed: weight,
                non_empty_since: now,
                last_update: now,
            },
            Weight::Known {
                smoothed,
                non_empty_since,
                ..
            } => Weight::Known {
                smoothed: smoothed + EWMA_ALPHA * (weight - smoothed),
                non_empty_since,
                last_update: now,
            },
        };
    }

    /// The smoothed weight, or None for the configured one: before any weight, within
    /// `blackout` of the first (the average has settled, and a backend just back from
    /// trouble proves itself first), and from `expiry` after the last. Expiry forgets
    /// the weight, so a backend whose reports resume serves a blackout again. Expiry is
    /// judged here, not in `record`: the pool reads weights often, as gRPC's does.
    pub fn weight(&self, now: Instant, blackout: Duration, expiry: Duration) -> Option<f64> {
        let mut state = self.lock();
        let Weight::Known {
            smoothed,
            non_empty_since,
            last_update,
        } = state.weight
        else {
            return None;
        };
        if now.saturating_duration_since(last_update) >= expiry {
            state.weight = Weight::None;
            return None;
        }
        if now.saturating_duration_since(non_empty_since) < blackout {
            return None;
        }
        Some(smoothed)
    }

    /// The utilization of the latest report (the application's, else CPU), for
    /// `vigil_backend_reported_utilization`; None once that report is `expiry` old, as
    /// the weight is.
    pub fn utilization(&self, now: Instant, expiry: Duration) -> Option<f64> {
        let (utilization, at) = self.lock().utilization?;
        (now.saturating_duration_since(at) < expiry).then_some(utilization)
    }

    /// The state is plain numbers, whole after any panic.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
