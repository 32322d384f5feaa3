//! A pool's weights from configured and reported ones together.
//!
//! Reported weights (queries per unit of load) have no common scale with configured
//! ones, so they are rescaled: the reporters keep, on average, the configured weight
//! they have on average, and share it by their reports. Backends without a report
//! keep their configured weight beside them.

/// A reported weight stays within this factor of the reporters' mean, as gRPC's
/// scheduler bounds its weights. The floor keeps a trickle of traffic on a backend
/// that reports itself swamped, so that its reports go on and can bring it back;
/// the ceiling holds one wild report (utilization near zero) to ten times the mean.
/// No weight exceeds `n` times the mean of `n` reporters, so below eleven reporters
/// the ceiling never binds, and there the floor on the others is what limits it.
pub const REPORTED_SPREAD: f64 = 10.0;

/// Fills `out` with one weight per `configured` entry, finite and non-negative.
///
/// A backend with a reported weight gets `mean_configured * reported / mean_reported`,
/// the means over the backends that report, clamped by [`REPORTED_SPREAD`]; so when
/// all report the same load, each gets the configured mean. A backend without one
/// (`None`, or `reported` shorter than `configured`) keeps its configured weight, and
/// a configured weight of 0 (drained, or slow start at 0) stays 0 whatever it
/// reports. A reported weight replaces the configured one rather than scaling it: it
/// already measures the backend's capacity, and multiplying would count that twice.
pub fn effective_weights(configured: &[u32], reported: &[Option<f64>], out: &mut Vec<f64>) {
    out.clear();
    out.extend(configured.iter().map(|&w| f64::from(w)));
    let Some(scale) = Scale::of(configured, reported) else {
        return;
    };
    for (i, weight) in out.iter_mut().enumerate() {
        if let Some(r) = usable(configured[i], reported.get(i)) {
            *weight = scale.apply(r);
        }
    }
}

/// A reported weight that counts: positive and finite, on a backend not at 0.
fn usable(configured: u32, reported: Option<&Option<f64>>) -> Option<f64> {
    match reported {
        Some(&Some(r)) if configured > 0 && r.is_finite() && r > 0.0 => Some(r),
        _ => None,
    }
}

/// The reporters' mean configured and mean reported weights.
struct Scale {
    configured: f64,
    reported: f64,
}

impl Scale {
    /// None when nobody reports (or reports sum to nothing representable).
    fn of(configured: &[u32], reported: &[Option<f64>]) -> Option<Scale> {
        let reporters = || {
            configured
                .iter()
                .enumerate()
                .filter_map(|(i, &c)| usable(c, reported.get(i)).map(|r| (c, r)))
        };
        let n = reporters().count() as f64;
        // Divided before summing: a sum of large reports could overflow.
        let (configured, reported) = reporters().fold((0.0, 0.0), |(c, r), (ci, ri)| {
            (c + f64::from(ci) / n, r + ri / n)
        });
        (reported > 0.0 && reported.is_finite()).then_some(Scale {
            configured,
            reported,
        })
    }

    fn apply(&self, reported: f64) -> f64 {
        let weight = reported / self.reported * self.configured;
        weight
            .max(self.configured / REPORTED_SPREAD)
            .min(self.configured * REPORTED_SPREAD)
    }
}
