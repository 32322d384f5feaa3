//! A pool's retry budget (`retry_budget: {ratio, min}`, Envoy's): retries of any cause
//! — a connect error, a reset, a status in `retry_on_status`, a stall — that the pool's
//! requests have in flight at once stay within `ratio` of its requests in flight, or
//! `min`, whichever is more. When a whole pool degrades, retries then add a fifth to
//! its load instead of doubling it; when one backend dies, the floor and the ratio let
//! its requests go elsewhere. A request that has retried holds its place until it
//! ends, however many more attempts it makes. A retry over the budget is not sent: the
//! request ends with its failed attempt's answer or error, counted as refused.

use crate::dataplane::context::Ctx;
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

/// `reason` index of a retry refused by the budget in `vigil_requests_refused_total`.
pub const REFUSED_RETRY_BUDGET: usize = 2;

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

impl Ctx {
    /// One more attempt is allowed and an untried candidate or fallback member exists.
    pub(crate) fn can_retry(&self) -> bool {
        self.retries_left > 0
            && self.pool().is_some_and(|p| {
                p.candidates
                    .iter()
                    .chain(&p.fallback)
                    .any(|i| !self.tried.contains(i))
            })
    }

    /// Takes a retry, if the pool's budget allows one more in flight: false (counted
    /// as refused) when it does not. A request retrying already has its place.
    pub(crate) fn take_retry(&mut self) -> bool {
        let Some(pool) = self.pool() else {
            return false;
        };
        if !self.retrying {
            // The pool's requests in flight: each has its attempt counted on a member,
            // this one's failed attempt too (`next_member` lets it go).
            let requests = pool.members.iter().map(|m| m.endpoint.in_flight()).sum();
            if !pool
                .retry_budget
                .try_take(requests, &pool.config.retry_budget)
            {
                pool.metrics.queue.refused[REFUSED_RETRY_BUDGET].inc();
                return false;
            }
        }
        pool.metrics.retries.inc();
        self.retrying = true;
        self.retries_left -= 1;
        true
    }

    /// Its place in the retry budget is given back, once, when the request ends.
    pub(crate) fn release_retry(&mut self) {
        if std::mem::take(&mut self.retrying) {
            if let Some(pool) = self.pool() {
                pool.retry_budget.give_back();
            }
        }
    }
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
