//! One request's context: the snapshot it routes with, its attempts (which backend,
//! retries left, why the last one failed) and everything it counts — in flight, on its
//! backend, waiting for an answer — given back when it ends, however it ends.

use crate::dataplane::admit::{self, Pick};
use crate::dataplane::request::{hash_key, route_index};
use crate::dataplane::routing::RoutingTable;
use crate::dataplane::{DataPlane, Flight};
use crate::observe::access_log::Entry;
use crate::observe::metrics::class_index;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;
use vigil_healthcheck::{Cut, Repeat};

pub struct Ctx {
    /// The snapshot this request routes with, loaded once in `request_filter`.
    pub(crate) table: Option<Arc<RoutingTable>>,
    pub(crate) pool: usize,
    /// Members already tried, in order.
    pub(crate) tried: Vec<usize>,
    /// The member the current attempt went to (its in-flight count is held).
    pub(crate) current: Option<usize>,
    pub(crate) retries_left: u32,
    /// It holds a place in its pool's retry budget (`budget.rs`) until it ends.
    pub(crate) retrying: bool,
    pub(crate) hash_key: Vec<u8>,
    pub(crate) started: Instant,
    /// When the current attempt was sent to its backend.
    pub(crate) attempt_started: Instant,
    /// The current attempt's id while it is registered as waiting (see
    /// `Endpoint::waiting_on`).
    pub(crate) waiting: Option<u64>,
    /// The pool had no routable backend when the request came: if the fallback
    /// members (`PoolRoute::fallback`) all fail too, it is answered 503.
    pub(crate) no_backend: bool,
    /// `next_member` found every member at `max_requests`: the request may queue.
    pub(crate) full: bool,
    /// It has waited in the pool's queue: it goes before new requests.
    pub(crate) waited: bool,
    /// Until when it may wait in the queue, once it has started to.
    pub(crate) queue_deadline: Option<Instant>,
    /// The current attempt received a response header.
    pub(crate) got_header: bool,
    /// `upstream_response_filter` asked for a retry on the response status.
    pub(crate) status_retry: bool,
    /// Counts the request in flight (the drain waits for it) until dropped.
    pub(crate) flight: Option<Flight>,
    /// The next attempt goes to the current backend again, on a new connection: its
    /// reused connection was closed as the request arrived (`stale_connection`).
    pub(crate) again: bool,
    /// That happened once already: it is not done twice for one request.
    pub(crate) stale_resent: bool,
    /// Why the current attempt's connection was cut, once `stale_connection` has
    /// read it.
    pub(crate) cut: Option<Cut>,
    /// Status of the last response header a backend sent; 0 when none did.
    pub(crate) upstream_status: u16,
    /// The current attempt became a tunnel (`Endpoint::tunnel_opened`).
    pub(crate) tunnel: bool,
    /// Body bytes the client got (the request loop counts them for the access log;
    /// Pingora's session counts its own).
    pub(crate) bytes_out: usize,
    /// Set only while the access log is on: the client's `x-request-id` or ours.
    pub(crate) request_id: String,
    /// We made the id up, so it is added to the request sent upstream.
    pub(crate) request_id_generated: bool,
}

/// How long an idle upstream keep-alive connection is kept, in Pingora's pool or in the
/// request loop's idle lists (`idle`).
pub(crate) const UPSTREAM_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

// Both request paths (the pipeline for every request it carries, `proxy`'s hooks for
// what it hands on) take every decision about a request through these methods, so they
// cannot disagree.
impl Ctx {
    pub(crate) fn new() -> Ctx {
        let now = Instant::now();
        Ctx {
            table: None,
            pool: 0,
            tried: Vec::new(),
            current: None,
            retries_left: 0,
            retrying: false,
            hash_key: Vec::new(),
            started: now,
            attempt_started: now,
            waiting: None,
            no_backend: false,
            full: false,
            waited: false,
            queue_deadline: None,
            got_header: false,
            status_retry: false,
            flight: None,
            again: false,
            stale_resent: false,
            cut: None,
            upstream_status: 0,
            tunnel: false,
            bytes_out: 0,
            request_id: String::new(),
            request_id_generated: false,
        }
    }

