//! Picking a backend among a pool's routable members, lock-free, skipping those a
//! request already tried. All state that needs building (the smooth weighted
//! sequence, the ketama ring) is built off the request path, with the snapshot.

use pingora_ketama::{Bucket, Continuum};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use vigil_conf::{Balance, LoadReportConfig};
use vigil_healthcheck::Member;

mod reported;
pub use reported::ReportedOrder;

/// Longest smooth-weighted sequence we precompute; beyond it weights are scaled down.
const MAX_WRR_SEQUENCE: u64 = 1 << 16;

pub enum Selector {
    RoundRobin {
        next: AtomicUsize,
    },
    /// A precomputed smooth weighted round robin order (nginx's algorithm): weights
    /// 5,1,1 give a a b a c a a, never a burst of five.
    Weighted {
        sequence: Vec<u32>,
        next: AtomicUsize,
    },
    LeastRequests {
        next: AtomicUsize,
    },
    ConsistentHash {
        ring: Continuum,
        by_addr: HashMap<SocketAddr, usize>,
    },
    /// Lowest usual answer time × (in flight + 1) ÷ weight; members with no answer yet
    /// count at the pool's median.
    PeakEwma {
        next: AtomicUsize,
        default_us: u64,
    },
    /// As `Weighted`, the weights from the backends' load reports (`reported.rs`).
    LoadReport {
        order: ReportedOrder,
        next: AtomicUsize,
    },
}

impl Selector {
    /// Builds the selector over `candidates` (indexes into `members`).
    pub fn build(
        balance: Balance,
        reports: LoadReportConfig,
        members: &[Member],
        candidates: &[usize],
    ) -> Selector {
        match balance {
            Balance::LoadReport => Selector::LoadReport {
                order: ReportedOrder::build(reports, members, candidates),
                next: AtomicUsize::new(0),
            },
            Balance::RoundRobin => Selector::RoundRobin {
                next: AtomicUsize::new(0),
            },
            Balance::LeastRequests => Selector::LeastRequests {
                next: AtomicUsize::new(0),
            },
            Balance::PeakEwma => {
                let usual = vigil_healthcheck::median_latency(
                    candidates.iter().map(|&i| &*members[i].endpoint),
                );
                Selector::PeakEwma {
                    next: AtomicUsize::new(0),
                    default_us: usual.map_or(1_000, |d| d.as_micros() as u64).max(1),
                }
            }
            Balance::WeightedRoundRobin => {
                let weights: Vec<u64> = candidates
                    .iter()
                    .map(|&i| members[i].weight.max(1) as u64)
                    .collect();
                Selector::Weighted {
                    sequence: smooth_sequence(&weights),
                    next: AtomicUsize::new(0),
                }
            }
            Balance::ConsistentHash => {
                // Weights are validated >= 1: ketama asserts it and divides by their sum.
                let buckets: Vec<Bucket> = candidates
                    .iter()
                    .map(|&i| {
                        Bucket::new(members[i].endpoint.socket_addr, members[i].weight.max(1))
                    })
                    .collect();
                let by_addr = candidates
                    .iter()
                    .map(|&i| (members[i].endpoint.socket_addr, i))
                    .collect();
                Selector::ConsistentHash {
                    ring: Continuum::new(&buckets),
                    by_addr,
                }
            }
        }
    }

