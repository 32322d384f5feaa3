//! Which member of its pool a request goes to next: the balancer's pick among the
//! candidates not yet tried, then the held-out and last-resort members, each only
//! while it has fewer than the pool's `max_requests` in flight. A request that finds
//! every such member full waits in the pool's queue (`queue.rs`); while others wait
//! there, a new request joins them rather than overtake them.

use crate::dataplane::routing::PoolRoute;

/// What a request may have.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pick {
    /// This member, its in-flight count taken.
    Member(usize),
    /// Every member the request could go to is at `max_requests` (or others wait).
    Full,
    /// No member left to try.
    None,
}

/// The next member for a request that has tried `tried`, its hash key `key`.
/// `waited`: it has waited in the queue, or is a retry: it goes before new requests.
pub(crate) fn pick(pool: &PoolRoute, tried: &[usize], key: &[u8], waited: bool) -> Pick {
    let max = u64::from(pool.config.max_requests);
    if max == 0 {
        return match choose(pool, tried, key) {
            Some(i) => {
                pool.members[i].endpoint.request_started();
                Pick::Member(i)
            }
            None => Pick::None,
        };
    }
    if !waited && tried.is_empty() && !pool.queue.is_empty() {
        return Pick::Full;
    }
    let full = |i: &usize| pool.members[*i].endpoint.in_flight() >= max;
    let mut skip = tried.to_vec();
    skip.extend(
        pool.candidates
            .iter()
            .chain(&pool.fallback)
            .filter(|i| full(i)),
    );
    let mut any_full = skip.len() > tried.len();
    while let Some(i) = choose(pool, &skip, key) {
        // Another request may have taken its last place since it was seen.
        if pool.members[i].endpoint.try_request_started(max) {
            return Pick::Member(i);
        }
        skip.push(i);
        any_full = true;
    }
    if any_full {
        Pick::Full
    } else {
        Pick::None
    }
}

/// The balancer's pick among the candidates not in `skip`, else the first fallback
/// member not in it.
fn choose(pool: &PoolRoute, skip: &[usize], key: &[u8]) -> Option<usize> {
    pool.selector
        .pick(&pool.members, &pool.candidates, skip, key)
        .or_else(|| {
            let i = pool.fallback.iter().copied().find(|i| !skip.contains(i))?;
            let kind = !pool.members[i].state.held_out() as usize;
            pool.metrics.fallback[kind].inc();
            Some(i)
        })
}
