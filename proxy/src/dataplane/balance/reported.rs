//! `balance: load_report`: weighted least requests, the weights from what the backends
//! report of their load (`LoadReports`, as gRPC's weighted round robin reads ORCA),
//! with `weighted_round_robin`'s smooth order to break ties; both rebuilt every
//! [`WEIGHT_UPDATE_MS`] by the first request that finds them old. A backend without usable reports keeps its configured
//! weight. Reports only weigh the candidates: they never make routable a backend the
//! checker or passive ejection holds out.

use super::{in_order, mix, smooth_sequence, FULL_SCAN_MAX};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;
use vigil_conf::LoadReportConfig;
use vigil_healthcheck::load_report::effective_weights;
use vigil_healthcheck::membership::clock_ms;
use vigil_healthcheck::Member;

/// How often the weights are read again (gRPC's `weight_update_period`).
pub const WEIGHT_UPDATE_MS: u64 = 1000;

/// The heaviest candidate's share of the order: weights are kept to 1% steps, which
/// bounds the order's length to a hundred entries a backend.
const RESOLUTION: f64 = 100.0;

pub struct ReportedOrder {
    config: LoadReportConfig,
    order: ArcSwap<Order>,
    built_ms: AtomicU64,
}

/// The order over the candidates, and each member's weight (by member index; 0 for
/// one that is not a candidate).
pub struct Order {
    pub sequence: Vec<u32>,
    pub weights: Vec<f64>,
}

impl ReportedOrder {
    pub fn build(config: LoadReportConfig, members: &[Member], candidates: &[usize]) -> Self {
        ReportedOrder {
            config,
            order: ArcSwap::from_pointee(order(&config, members, candidates)),
            built_ms: AtomicU64::new(clock_ms()),
        }
    }

    /// The current order, rebuilt first when it is [`WEIGHT_UPDATE_MS`] old.
    pub fn current(&self, members: &[Member], candidates: &[usize]) -> arc_swap::Guard<Arc<Order>> {
        let now = clock_ms();
        let built = self.built_ms.load(Ordering::Relaxed);
        if now.saturating_sub(built) >= WEIGHT_UPDATE_MS
            && self
                .built_ms
                .compare_exchange(built, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.order
                .store(Arc::new(order(&self.config, members, candidates)));
        }
        self.order.load()
    }
}

/// Weighted least requests: the candidate holding the fewest requests for its weight
/// right now, the next member of the weighted order winning ties. The weights say
/// what each backend can take (reports change them once a second), the requests in
/// flight what it holds this instant; with nothing in flight this is the weighted
/// order itself. Past [`FULL_SCAN_MAX`] candidates, two choices: the weighted order's
/// and a weighted draw.
pub fn pick(
    order: &Order,
    start: usize,
    members: &[Member],
    candidates: &[usize],
    tried: &[usize],
) -> Option<usize> {
    let first = in_order(&order.sequence, start, members, candidates, tried)?;
    let load = |i: usize| {
        let weight = order.weights[i] * members[i].endpoint.ramp();
        members[i].endpoint.in_flight() as f64 / weight.max(1e-9)
    };
    let mut best = (first, load(first));
    let mut consider = |i: usize| {
        if i != first && !tried.contains(&i) {
            let l = load(i);
            if l < best.1 {
                best = (i, l);
            }
        }
    };
    if candidates.len() > FULL_SCAN_MAX {
        let draw = mix(start as u64) as usize;
        if let Some(i) = in_order(&order.sequence, draw, members, candidates, tried) {
            consider(i);
        }
    } else {
        candidates.iter().for_each(|&i| consider(i));
    }
    Some(best.0)
}

