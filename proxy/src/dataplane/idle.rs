//! Idle upstream connections of vigil's own request loop (`pipeline`): a list per worker
//! thread and backend address, with no task per connection.
//!
//! Pingora's pool spawns an idle watcher for every connection it takes back and wakes
//! it to hand the connection out again: a task and two wake-ups per request. Here a
//! released connection is pushed on its thread's list as it is, and checked when it is
//! taken: a read that must find nothing (no data, no close), which tokio answers from
//! the readiness epoll last reported for the socket, without a system call, unless the
//! socket has become readable. A sweeper task per thread closes, once a second, the
//! connections the backend closed and those idle longer than their idle timeout, so
//! nothing lingers in CLOSE_WAIT or to a backend a reload removed. Worker threads run their own runtimes
//! (no work stealing), so a request, its connection and the list stay on one thread.

use pingora::protocols::Stream;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

/// Idle connections kept per backend on each worker thread; the oldest goes first.
const MAX_IDLE: usize = 128;

/// What an idle connection is kept under: the backend's address, and 0 for plain
/// connections or the pool's TLS settings and name (`PoolTls::connection_key`).
pub type Key = (SocketAddr, u64);

/// How often a thread's sweeper looks at its idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Idle {
    stream: Stream,
    until: Instant,
}

#[derive(Default)]
struct Lists {
    idle: HashMap<Key, Vec<Idle>>,
    swept: bool,
}

thread_local! {
    static LISTS: RefCell<Lists> = RefCell::default();
}

/// The most recently released connection to `addr` on this thread that is still open,
/// quiet and within its idle timeout.
pub fn take(key: Key) -> Option<Stream> {
    LISTS.with(|l| {
        let mut l = l.borrow_mut();
        let list = l.idle.get_mut(&key)?;
        let now = Instant::now();
        while let Some(mut c) = list.pop() {
            if c.until > now && quiet(&mut c.stream) {
                return Some(c.stream);
            }
        }
        None
    })
}

/// Keeps `stream`, a connection to `addr` that can carry another request, for at most
/// `idle_timeout`.
pub fn put(key: Key, stream: Stream, idle_timeout: Duration) {
    let start_sweeper = LISTS.with(|l| {
        let mut l = l.borrow_mut();
        let list = l.idle.entry(key).or_default();
        if list.len() >= MAX_IDLE {
            list.remove(0);
        }
        list.push(Idle {
            stream,
            until: Instant::now() + idle_timeout,
        });
        !std::mem::replace(&mut l.swept, true)
    });
    if start_sweeper {
        tokio::spawn(sweep());
    }
}

async fn sweep() {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        LISTS.with(|l| {
            let mut l = l.borrow_mut();
            let now = Instant::now();
            l.idle.retain(|_, list| {
                list.retain_mut(|c| c.until > now && quiet(&mut c.stream));
                !list.is_empty()
            });
        });
    }
}

/// An idle connection reads nothing: data it was not asked for, or the backend closing
/// it, make it unusable. The last read of the answer was short, which told tokio the
/// socket was drained, so this read is answered "would block" from tokio's readiness
/// state alone until epoll reports the socket readable again (`bench/harness.py split`:
/// two `recvfrom` per request, one per side, as without the check).
fn quiet(stream: &mut Stream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    matches!(Pin::new(stream).poll_read(&mut cx, &mut buf), Poll::Pending)
}