    /// A member index from `candidates` not in `tried`, or None when all were tried.
    pub fn pick(
        &self,
        members: &[Member],
        candidates: &[usize],
        tried: &[usize],
        key: &[u8],
    ) -> Option<usize> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let untried = |i: &usize| !tried.contains(i);
        match self {
            Selector::RoundRobin { next } => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (candidates[(start + k) % n], start + k))
                    .find(|(i, draw)| untried(i) && admitted(&members[*i], *draw))
                    .map(|(i, _)| i)
                    .or_else(|| candidates.iter().copied().find(untried))
            }
            Selector::Weighted { sequence, next } => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                in_order(sequence, start, members, candidates, tried)
            }
            Selector::LoadReport { order, next } => {
                let order = order.current(members, candidates);
                let start = next.fetch_add(1, Ordering::Relaxed);
                reported::pick(&order, start, members, candidates, tried)
            }
            Selector::LeastRequests { next } => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                if n > FULL_SCAN_MAX {
                    return power_of_two_choices(members, candidates, tried, start);
                }
                // Rotate the scan's start so ties spread instead of piling on the first.
                let mut best: Option<(usize, Load)> = None;
                for k in 0..n {
                    let i = candidates[(start + k) % n];
                    if tried.contains(&i) {
                        continue;
                    }
                    let l = load(&members[i]);
                    if best.is_none_or(|(_, b)| lighter(l, b)) {
                        best = Some((i, l));
                    }
                }
                best.map(|(i, _)| i)
            }
            Selector::PeakEwma { next, default_us } => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                let cost = |i: usize| {
                    let m = &members[i];
                    let us = m
                        .endpoint
                        .latency()
                        .map_or(*default_us, |d| d.as_micros() as u64);
                    us.max(1) as f64 * (m.endpoint.in_flight() + 1) as f64
                        / (m.weight.max(1) as f64 * m.endpoint.ramp())
                };
                // Every member for small pools, two choices for large ones.
                let look = if n > FULL_SCAN_MAX { 2 } else { n };
                let stride = if n > FULL_SCAN_MAX { n / 2 + 1 } else { 1 };
                // Each member's cost is read once: it changes under our feet.
                let best = (0..look)
                    .map(|k| candidates[(start + k * stride) % n])
                    .filter(|i| untried(i))
                    .map(|i| (i, cost(i)))
                    .min_by(|a, b| a.1.total_cmp(&b.1));
                best.map(|(i, _)| i)
                    .or_else(|| candidates.iter().copied().find(untried))
            }
            Selector::ConsistentHash { ring, by_addr } => ring
                .node_iter(key)
                .take(n * 160 + 1)
                .filter_map(|addr| by_addr.get(addr).copied())
                .find(untried)
                .or_else(|| candidates.iter().copied().find(untried)),
        }
    }
}

/// The next member of a smooth weighted `sequence` (indexes into `candidates`) not
/// tried and admitted by slow start, else any untried candidate.
fn in_order(
    sequence: &[u32],
    start: usize,
    members: &[Member],
    candidates: &[usize],
    tried: &[usize],
) -> Option<usize> {
    let untried = |i: &usize| !tried.contains(i);
    let len = sequence.len();
    (0..len)
        .map(|k| (candidates[sequence[(start + k) % len] as usize], start + k))
        .find(|(i, draw)| untried(i) && admitted(&members[*i], *draw))
        .map(|(i, _)| i)
        .or_else(|| candidates.iter().copied().find(untried))
}

/// Pools larger than this use two random choices instead of scanning every member.
const FULL_SCAN_MAX: usize = 16;

/// A member's requests in flight (counting the one being placed) and its weight in
/// thousandths, scaled down while it ramps up (slow start).
type Load = (u64, u64);

fn load(m: &Member) -> Load {
    let weight = (m.weight.max(1) as f64 * 1000.0 * m.endpoint.ramp()) as u64;
    (m.endpoint.in_flight() + 1, weight.max(1))
}

/// Slow start for the round robins: a member still ramping up is passed over unless
/// `draw` (mixed into a uniform number) falls within its share of its weight.
fn admitted(m: &Member, draw: usize) -> bool {
    let share = m.endpoint.ramp();
    share >= 1.0 || ((mix(draw as u64) >> 11) as f64 / (1u64 << 53) as f64) < share
}

/// splitmix64's finaliser: a well-spread number from a counter value.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `a` carries less load per weight than `b`; compared without division.
fn lighter((load, weight): Load, (other_load, other_weight): Load) -> bool {
    load * other_weight < other_load * weight
}

