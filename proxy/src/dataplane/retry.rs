//! A request's retries: whether another attempt is allowed, and its place in the
//! pool's retry budget (`budget.rs`) while it retries.

use crate::dataplane::context::Ctx;
use crate::observe::metrics::REFUSED_RETRY_BUDGET;

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

    /// Takes a retry. One that adds `load` to the pool takes a place in its budget
    /// first: false (counted as refused) when there is none. A request retrying
    /// already has its place.
    pub(crate) fn take_retry(&mut self, load: bool) -> bool {
        let Some(pool) = self.pool() else {
            return false;
        };
        if load && !self.retrying {
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
        self.retrying |= load;
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