    /// Routes the request with `table`; false when no route matches.
    pub(crate) fn route(
        &mut self,
        table: Arc<RoutingTable>,
        req: &RequestHeader,
        client: Option<&SocketAddr>,
    ) -> bool {
        let Some(index) = route_index(&table, req) else {
            return false;
        };
        self.routed(table, index, req, client);
        true
    }

    /// The request goes to pool `index` of `table`.
    pub(crate) fn routed(
        &mut self,
        table: Arc<RoutingTable>,
        index: usize,
        req: &RequestHeader,
        client: Option<&SocketAddr>,
    ) {
        let key = table.pools[index]
            .config
            .hash_key
            .as_ref()
            .map(|key| hash_key(key, req, client))
            .unwrap_or_default();
        self.routed_with_key(table, index, key);
    }

    /// The request goes to pool `index` of `table`; `hash_key` is its key for the pool's
    /// `hash_key` setting (empty without one).
    pub(crate) fn routed_with_key(
        &mut self,
        table: Arc<RoutingTable>,
        index: usize,
        hash_key: Vec<u8>,
    ) {
        let pool = &table.pools[index];
        self.retries_left = pool.config.retries;
        self.hash_key = hash_key;
        if pool.panic {
            pool.metrics.panic.inc();
        }
        self.pool = index;
        self.table = Some(table);
    }

    /// The peer for the next attempt: an alive backend not tried yet, else a fallback
    /// member (`PoolRoute::fallback`). With none, an error; `no_backend` is set when no
    /// backend was routable from the start.
    pub(crate) fn next_peer(&mut self) -> Result<HttpPeer> {
        let i = self.next_member()?;
        let pool = self.pool().expect("routed request has a table");
        Ok(peer_for(pool, i))
    }

    /// [`Self::next_peer`] as the index of the pool member, counted as started; the
    /// request loop (`pipeline`) builds a peer only when it dials.
    pub(crate) fn next_member(&mut self) -> Result<usize> {
        self.got_header = false;
        self.full = false;
        if std::mem::take(&mut self.again) {
            if let Some(i) = self.current {
                // Same backend, still counted in flight.
                self.attempt_started = Instant::now();
                return Ok(i);
            }
        }
        self.release_current();
        // Borrowed, not cloned: the table's reference count is shared by every worker
        // thread, and each change to it moves its cache line between cores.
        let picked = {
            let pool = &self
                .table
                .as_ref()
                .expect("routed request has a table")
                .pools[self.pool];
            admit::pick(pool, &self.tried, &self.hash_key, self.waited)
        };
        let picked = match picked {
            Pick::Member(i) => Some(i),
            Pick::None => None,
            Pick::Full => {
                self.full = true;
                return Err(Error::explain(
                    HTTPStatus(503),
                    "every backend is at max_requests",
                ));
            }
        };
        if self.tried.is_empty() {
            // Nothing routable: a request tried only on fallback members that all fail
            // is answered as if there had been none to try.
            let pool = self.pool().expect("routed request has a table");
            self.no_backend = pool.candidates.is_empty();
        }
        let Some(i) = picked else {
            if self.tried.is_empty() {
                return Err(Error::explain(HTTPStatus(503), "no healthy backend"));
            }
            if self.no_backend {
                return Err(Error::explain(
                    HTTPStatus(503),
                    "no healthy backend; every other backend was tried",
                ));
            }
            return Err(Error::explain(
                ConnectNoRoute,
                "every alive backend was tried",
            ));
        };
        self.tried.push(i);
        self.current = Some(i);
        self.attempt_started = Instant::now();
        Ok(i)
    }

    /// The attempt has its connection (`fd`, from `local`). Pools with stall detection
    /// register their waiting attempts: if the backend turns out stuck, or one request
    /// waits far too long, an attempt that may be repeated (`repeatable`: idempotent,
    /// its body still at hand) with a retry left has its connection cut and is retried
    /// elsewhere. On HTTP/2 every stream is registered, so that a connection carrying
    /// one that may not be repeated is never cut.
    pub(crate) fn connected(
        &mut self,
        reused: bool,
        fd: std::os::unix::io::RawFd,
        local: Option<std::net::SocketAddr>,
        repeatable: bool,
    ) {
        let Some(pool) = self.pool() else { return };
        if !reused {
            pool.metrics.connections_opened.inc();
        }
        if !pool.config.passive.stall_detection {
            return;
        }
        let h2 = pool.config.protocol == vigil_conf::Protocol::H2;
        let repeat = if !repeatable || !self.can_retry() {
            Repeat::Never
        } else if self.tried.len() == 1 {
            Repeat::First
        } else {
            Repeat::IfStuck
        };
        if let Some(local) = local.filter(|_| h2 || repeat != Repeat::Never) {
            let id = attempt_id();
            if let Some(b) = self.current_backend() {
                b.waiting_on(id, fd, local, repeat);
                self.waiting = Some(id);
            }
        }
    }