/// Envoy's choice for large pools: the less loaded of two members drawn at random
/// (here from a mixed counter), probing forward past members already tried.
fn power_of_two_choices(
    members: &[Member],
    candidates: &[usize],
    tried: &[usize],
    seed: usize,
) -> Option<usize> {
    let n = candidates.len();
    // Two well-spread indexes from one counter value.
    let z = mix(seed as u64);
    let untried_from = |start: usize| {
        (0..n)
            .map(|k| candidates[(start + k) % n])
            .find(|i| !tried.contains(i))
    };
    let a = untried_from((z as u32 as usize) % n)?;
    let b = untried_from(((z >> 32) as usize) % n).filter(|&b| b != a);
    match b {
        Some(b) if lighter(load(&members[b]), load(&members[a])) => Some(b),
        _ => Some(a),
    }
}

/// Smooth weighted round robin over `weights`, as indexes into them.
fn smooth_sequence(weights: &[u64]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let mut weights = weights.to_vec();
    let mut total: u64 = weights.iter().sum();
    if total > MAX_WRR_SEQUENCE {
        // Keep proportions, bounded memory; every backend keeps at least one slot.
        let scale = total as f64 / MAX_WRR_SEQUENCE as f64;
        for w in &mut weights {
            *w = ((*w as f64 / scale).round() as u64).max(1);
        }
        total = weights.iter().sum();
    }
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        out.push(best as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_sequence_has_no_bursts() {
        let seq = smooth_sequence(&[5, 1, 1]);
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        let seq = smooth_sequence(&[1, 2]);
        assert_eq!(seq.iter().filter(|&&i| i == 1).count(), 2);
        assert!(smooth_sequence(&[]).is_empty());
    }

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| {
                let addr = ([127, 0, 0, 1], 1000 + i as u16).into();
                let endpoint = vigil_healthcheck::Endpoint::new("p", &format!("b{i}"), addr, 0);
                Member::up(std::sync::Arc::new(endpoint), 1)
            })
            .collect()
    }

    #[test]
    fn least_requests_avoids_the_busy_member_at_any_size() {
        for n in [3, 40] {
            let ms = members(n);
            let all: Vec<usize> = (0..n).collect();
            for m in &ms[1..] {
                for _ in 0..5 {
                    m.endpoint.request_started();
                }
            }
            let sel = Selector::build(Balance::LeastRequests, Default::default(), &ms, &all);
            let idle = (0..4000)
                .filter(|_| sel.pick(&ms, &all, &[], b"") == Some(0))
                .count();
            // Full scan always finds it; two choices find it whenever it is one of the
            // two drawn: 1 - (39/40)^2 of picks, about 197 of 4000. A picker blind to
            // load takes it 1 in 40 times, 100 of 4000.
            assert!(
                if n <= FULL_SCAN_MAX {
                    idle == 4000
                } else {
                    idle >= 150
                },
                "n={n}: idle picked {idle}/4000"
            );
            let tried: Vec<usize> = (0..n - 1).collect();
            assert_eq!(
                sel.pick(&ms, &all, &tried, b""),
                Some(n - 1),
                "n={n}: the untried member"
            );
            let all_tried: Vec<usize> = (0..n).collect();
            assert_eq!(sel.pick(&ms, &all, &all_tried, b""), None);
        }
    }

    #[test]
    fn huge_weights_are_scaled_not_exploded() {
        let seq = smooth_sequence(&[1_000_000, 1_000_000, 1]);
        assert!(seq.len() as u64 <= MAX_WRR_SEQUENCE + 3);
        assert!(seq.contains(&2), "the lightest backend lost its slot");
        let a = seq.iter().filter(|&&i| i == 0).count() as f64;
        let b = seq.iter().filter(|&&i| i == 1).count() as f64;
        assert!((a / b - 1.0).abs() < 0.01);
    }
}
