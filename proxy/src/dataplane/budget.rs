//! A pool's retry budget (`retry_budget: {ratio, min}`, Envoy's): retries that add
//! load to the pool — a status in `retry_on_status`, a timeout while the backend
//! worked — that the pool's requests have in flight at once stay within `ratio` of its
//! requests in flight, or `min`, whichever is more. When a whole pool degrades,
//! retries then add a fifth to its load instead of multiplying it. A request its
//! backend could not take (a connect error, a reset or close before any answer) goes
//! elsewhere outside the budget: that moves the load of a dead backend, it adds none,
//! and refusing it would fail requests while other backends pass their checks. Stall
//! resends (a frozen backend's requests cut) have their own budget, the stall
//! detector's. A request that has
//! retried holds its place until it ends, however many more attempts it makes. A
//! retry over the budget is not sent: the request ends with its failed attempt's
//! answer or error, counted as refused.

use crate::dataplane::kept::{self, Registry};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Retries in flight in one pool, kept across routing tables.
#[derive(Default)]
pub struct RetryBudget {
    in_flight: AtomicU64,
}

static BUDGETS: Registry<RetryBudget> = Mutex::new(BTreeMap::new());

impl RetryBudget {
    /// The budget of the pool named `pool`.
    pub fn of(pool: &str) -> Arc<RetryBudget> {
        kept::of(&BUDGETS, pool)
    }

    /// Takes a place for one more retry in flight, if the budget has one for a pool
    /// with `requests` in flight.
    pub fn try_take(&self, requests: u64, config: &vigil_conf::RetryBudget) -> bool {
        let allowed = allowed(requests, config);
        self.in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < allowed).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn give_back(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Retries in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Retries a pool with `requests` in flight may have in flight.
fn allowed(requests: u64, config: &vigil_conf::RetryBudget) -> u64 {
    let share = (config.ratio * requests as f64) as u64;
    share.max(config.min.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_a_share_of_the_requests_in_flight_with_a_floor() {
        let c = vigil_conf::RetryBudget { ratio: 0.2, min: 3 };
        assert_eq!(allowed(0, &c), 3);
        assert_eq!(allowed(10, &c), 3);
        assert_eq!(allowed(20, &c), 4);
        assert_eq!(allowed(100, &c), 20);
        let b = RetryBudget::of("budget-test");
        for _ in 0..20 {
            assert!(b.try_take(100, &c));
        }
        assert!(!b.try_take(100, &c), "the 21st at 100 in flight");
        b.give_back();
        assert!(b.try_take(100, &c));
        assert!(!b.try_take(10, &c), "fewer requests: fewer retries");
        assert_eq!(b.in_flight(), 20);
        let none = vigil_conf::RetryBudget { ratio: 0.0, min: 0 };
        assert!(!RetryBudget::of("budget-test-none").try_take(1000, &none));
    }

    #[test]
    fn a_pool_keeps_its_budget_across_tables() {
        let a = RetryBudget::of("budget-test-kept");
        assert!(Arc::ptr_eq(&a, &RetryBudget::of("budget-test-kept")));
    }
}
