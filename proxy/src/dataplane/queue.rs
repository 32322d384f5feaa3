//! A pool's queue (`queue: {size, timeout}`): where a request waits when every routable
//! backend of its pool is at `max_requests`, first in first out, as HAProxy's requests
//! wait for a server under `maxconn`. A backend finishing a request wakes the longest
//! waiting one (`wake_one`), which then picks a backend as any request does. The queue
//! outlives the routing table, rebuilt on every health change: it is the pool's, found
//! by name.

use crate::dataplane::kept::{self, Registry};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Why a request left the queue without a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue held `size` requests already (or has none).
    Full = 0,
    /// It waited `timeout`.
    TimedOut = 1,
}

#[derive(Default)]
pub struct PoolQueue {
    waiting: Mutex<VecDeque<Arc<Notify>>>,
}

/// Every pool's queue, by pool name, while a routing table holds it.
static QUEUES: Registry<PoolQueue> = Mutex::new(BTreeMap::new());

impl PoolQueue {
    /// The queue of the pool named `pool`: the one requests already wait in, if any.
    pub fn of(pool: &str) -> Arc<PoolQueue> {
        kept::of(&QUEUES, pool)
    }

    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.waiting.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until a backend has room (Ok: the caller picks one, and comes back here,
    /// with the same `deadline`, if another request took it first) or `deadline`
    /// passes. `size`: the most requests that may wait. `front`: a request woken
    /// before that lost its place to another goes back to the front.
    pub async fn wait(&self, size: u32, deadline: Instant, front: bool) -> Result<(), Refused> {
        let me = Arc::new(Notify::new());
        {
            let mut waiting = self.waiting.lock().unwrap();
            if waiting.len() >= size as usize && !front {
                return Err(Refused::Full);
            }
            match front {
                true => waiting.push_front(me.clone()),
                false => waiting.push_back(me.clone()),
            }
        }
        if tokio::time::timeout_at(deadline, me.notified())
            .await
            .is_ok()
        {
            return Ok(());
        }
        let mut waiting = self.waiting.lock().unwrap();
        match waiting.iter().position(|w| Arc::ptr_eq(w, &me)) {
            Some(i) => {
                waiting.remove(i);
                Err(Refused::TimedOut)
            }
            // Woken as the deadline came: the place is the caller's.
            None => Ok(()),
        }
    }

    /// A backend of the pool has room: the longest waiting request is told.
    pub fn wake_one(&self) {
        if let Some(next) = self.waiting.lock().unwrap().pop_front() {
            next.notify_one();
        }
    }
}

/// `Retry-After` on a request refused by the queue: a second, the client's next try
/// meeting a pool that has drained some of its queue.
pub const RETRY_AFTER: &str = "1";

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_longest_waiting_request_is_woken_first_and_a_full_queue_refuses() {
        let q = PoolQueue::of("queue-test-fifo");
        let deadline = Instant::now() + Duration::from_secs(1);
        let first = tokio::spawn({
            let q = q.clone();
            async move { q.wait(2, deadline, false).await }
        });
        tokio::task::yield_now().await;
        let second = tokio::spawn({
            let q = q.clone();
            async move { q.wait(2, deadline, false).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(q.len(), 2);
        assert_eq!(q.wait(2, deadline, false).await, Err(Refused::Full));
        q.wake_one();
        assert_eq!(first.await.unwrap(), Ok(()));
        assert!(!second.is_finished());
        assert_eq!(q.len(), 1);
        // Nobody wakes the second: it leaves at its deadline.
        assert_eq!(second.await.unwrap(), Err(Refused::TimedOut));
        assert!(q.is_empty());
        assert_eq!(
            q.wait(0, deadline, false).await,
            Err(Refused::Full),
            "size 0: no queue"
        );
    }

    #[test]
    fn a_pool_keeps_its_queue_while_a_table_holds_it() {
        let a = PoolQueue::of("queue-test-kept");
        assert!(Arc::ptr_eq(&a, &PoolQueue::of("queue-test-kept")));
        assert!(!Arc::ptr_eq(&a, &PoolQueue::of("queue-test-other")));
    }
}