    /// The attempt could not connect. Nothing reached the backend: any method may go to
    /// another one. True when it should.
    pub(crate) fn connect_failed(&mut self) -> bool {
        self.done_waiting();
        if let Some(b) = self.current_backend() {
            b.report_failure();
            b.failed(self.attempt_started.elapsed());
        }
        // Nothing reached the backend: a redispatch, outside the retry budget.
        self.can_retry() && self.take_retry(false)
    }

    /// The attempt failed after connecting. `safe`: the request may be sent again (it
    /// is idempotent, or it provably never reached the backend) and its body is still at
    /// hand. True when it should go to another backend.
    pub(crate) fn attempt_failed(&mut self, e: &Error, safe: bool) -> bool {
        let cut = self.done_waiting().or(self.cut.take());
        if std::mem::take(&mut self.status_retry) {
            return true;
        }
        let from_upstream = matches!(e.esource(), ErrorSource::Upstream);
        // A timeout is the backend's failure whenever it comes, before the answer or
        // during its body.
        let timed_out = matches!(e.etype(), ReadTimedout | WriteTimedout | ConnectTimedout);
        if (from_upstream && !self.got_header) || timed_out {
            if let Some(b) = self.current_backend() {
                // One slow request is no sign of a broken backend; it only counts in
                // its usual time.
                if cut != Some(Cut::Slow) {
                    b.report_failure();
                }
                b.failed(self.attempt_started.elapsed());
            }
        }
        // The backend timed out while working on it: the retry adds load, within the
        // budget. A backend that could not take it (reset, closed) passes its requests
        // on outside the budget, as a dead one's connect errors do; a stall cut's
        // resend is bounded by the stall detector's own budget.
        let load = timed_out && e.etype() != &ConnectTimedout && cut.is_none();
        from_upstream && !self.got_header && safe && self.can_retry() && self.take_retry(load)
    }

    /// The attempt failed on a reused (idle) connection before any answer, and its
    /// request may be sent again (`safe`, as for [`Self::attempt_failed`]): the backend
    /// most likely closed that connection as the request arrived (the keep-alive race).
    /// True when it goes again to the same backend on a new connection (once per
    /// request; not the backend's failure, nor a retry); false when it is an ordinary
    /// failure, for `attempt_failed`. A timeout or a cut connection is never stale.
    pub(crate) fn stale_connection(&mut self, e: &Error, safe: bool) -> bool {
        self.cut = self.done_waiting();
        let stale = safe
            && self.cut.is_none()
            && !self.got_header
            && !self.stale_resent
            && matches!(e.esource(), ErrorSource::Upstream)
            && !matches!(e.etype(), ReadTimedout | WriteTimedout | ConnectTimedout);
        if stale {
            self.stale_resent = true;
            self.again = true;
        }
        stale
    }

    /// A final response header with `status` arrived. True when the pool retries this
    /// status elsewhere (`status_retry` is then set).
    pub(crate) fn answered(&mut self, status: u16, idempotent: bool) -> bool {
        self.got_header = true;
        self.upstream_status = status;
        self.done_waiting();
        // A 101 makes the attempt a tunnel: load still, no longer waiting (`tunnel_opened`).
        let opened =
            status == 101 && !self.tunnel && self.current.is_some() && self.table.is_some();
        self.tunnel |= opened;
        let (Some(i), Some(pool)) = (self.current, self.pool()) else {
            return false;
        };
        if let Some(counters) = pool.metrics.upstream.get(i) {
            counters[class_index(status)].inc();
        }
        let backend = &pool.members[i].endpoint;
        backend.answered(self.attempt_started.elapsed(), status < 500);
        if opened {
            backend.tunnel_opened();
        }
        if status >= 500 {
            backend.report_failure();
        } else {
            backend.report_success();
        }
        let retry = pool.config.retry_on_status.contains(&status)
            && idempotent
            && self.can_retry()
            && self.take_retry(true);
        self.status_retry |= retry;
        retry
    }

