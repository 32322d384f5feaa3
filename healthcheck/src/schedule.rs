//! When to check next: one pure function of the state and the policy.
//!
//! `interval` while up; `fast_interval` while unknown or between states; while down,
//! `down_interval` grown by `backoff_multiplier` per further failure, capped at
//! `max_down_interval`. Every delay is jittered by ±`jitter` so backends configured
//! together drift apart, and first checks are spread over `[0, fast_interval)` so a
//! thousand backends added at once do not fire at once.

use crate::state::{Health, Tracker};
use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub interval: Duration,
    pub fast_interval: Duration,
    pub down_interval: Duration,
    pub backoff_multiplier: f64,
    pub max_down_interval: Duration,
    /// In `[0, 1)`.
    pub jitter: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            interval: Duration::from_secs(5),
            fast_interval: Duration::from_secs(1),
            down_interval: Duration::from_secs(5),
            backoff_multiplier: 2.0,
            max_down_interval: Duration::from_secs(60),
            jitter: 0.1,
        }
    }
}

/// The delay before the next check, without jitter.
pub fn base_delay(t: &Tracker, s: &Schedule) -> Duration {
    if t.is_changing() {
        return s.fast_interval;
    }
    match t.health {
        Health::Unknown => s.fast_interval,
        Health::Up => s.interval,
        Health::Down => {
            // powi overflows to infinity long before 64 steps matter; min() caps it.
            let factor = s
                .backoff_multiplier
                .max(1.0)
                .powi(t.failures_while_down.min(64) as i32);
            let secs = s.down_interval.as_secs_f64() * factor;
            let cap = s.max_down_interval.max(s.down_interval);
            if secs.is_finite() && secs < cap.as_secs_f64() {
                Duration::from_secs_f64(secs)
            } else {
                cap
            }
        }
    }
}

/// `d` scaled by a factor drawn uniformly from `[1 - jitter, 1 + jitter]`.
pub fn jittered(d: Duration, jitter: f64, rng: &mut impl Rng) -> Duration {
    let j = jitter.clamp(0.0, 0.999);
    if j == 0.0 || d.is_zero() {
        return d;
    }
    d.mul_f64(rng.gen_range(1.0 - j..=1.0 + j))
}

/// The jittered delay before the next check.
pub fn next_delay(t: &Tracker, s: &Schedule, rng: &mut impl Rng) -> Duration {
    jittered(base_delay(t, s), s.jitter, rng)
}

/// Delay before a new backend's first check: uniform over `[0, fast_interval)`.
pub fn initial_delay(s: &Schedule, rng: &mut impl Rng) -> Duration {
    if s.fast_interval.is_zero() {
        return Duration::ZERO;
    }
    s.fast_interval.mul_f64(rng.gen_range(0.0..1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Thresholds, Verdict};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn sched() -> Schedule {
        Schedule {
            interval: Duration::from_secs(5),
            fast_interval: Duration::from_secs(1),
            down_interval: Duration::from_secs(2),
            backoff_multiplier: 2.0,
            max_down_interval: Duration::from_secs(30),
            jitter: 0.1,
        }
    }

    #[test]
    fn delay_for_every_state() {
        let s = sched();
        let up = Tracker {
            health: Health::Up,
            ..Default::default()
        };
        assert_eq!(base_delay(&Tracker::default(), &s), s.fast_interval);
        assert_eq!(base_delay(&up, &s), s.interval);
        let failing = Tracker {
            consecutive_failures: 1,
            ..up.clone()
        };
        assert_eq!(
            base_delay(&failing, &s),
            s.fast_interval,
            "between up and down"
        );
        let down = Tracker {
            health: Health::Down,
            ..Default::default()
        };
        assert_eq!(base_delay(&down, &s), s.down_interval);
        let recovering = Tracker {
            consecutive_successes: 1,
            ..down
        };
        assert_eq!(
            base_delay(&recovering, &s),
            s.fast_interval,
            "between down and up"
        );
    }

    #[test]
    fn backoff_grows_geometrically_to_the_cap_and_resets() {
        let s = sched();
        let th = Thresholds::new(1, 1);
        let mut t = Tracker::default();
        t.observe(Verdict::Fail, String::new, &th);
        let mut seen = vec![base_delay(&t, &s).as_secs()];
        for _ in 0..6 {
            t.observe(Verdict::Fail, String::new, &th);
            seen.push(base_delay(&t, &s).as_secs());
        }
        assert_eq!(seen, vec![2, 4, 8, 16, 30, 30, 30]);
        t.observe(Verdict::Pass, String::new, &th);
        assert_eq!(base_delay(&t, &s), s.interval);
        t.observe(Verdict::Fail, String::new, &th);
        assert_eq!(
            base_delay(&t, &s),
            s.down_interval,
            "backoff starts over after recovery"
        );
    }

    #[test]
    fn backoff_survives_huge_failure_counts() {
        let s = Schedule {
            backoff_multiplier: 100.0,
            ..sched()
        };
        let t = Tracker {
            health: Health::Down,
            failures_while_down: u32::MAX,
            ..Default::default()
        };
        assert_eq!(base_delay(&t, &s), s.max_down_interval);
        let flat = Schedule {
            backoff_multiplier: 1.0,
            ..sched()
        };
        assert_eq!(base_delay(&t, &flat), flat.down_interval);
    }

    #[test]
    fn jitter_stays_in_bounds_and_spreads() {
        let mut rng = StdRng::seed_from_u64(7);
        let d = Duration::from_secs(10);
        let (mut lo, mut hi) = (d, d);
        for _ in 0..10_000 {
            let j = jittered(d, 0.1, &mut rng);
            assert!(
                j >= Duration::from_secs(9) && j <= Duration::from_secs(11),
                "{j:?}"
            );
            lo = lo.min(j);
            hi = hi.max(j);
        }
        assert!(lo < Duration::from_millis(9_100) && hi > Duration::from_millis(10_900));
        assert_eq!(jittered(d, 0.0, &mut rng), d);
    }

    #[test]
    fn first_checks_spread_over_fast_interval() {
        let mut rng = StdRng::seed_from_u64(1);
        let s = sched();
        let mut buckets = [0u32; 10];
        for _ in 0..10_000 {
            let d = initial_delay(&s, &mut rng);
            assert!(d < s.fast_interval);
            buckets[(d.as_secs_f64() * 10.0) as usize] += 1;
        }
        // Uniform: each tenth of the window gets about 1,000 of 10,000 first checks.
        assert!(
            buckets.iter().all(|&n| (850..1150).contains(&n)),
            "{buckets:?}"
        );
    }
}
