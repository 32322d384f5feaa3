//! One request's context and the helpers that read the client's request: its Host,
//! body length, `Expect`, hash key, and its access-log entry.

use crate::dataplane::routing::{normalize_host, RoutingTable};
use crate::dataplane::{DataPlane, Flight};
use crate::observe::access_log::{AccessLog, Entry};
use crate::observe::metrics::class_index;
use bytes::Bytes;
use http::{Method, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::proxy::Session;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;
use vigil_conf::HashKey;
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

/// A new request id: 16 random hex digits.
pub(crate) fn new_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
pub(crate) fn idempotent(m: &Method) -> bool {
    idempotent_method(m.as_str())
}

/// [`idempotent`] for a method's name as it came (the request loop has no `Method`).
pub(crate) fn idempotent_method(m: &str) -> bool {
    matches!(m, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE")
}

/// Headers that concern one connection only (RFC 9110 §7.6.1). Transfer-Encoding is
/// left to Pingora, which frames the body itself.
pub(crate) const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// How long an idle upstream keep-alive connection is kept, in Pingora's pool or in the
/// request loop's idle lists (`idle`).
pub(crate) const UPSTREAM_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

// Both request paths (`fast` for HTTP/1, `proxy`'s hooks for HTTP/2 and handed-over heads) take
// every decision about a request through these methods, so they cannot disagree.
impl Ctx {
    pub(crate) fn new() -> Ctx {
        Ctx {
            table: None,
            pool: 0,
            tried: Vec::new(),
            current: None,
            retries_left: 0,
            hash_key: Vec::new(),
            started: Instant::now(),
            attempt_started: Instant::now(),
            waiting: None,
            no_backend: false,
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
    /// request loop (`fast`) builds a peer only when it dials.
    pub(crate) fn next_member(&mut self) -> Result<usize> {
        self.got_header = false;
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
            let fallback = || {
                let i = pool
                    .fallback
                    .iter()
                    .copied()
                    .find(|i| !self.tried.contains(i))?;
                let kind = !pool.members[i].state.held_out() as usize;
                pool.metrics.fallback[kind].inc();
                Some(i)
            };
            pool.selector
                .pick(&pool.members, &pool.candidates, &self.tried, &self.hash_key)
                .or_else(fallback)
                .inspect(|&i| pool.members[i].endpoint.request_started())
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
        let retry = self.can_retry();
        if retry {
            self.take_retry();
        }
        retry
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
        let retry = from_upstream && !self.got_header && safe && self.can_retry();
        if retry {
            self.take_retry();
        }
        retry
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
        if pool.config.retry_on_status.contains(&status) && idempotent && self.can_retry() {
            self.take_retry();
            self.status_retry = true;
            return true;
        }
        false
    }

    /// The request is over and the client got `status`: counted in the metrics.
    pub(crate) fn finished(&mut self, plane: &DataPlane, status: u16) {
        self.release_current();
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

    pub(crate) fn take_retry(&mut self) {
        self.retries_left -= 1;
        if let Some(p) = self.pool() {
            p.metrics.retries.inc();
        }
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

/// The status the client gets for a request that failed with `e`; 0 when the client
/// is gone.
pub(crate) fn error_status(e: &Error) -> u16 {
    match e.etype() {
        HTTPStatus(c) => *c,
        ConnectTimedout | ReadTimedout | WriteTimedout => 504,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// What the request sent upstream carries besides the client's: no hop-by-hop headers
/// (but an upgrade's own pair), no `Expect` (vigil answered `100 Continue` itself),
/// `x-forwarded-for`, `-proto` and `-host`, and the request id when vigil made it up.
pub(crate) fn forward_headers(
    req: &mut RequestHeader,
    upgrade: bool,
    client: Option<std::net::IpAddr>,
    https: bool,
    request_id: Option<&str>,
) -> Result<()> {
    // Most requests carry no hop-by-hop header: one pass over the names tells, and
    // only then are they looked up one by one and removed.
    if req.headers.keys().any(|n| HOP_BY_HOP.contains(&n.as_str())) {
        let upgrade = upgrade
            .then(|| req.headers.get(http::header::UPGRADE).cloned())
            .flatten();
        let listed: Vec<String> = connection_tokens(&req.headers)
            .map(str::to_ascii_lowercase)
            .filter(|t| t != "close" && t != "keep-alive")
            .collect();
        for name in listed.iter().map(String::as_str).chain(HOP_BY_HOP) {
            req.remove_header(name);
        }
        // An upgrade (WebSocket) asks the backend to change protocols: that one
        // hop-by-hop pair is the request itself and goes through.
        if let Some(protocol) = upgrade {
            req.insert_header(
                http::header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            )?;
            req.insert_header(http::header::UPGRADE, protocol)?;
        }
    }
    if req.headers.contains_key(http::header::EXPECT) {
        req.remove_header(&http::header::EXPECT);
    }
    if let Some(id) = request_id {
        req.insert_header("x-request-id", id)?;
    }
    if let Some(ip) = client {
        // Every line of the chain counts (a proxy in front may send one per hop).
        let mut xff = String::new();
        for prev in req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            xff.push_str(prev);
            xff.push_str(", ");
        }
        xff.push_str(&ip.to_string());
        req.insert_header("x-forwarded-for", xff)?;
    }
    let scheme = if https { "https" } else { "http" };
    req.insert_header("x-forwarded-proto", http::HeaderValue::from_static(scheme))?;
    if let Some(host) = req.headers.get(http::header::HOST).cloned() {
        req.insert_header("x-forwarded-host", host)?;
    }
    Ok(())
}

pub(crate) fn hash_key(key: &HashKey, req: &RequestHeader, client: Option<&SocketAddr>) -> Vec<u8> {
    match key {
        HashKey::Header(name) => req
            .headers
            .get(name.as_str())
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
        HashKey::Path => req.uri.path().as_bytes().to_vec(),
        HashKey::ClientIp => client
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string().into_bytes())
            .unwrap_or_default(),
    }
}

/// `uri` with its path normalized (`crate::dataplane::path`); None when it is already normal.
pub(crate) fn normalize_uri(
    uri: &http::Uri,
) -> std::result::Result<Option<http::Uri>, crate::dataplane::path::Invalid> {
    let Some(target) = uri.path_and_query() else {
        return Ok(None);
    };
    match crate::dataplane::path::normalize_target(target.as_str())? {
        std::borrow::Cow::Borrowed(_) => Ok(None),
        std::borrow::Cow::Owned(normal) => {
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = Some(
                normal
                    .parse()
                    .map_err(|_| crate::dataplane::path::Invalid::Malformed)?,
            );
            Ok(Some(
                http::Uri::from_parts(parts)
                    .map_err(|_| crate::dataplane::path::Invalid::Malformed)?,
            ))
        }
    }
}

/// The pool `req` routes to in `table`.
pub(crate) fn route_index(table: &RoutingTable, req: &RequestHeader) -> Option<usize> {
    let host = request_host(req).map(normalize_host).unwrap_or_default();
    table.route_index(&host, req.uri.path())
}

/// The head of a small complete JSON response.
fn small_response(status: u16, extra: &[(&str, &str)], body: &str) -> Result<Box<ResponseHeader>> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    for (k, v) in extra {
        resp.insert_header(k.to_string(), *v)?;
    }
    Ok(Box::new(resp))
}

/// Writes a small complete response.
pub(crate) async fn respond(
    session: &mut Session,
    status: u16,
    extra: &[(&str, &str)],
    body: &str,
) -> Result<()> {
    let resp = small_response(status, extra, body)?;
    session.write_response_header(resp, false).await?;
    session
        .write_response_body(Some(Bytes::copy_from_slice(body.as_bytes())), true)
        .await
}

pub(crate) const NO_HEALTHY_BACKEND: (u16, [(&str, &str); 1], &str) = (
    503,
    [("x-vigil-error", "no-healthy-backend")],
    "{\"error\":\"no healthy backend\"}",
);

/// The answer when a pool has no backend to try.
pub(crate) async fn no_healthy_backend(session: &mut Session) -> Result<()> {
    let (status, extra, body) = NO_HEALTHY_BACKEND;
    respond(session, status, &extra, body).await
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host header (HTTP/2 carries the
/// authority in its own field), and a Host is a host and an optional port: no user
/// information, path or white space.
pub(crate) fn check_host(session: &Session) -> std::result::Result<(), &'static str> {
    let req = session.req_header();
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if req.version == Version::HTTP_11 => Err("HTTP/1.1 request without Host"),
        (Some(_), Some(_)) => Err("more than one Host header"),
        (Some(h), None) if !valid_host(h.as_bytes()) => Err("invalid Host header"),
        _ => Ok(()),
    }
}

/// A Host header's value (RFC 9110 §7.2, RFC 3986 §3.2.2): a registered name or IPv4
/// address of unreserved, percent-encoded and sub-delimiter characters, or an IP literal
/// in brackets, then an optional `:port`. Both HTTP/1 paths refuse anything else.
pub(crate) fn valid_host(h: &[u8]) -> bool {
    let (host, port) = match h.iter().rposition(|&b| b == b':') {
        // A colon inside brackets belongs to an IPv6 literal.
        Some(i) if !h[i..].contains(&b']') => (&h[..i], &h[i + 1..]),
        _ => (h, &h[..0]),
    };
    let host_ok = match host {
        [b'[', literal @ .., b']'] => {
            !literal.is_empty()
                && literal
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }
        _ => {
            !host.is_empty()
                && host
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b))
        }
    };
    host_ok && port.iter().all(u8::is_ascii_digit)
}

/// The request asks to switch protocols: an `Upgrade` header, and `upgrade` among the
/// `Connection` tokens (RFC 9110 §7.8: one without the other is no upgrade).
pub(crate) fn asks_upgrade(req: &RequestHeader) -> bool {
    req.version == Version::HTTP_11
        && req.headers.contains_key(http::header::UPGRADE)
        && connection_tokens(&req.headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The tokens of every `Connection` header line.
pub(crate) fn connection_tokens(headers: &http::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// `Connection` tokens that name no header to remove: the connection options, and the
/// framing headers, which the proxy sets itself whatever a backend says.
pub(crate) fn connection_keeps(token: &[u8]) -> bool {
    [
        &b"close"[..],
        b"keep-alive",
        b"content-length",
        b"transfer-encoding",
    ]
    .iter()
    .any(|k| token.eq_ignore_ascii_case(k))
}

/// Removes from an answer the headers its `Connection` header names (RFC 9110 §7.6.1):
/// they concern the backend's connection only.
pub(crate) fn remove_connection_named(resp: &mut ResponseHeader) {
    let named: Vec<String> = connection_tokens(&resp.headers)
        .map(str::to_ascii_lowercase)
        .filter(|t| !connection_keeps(t.as_bytes()))
        .collect();
    for name in named {
        resp.remove_header(&name);
    }
}

/// The Host header, or the authority of an absolute URI (HTTP/2, proxy-form requests).
pub(crate) fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(req.uri.host())
}

pub(crate) fn content_length(session: &Session) -> Option<u64> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub(crate) fn expects_continue(session: &Session) -> bool {
    let req = session.req_header();
    req.version == Version::HTTP_11
        && req
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Writes the access-log line of a request Pingora's proxy carried.
pub(crate) fn log_access(log: &AccessLog, session: &Session, ctx: &Ctx, status: u16) {
    let req = session.req_header();
    let client = session.client_addr().map(|a| a.to_string());
    log.log(&Entry {
        client: client.as_deref().unwrap_or(""),
        method: req.method.as_str(),
        host: request_host(req).unwrap_or(""),
        path: req.uri.path_and_query().map_or("/", |p| p.as_str()),
        protocol: match req.version {
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_09 => "HTTP/0.9",
            _ => "HTTP/1.1",
        },
        bytes_in: session.as_downstream().body_bytes_read() as u64,
        bytes_out: session.as_downstream().body_bytes_sent() as u64,
        request_id: &ctx.request_id,
        ..ctx.access_entry(status)
    });
}
