//! A backend's health as a typed state machine: `unknown → up ↔ down`.
//!
//! `observe` is pure: it takes one check result and the thresholds, updates the
//! counters and says whether (and why) the state changed. The first result decides
//! from `unknown`, so a new backend joins or is marked down after one check; from
//! then on `rise` successes or `fall` failures in a row are needed.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Configured, not yet checked: gets no traffic.
    Unknown,
    Up,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Consecutive results needed to change state; both at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub rise: u32,
    pub fall: u32,
}

impl Thresholds {
    /// Clamps to at least 1: a threshold of 0 would mean "change without evidence".
    pub fn new(rise: u32, fall: u32) -> Self {
        Thresholds {
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { rise: 2, fall: 3 }
    }
}

/// What one check concluded, as the state machine needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Health,
    pub to: Health,
    /// Results in a row that caused it.
    pub consecutive: u32,
    /// Why, for the log line: the results that decided it and the last one's detail.
    pub reason: String,
}

/// Health plus the counters that decide the next transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    pub health: Health,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    /// Failures since the backend went down; drives the backoff. Reset when it comes up.
    pub failures_while_down: u32,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            health: Health::Unknown,
            consecutive_successes: 0,
            consecutive_failures: 0,
            failures_while_down: 0,
        }
    }
}

impl Tracker {
    /// Records one result; returns the transition it caused, if any.
    /// `detail` describes the result (e.g. `HTTP 503`) for the transition's reason; it
    /// is called only when the state changes, so passing checks allocate nothing.
    pub fn observe(
        &mut self,
        verdict: Verdict,
        detail: impl FnOnce() -> String,
        t: &Thresholds,
    ) -> Option<Transition> {
        match verdict {
            Verdict::Pass => {
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                self.consecutive_failures = 0;
            }
            Verdict::Fail => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.consecutive_successes = 0;
            }
        }
        let to = match (self.health, verdict) {
            (Health::Unknown, Verdict::Pass) => Health::Up,
            (Health::Unknown, Verdict::Fail) => Health::Down,
            (Health::Up, Verdict::Fail) if self.consecutive_failures >= t.fall => Health::Down,
            (Health::Down, Verdict::Pass) if self.consecutive_successes >= t.rise => Health::Up,
            (Health::Down, Verdict::Fail) => {
                self.failures_while_down = self.failures_while_down.saturating_add(1);
                return None;
            }
            _ => return None,
        };
        let from = self.health;
        let consecutive = match verdict {
            Verdict::Pass => self.consecutive_successes,
            Verdict::Fail => self.consecutive_failures,
        };
        let reason = match (from, verdict) {
            (Health::Unknown, Verdict::Pass) => format!("first check passed: {}", detail()),
            (Health::Unknown, Verdict::Fail) => format!("first check failed: {}", detail()),
            (_, Verdict::Pass) => format!("{consecutive} checks in a row passed"),
            (_, Verdict::Fail) => {
                format!("{consecutive} checks in a row failed, last: {}", detail())
            }
        };
        self.health = to;
        self.failures_while_down = 0;
        Some(Transition {
            from,
            to,
            consecutive,
            reason,
        })
    }

    /// Between states: a result against the current state has been seen but not
    /// enough of them yet. The schedule checks fast then.
    pub fn is_changing(&self) -> bool {
        match self.health {
            Health::Unknown => true,
            Health::Up => self.consecutive_failures > 0,
            Health::Down => self.consecutive_successes > 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::*;

    fn run(t: &mut Tracker, th: &Thresholds, seq: &[Verdict]) -> Vec<Option<(Health, Health)>> {
        seq.iter()
            .map(|v| t.observe(*v, || "x".into(), th).map(|tr| (tr.from, tr.to)))
            .collect()
    }

    #[test]
    fn first_result_decides_from_unknown() {
        let th = Thresholds::new(3, 3);
        let mut t = Tracker::default();
        assert_eq!(
            run(&mut t, &th, &[Pass]),
            vec![Some((Health::Unknown, Health::Up))]
        );
        let mut t = Tracker::default();
        let tr = t.observe(Fail, || "HTTP 500".into(), &th).unwrap();
        assert_eq!(
            (tr.from, tr.to, tr.consecutive),
            (Health::Unknown, Health::Down, 1)
        );
    }

    #[test]
    fn fall_failures_in_a_row_take_it_down() {
        let th = Thresholds::new(2, 3);
        let mut t = Tracker {
            health: Health::Up,
            ..Default::default()
        };
        assert_eq!(
            run(&mut t, &th, &[Fail, Fail, Pass, Fail, Fail]),
            vec![None; 5]
        );
        assert!(t.is_changing());
        let tr = t.observe(Fail, || "HTTP 500".into(), &th).unwrap();
        assert_eq!(
            (tr.from, tr.to, tr.consecutive),
            (Health::Up, Health::Down, 3)
        );
        assert!(!t.is_changing());
    }

    #[test]
    fn rise_successes_in_a_row_bring_it_up() {
        let th = Thresholds::new(2, 3);
        let mut t = Tracker {
            health: Health::Down,
            ..Default::default()
        };
        assert_eq!(run(&mut t, &th, &[Pass, Fail, Pass]), vec![None; 3]);
        assert_eq!(t.failures_while_down, 1);
        let tr = t.observe(Pass, || "ok".into(), &th).unwrap();
        assert_eq!(
            (tr.from, tr.to, tr.consecutive),
            (Health::Down, Health::Up, 2)
        );
        assert_eq!(t.failures_while_down, 0, "backoff resets on recovery");
    }

    #[test]
    fn failures_while_down_count_for_backoff() {
        let th = Thresholds::new(1, 1);
        let mut t = Tracker::default();
        t.observe(Fail, || "HTTP 500".into(), &th);
        for n in 1..=5 {
            assert_eq!(t.observe(Fail, || "HTTP 500".into(), &th), None);
            assert_eq!(t.failures_while_down, n);
        }
    }

    #[test]
    fn thresholds_of_one_flip_every_time() {
        let th = Thresholds::new(0, 0); // clamped to 1
        let mut t = Tracker::default();
        let got = run(&mut t, &th, &[Pass, Fail, Pass]);
        assert!(got.iter().all(Option::is_some));
    }

    #[test]
    fn changing_state() {
        assert!(Tracker::default().is_changing());
        let t = Tracker {
            health: Health::Up,
            ..Default::default()
        };
        assert!(!t.is_changing());
    }
}