/// The order from the candidates' configured and reported weights now.
fn order(config: &LoadReportConfig, members: &[Member], candidates: &[usize]) -> Order {
    let now = Instant::now();
    let configured: Vec<u32> = candidates.iter().map(|&i| members[i].weight).collect();
    let reported: Vec<Option<f64>> = candidates
        .iter()
        .map(|&i| {
            let load = &members[i].endpoint.load;
            load.weight(now, config.blackout, config.expiry)
        })
        .collect();
    let mut effective = Vec::with_capacity(candidates.len());
    effective_weights(&configured, &reported, &mut effective);
    let heaviest = effective.iter().copied().fold(0.0, f64::max);
    let steps: Vec<u64> = effective
        .iter()
        .map(|w| match heaviest > 0.0 {
            true => ((w / heaviest * RESOLUTION).round() as u64).max(1),
            false => 1,
        })
        .collect();
    // Equal weights make an order of one entry each, not a hundred.
    let common = steps.iter().copied().fold(0, gcd).max(1);
    let steps: Vec<u64> = steps.iter().map(|s| s / common).collect();
    let mut weights = vec![0.0; members.len()];
    for (&i, w) in candidates.iter().zip(effective) {
        weights[i] = w;
    }
    Order {
        sequence: smooth_sequence(&steps),
        weights,
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vigil_healthcheck::load_report::parse;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| {
                let addr = ([127, 0, 0, 1], 2000 + i as u16).into();
                let endpoint = vigil_healthcheck::Endpoint::new("p", &format!("b{i}"), addr, 0);
                Member::up(Arc::new(endpoint), 1)
            })
            .collect()
    }

    #[test]
    fn a_backend_reporting_half_the_load_gets_twice_the_share() {
        let config = LoadReportConfig {
            blackout: Duration::ZERO,
            ..LoadReportConfig::default()
        };
        let ms = members(3);
        let all = [0, 1, 2];
        let share = |order: &Order, i: u32| order.sequence.iter().filter(|&&s| s == i).count();
        // Nothing reported: the configured weights, equal.
        let plain = order(&config, &ms, &all);
        assert_eq!((share(&plain, 0), share(&plain, 1)), (1, 1));
        let now = Instant::now();
        for (i, cpu) in [(0, 0.4), (1, 0.8), (2, 0.8)] {
            let report =
                parse(format!("TEXT cpu_utilization={cpu}, rps_fractional=100").as_bytes())
                    .unwrap();
            ms[i]
                .endpoint
                .load
                .record(&report, config.error_penalty, now);
        }
        let reported = order(&config, &ms, &all);
        assert_eq!(share(&reported, 0), 2 * share(&reported, 1));
        assert_eq!(share(&reported, 1), share(&reported, 2));
        // The weights stay on the configured scale: their mean is the configured one.
        let mean = reported.weights.iter().sum::<f64>() / 3.0;
        assert!((mean - 1.0).abs() < 1e-9, "{:?}", reported.weights);
        // Not a candidate (held out): no share, whatever it reports.
        let held_out = order(&config, &ms, &[1, 2]);
        assert_eq!(
            held_out.weights[0], 0.0,
            "the held-out member weighs nothing"
        );
        assert!(!held_out.sequence.contains(&2));
    }

    #[test]
    fn the_least_loaded_for_its_weight_is_picked_and_ties_follow_the_order() {
        let ms = members(3);
        let all = [0, 1, 2];
        let order = Order {
            sequence: smooth_sequence(&[2, 1, 1]),
            weights: vec![2.0, 1.0, 1.0],
        };
        // Nothing in flight: the weighted order.
        let picks: Vec<usize> = (0..4)
            .map(|s| pick(&order, s, &ms, &all, &[]).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 2, "{picks:?}");
        // Three on the heavy one (1.5 for its weight), one on the second (1): the third.
        for _ in 0..3 {
            ms[0].endpoint.request_started();
        }
        ms[1].endpoint.request_started();
        for s in 0..4 {
            assert_eq!(pick(&order, s, &ms, &all, &[]), Some(2));
        }
        assert_eq!(pick(&order, 0, &ms, &all, &[2]), Some(1), "the third tried");
    }

    #[test]
    fn reports_count_only_after_the_blackout() {
        let config = LoadReportConfig::default(); // 10 s
        let ms = members(2);
        let report = parse(b"TEXT cpu_utilization=0.1, rps_fractional=100").unwrap();
        ms[0].endpoint.load.record(&report, 1.0, Instant::now());
        let o = order(&config, &ms, &[0, 1]);
        assert_eq!(o.weights, vec![1.0, 1.0], "within the blackout: configured");
    }
}