    /// The request is over and the client got `status`: counted in the metrics.
    pub(crate) fn finished(&mut self, plane: &DataPlane, status: u16) {
        self.release_current();
        self.release_retry();
        if let Some(pool) = self.pool() {
            pool.metrics.requests[class_index(status)].inc();
            pool.metrics
                .duration
                .observe(self.started.elapsed().as_secs_f64());
        } else {
            plane.edge.count_unrouted(status);
        }
        self.flight = None;
    }

    /// The access-log fields the request's context knows (the time, its status, where
    /// it went and how long it took); the protocol's own are filled in by its path.
    pub(crate) fn access_entry(&self, status: u16) -> Entry<'_> {
        let pool = self.pool();
        Entry {
            time: Some(SystemTime::now()),
            status,
            duration: self.started.elapsed(),
            pool: pool.map_or("", |p| &p.name),
            backend: pool
                .zip(self.tried.last())
                .map_or("", |(p, &i)| &p.members[i].endpoint.address),
            attempts: self.tried.len(),
            upstream_status: self.upstream_status,
            ..Entry::default()
        }
    }

    pub(crate) fn pool(&self) -> Option<&crate::dataplane::routing::PoolRoute> {
        self.table.as_ref().map(|t| &t.pools[self.pool])
    }

    pub(crate) fn release_current(&mut self) {
        self.done_waiting();
        if let (Some(i), Some(p)) = (
            self.current.take(),
            self.table.as_ref().map(|t| &t.pools[self.pool]),
        ) {
            if std::mem::take(&mut self.tunnel) {
                p.members[i].endpoint.tunnel_closed();
            }
            p.members[i].endpoint.request_finished();
            if p.config.max_requests > 0 {
                // A place is free: the longest waiting request may have it.
                p.queue.wake_one();
            }
        }
    }

    /// The current attempt is no longer waiting for its answer; returns why its
    /// connection was cut, if it was.
    pub(crate) fn done_waiting(&mut self) -> Option<vigil_healthcheck::Cut> {
        match (self.waiting.take(), self.current_backend()) {
            (Some(id), Some(b)) => b.done_waiting(id),
            _ => None,
        }
    }

    pub(crate) fn current_backend(&self) -> Option<&vigil_healthcheck::Endpoint> {
        let i = self.current?;
        self.pool().map(|p| &*p.members[i].endpoint)
    }
}

/// However a request ends — answered, its client gone, its future dropped by a
/// cancelled task — its backend's in-flight and tunnel counts, its stall registration
/// and its place in the drain's count are given back here.
impl Drop for Ctx {
    fn drop(&mut self) {
        self.release_current();
        self.release_retry();
    }
}

/// A process-unique id for a waiting attempt. Each thread takes ids from a block of its
/// own: one add to the shared counter per 65,536 attempts instead of one per attempt.
fn attempt_id() -> u64 {
    const BLOCK: u64 = 1 << 16;
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static NEXT: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    NEXT.with(|c| {
        let (mut next, mut end) = c.get();
        if next == end {
            next = NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed);
            end = next + BLOCK;
        }
        c.set((next + 1, end));
        next
    })
}

/// The peer for member `i` of `pool`.
pub(crate) fn peer_for(pool: &crate::dataplane::routing::PoolRoute, i: usize) -> HttpPeer {
    let member = &pool.members[i];
    let mut peer = match &pool.tls {
        Some(tls) => {
            let sni = tls.server_name(&member.endpoint.address);
            let mut peer = HttpPeer::new(member.endpoint.socket_addr, true, sni);
            peer.options.verify_cert = tls.verify;
            peer.options.verify_hostname = tls.verify;
            peer.options.ca = tls.ca.clone();
            if pool.config.protocol == vigil_conf::Protocol::H2 {
                peer.options.set_http_version(2, 2);
            }
            peer
        }
        None => HttpPeer::new(member.endpoint.socket_addr, false, String::new()),
    };
    peer.options.connection_timeout = Some(pool.config.connect_timeout);
    peer.options.read_timeout = Some(pool.config.read_timeout);
    // Pooled connections to a backend removed by reload must not linger forever.
    peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
    peer
}
