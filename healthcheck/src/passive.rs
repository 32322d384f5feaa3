//! Passive ejection policy: pure arithmetic, applied by the backend's task.
//!
//! Each ejection lasts `ejection_time × 2^(n-1)` for the n-th ejection in a series,
//! capped at `max_ejection_time`. The series decays: every `ejection_time` without an
//! ejection forgives one step, so a backend that misbehaved once last hour starts over.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct PassivePolicy {
    /// Failures in a row on live traffic that eject; 0 disables passive ejection.
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
    pub max_ejection_time: Duration,
    /// Never eject more than this share of a pool, in percent.
    pub max_ejected_percent: f64,
    /// Stuck requests make a backend suspect: off for pools whose requests may wait
    /// on purpose (long polls).
    pub stall_detection: bool,
    /// A request waiting `stall_factor` times the pool's usual answer time, and at
    /// least `stall_min`, is stuck.
    pub stall_factor: f64,
    pub stall_min: Duration,
}

impl Default for PassivePolicy {
    fn default() -> Self {
        PassivePolicy {
            consecutive_failures: 5,
            ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(300),
            max_ejected_percent: 50.0,
            stall_detection: true,
            stall_factor: 10.0,
            stall_min: Duration::from_millis(250),
        }
    }
}

/// Extra upstream load that resending stuck requests may add: a tenth of the requests.
pub const RESEND_SHARE: f64 = 0.1;
/// Resends a pool starts with.
pub const RESEND_START: f64 = 20.0;
/// Resends a pool may save up.
pub const RESEND_CAP: f64 = 1000.0;

impl PassivePolicy {
    pub fn enabled(&self) -> bool {
        self.consecutive_failures > 0
    }

    /// Length of an ejection when `previous` ejections are still on record.
    pub fn ejection_duration(&self, previous: u32) -> Duration {
        let factor = 2f64.powi(previous.min(32) as i32);
        let d = self.ejection_time.as_secs_f64() * factor;
        if d.is_finite() && d < self.max_ejection_time.as_secs_f64() {
            Duration::from_secs_f64(d)
        } else {
            self.max_ejection_time.max(self.ejection_time)
        }
    }

    /// Ejections still on record after `clean_for` without one.
    pub fn decayed(&self, count: u32, clean_for: Duration) -> u32 {
        if self.ejection_time.is_zero() {
            return 0;
        }
        let steps = (clean_for.as_secs_f64() / self.ejection_time.as_secs_f64()) as u64;
        count.saturating_sub(steps.min(u32::MAX as u64) as u32)
    }

    /// How long a backend's oldest request may wait before it is stuck, given how long
    /// the pool usually takes to answer (None: no estimate yet).
    pub fn stall_threshold(&self, usual: Option<Duration>) -> Duration {
        let scaled = usual.map_or(Duration::ZERO, |u| u.mul_f64(self.stall_factor));
        scaled.max(self.stall_min)
    }

    /// The stall-resend budget after `requests` more requests: a tenth of them, saved
    /// up to `RESEND_CAP`. Over time, resending stuck requests adds at most a tenth to
    /// the pool's load; a pool starts with `RESEND_START` so a quiet one can resend a few.
    pub fn refill_resends(tokens: f64, requests: u64) -> f64 {
        (tokens + requests as f64 * RESEND_SHARE).min(RESEND_CAP)
    }

    /// Whether one more ejection keeps the pool within `max_ejected_percent`.
    pub fn may_eject(&self, already_ejected: usize, pool_size: usize) -> bool {
        if pool_size == 0 {
            return false;
        }
        ((already_ejected + 1) as f64) * 100.0 <= self.max_ejected_percent * pool_size as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> PassivePolicy {
        PassivePolicy {
            consecutive_failures: 3,
            ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(60),
            max_ejected_percent: 50.0,
            ..PassivePolicy::default()
        }
    }

    #[test]
    fn stall_threshold_scales_the_usual_answer_time_with_a_floor() {
        let p = p();
        assert_eq!(
            p.stall_threshold(None),
            Duration::from_millis(250),
            "no estimate: the floor"
        );
        assert_eq!(
            p.stall_threshold(Some(Duration::from_millis(2))),
            Duration::from_millis(250)
        );
        assert_eq!(
            p.stall_threshold(Some(Duration::from_millis(100))),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn resend_budget_is_a_tenth_of_requests_within_a_reserve() {
        assert_eq!(PassivePolicy::refill_resends(0.0, 50), 5.0);
        assert_eq!(PassivePolicy::refill_resends(5.0, 1_000_000), RESEND_CAP);
        assert_eq!(PassivePolicy::refill_resends(2.0, 0), 2.0);
    }

    #[test]
    fn doubles_and_caps() {
        let got: Vec<u64> = (0..6).map(|n| p().ejection_duration(n).as_secs()).collect();
        assert_eq!(got, vec![10, 20, 40, 60, 60, 60]);
        assert_eq!(p().ejection_duration(u32::MAX).as_secs(), 60);
    }

    #[test]
    fn decays_one_step_per_clean_ejection_time() {
        assert_eq!(p().decayed(3, Duration::from_secs(9)), 3);
        assert_eq!(p().decayed(3, Duration::from_secs(10)), 2);
        assert_eq!(p().decayed(3, Duration::from_secs(25)), 1);
        assert_eq!(p().decayed(3, Duration::from_secs(3600)), 0);
    }

    #[test]
    fn never_ejects_more_than_the_share() {
        let p = p();
        assert!(p.may_eject(0, 2));
        assert!(!p.may_eject(1, 2));
        assert!(!p.may_eject(0, 1), "50% of a pool of one is nobody");
        assert!(p.may_eject(4, 10) && !p.may_eject(5, 10));
        let none = PassivePolicy {
            max_ejected_percent: 0.0,
            ..p
        };
        assert!(!none.may_eject(0, 100));
        assert!(!PassivePolicy {
            consecutive_failures: 0,
            ..PassivePolicy::default()
        }
        .enabled());
    }
}
