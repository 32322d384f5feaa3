//! vigil's `ProxyHttp`: route by Host and path, pick an alive backend, retry on
//! another one when that is safe, never on one already tried.

use crate::app::App;
use crate::metrics::class_index;
use crate::request::*;
use crate::routing::normalize_host;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use std::sync::Arc;
use tokio::time::Instant;
use vigil_healthcheck::{Cut, Repeat};

/// How long an idle upstream keep-alive connection is kept in Pingora's pool.
const UPSTREAM_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub struct VigilProxy {
    pub app: Arc<App>,
}

impl VigilProxy {
    /// The client's `x-request-id`, or a new random one that goes upstream too.
    fn assign_request_id(&self, session: &Session, ctx: &mut Ctx) {
        match session
            .req_header()
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
        {
            Some(id) if !id.is_empty() => ctx.request_id = id.to_string(),
            _ => {
                ctx.request_id = format!("{:016x}", rand::random::<u64>());
                ctx.request_id_generated = true;
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for VigilProxy {
    type CTX = Ctx;

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {
        // Pingora's default adds a disabled compression module that still runs on every
        // request; vigil passes bodies through untouched.
    }

    fn new_ctx(&self) -> Ctx {
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
            counted: false,
            upstream_status: 0,
            request_id: String::new(),
            request_id_generated: false,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        // Pipelined requests are answered in order, one after the other (RFC 9112
        // §9.3.2); Pingora keeps the setting for the rest of the connection.
        session.as_downstream_mut().set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        self.app.in_flight.started();
        ctx.counted = true;
        if self.app.access_log.enabled() {
            self.assign_request_id(session, ctx);
        }
        if let Err(reason) = check_host(session) {
            session.set_keepalive(None);
            let body = format!("{{\"error\":\"{reason}\"}}");
            respond(session, 400, &[], &body).await?;
            return Ok(true);
        }
        let table = self.app.table();
        let req = session.req_header();
        let host = request_host(req).map(normalize_host).unwrap_or_default();
        let Some(index) = table.route_index(&host, req.uri.path()) else {
            respond(session, 404, &[], "{\"error\":\"no route\"}").await?;
            return Ok(true);
        };
        let pool = &table.pools[index];
        ctx.retries_left = pool.config.retries;
        if let Some(key) = &pool.config.hash_key {
            ctx.hash_key = hash_key(key, session);
        }
        if pool.panic {
            pool.metrics.panic.inc();
        }
        ctx.pool = index;
        ctx.table = Some(table);
        if let Some(max) = self.app.edge.body_bytes() {
            if content_length(session).is_some_and(|len| len > max) {
                // The body is not read: the connection cannot carry another request.
                session.set_keepalive(None);
                respond(session, 413, &[], "{\"error\":\"request body too large\"}").await?;
                return Ok(true);
            }
        }
        if expects_continue(session) {
            // Answered here, as nginx does: the client sends its body at once instead
            // of waiting out its own timeout for a backend that may never say 100.
            session
                .as_downstream_mut()
                .write_continue_response()
                .await?;
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        // Chunked bodies announce no length: count what arrived.
        if let Some(max) = self.app.edge.body_bytes() {
            // fail_to_proxy answers 413 and closes the connection.
            if session.as_downstream().body_bytes_read() as u64 > max {
                return Err(Error::explain(HTTPStatus(413), "request body too large"));
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.release_current();
        ctx.got_header = false;
        // request_filter either set the table or answered the request itself.
        let pool = ctx.pool().expect("routed request has a table");
        let Some(i) =
            pool.selector
                .pick(&pool.members, &pool.candidates, &ctx.tried, &ctx.hash_key)
        else {
            if ctx.tried.is_empty() {
                ctx.no_backend = true;
                return Err(Error::explain(HTTPStatus(503), "no healthy backend"));
            }
            return Err(Error::explain(
                ConnectNoRoute,
                "every alive backend was tried",
            ));
        };
        let member = &pool.members[i];
        member.endpoint.request_started();
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
        ctx.tried.push(i);
        ctx.current = Some(i);
        ctx.attempt_started = Instant::now();
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if !reused {
            if let Some(pool) = ctx.pool() {
                pool.metrics.connections_opened.inc();
            }
        }
        // Pools with stall detection register their waiting attempts: if the backend
        // turns out stuck, or one request waits far too long, an attempt that may be
        // repeated (idempotent, no body, a retry left) has its connection cut and is
        // retried elsewhere. On HTTP/2 every stream is registered, so that a connection
        // carrying one that may not be repeated is never cut.
        let Some(pool) = ctx.pool().filter(|p| p.config.passive.stall_detection) else {
            return Ok(());
        };
        let h2 = pool.config.protocol == vigil_conf::Protocol::H2;
        let local = digest
            .and_then(|d| d.socket_digest.as_ref())
            .and_then(|s| s.local_addr())
            .and_then(|a| a.as_inet())
            .copied();
        let repeat = if !idempotent(&session.req_header().method)
            || !session.downstream_session.is_body_empty()
            || session.as_ref().retry_buffer_truncated()
            || !ctx.can_retry()
        {
            Repeat::Never
        } else if ctx.tried.len() == 1 {
            Repeat::First
        } else {
            Repeat::IfStuck
        };
        if let Some(local) = local.filter(|_| h2 || repeat != Repeat::Never) {
            static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let id = ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(b) = ctx.current_backend() {
                b.waiting_on(id, fd, local, repeat);
                ctx.waiting = Some(id);
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.done_waiting();
        if let Some(b) = ctx.current_backend() {
            b.report_failure();
            b.failed(ctx.attempt_started.elapsed());
        }
        // Nothing reached the backend: any method may go to another one.
        if ctx.can_retry() {
            ctx.take_retry();
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let cut = ctx.done_waiting();
        let mut e = e.more_context(format!("Peer: {peer}"));
        if std::mem::take(&mut ctx.status_retry) {
            e.set_retry(true);
            return e;
        }
        let from_upstream = matches!(e.esource(), ErrorSource::Upstream);
        // A timeout is the backend's failure whenever it comes, before the answer or
        // during its body.
        let timed_out = matches!(e.etype(), ReadTimedout | WriteTimedout | ConnectTimedout);
        if (from_upstream && !ctx.got_header) || timed_out {
            if let Some(b) = ctx.current_backend() {
                // One slow request is no sign of a broken backend; it only counts in
                // its usual time.
                if cut != Some(Cut::Slow) {
                    b.report_failure();
                }
                b.failed(ctx.attempt_started.elapsed());
            }
        }
        // A stale pooled connection never carried the request: safe for any method.
        let mut reused_only = e.retry;
        reused_only.decide_reuse(client_reused);
        let safe = idempotent(&session.req_header().method) || reused_only.retry();
        if from_upstream
            && !ctx.got_header
            && safe
            && !session.as_ref().retry_buffer_truncated()
            && ctx.can_retry()
        {
            ctx.take_retry();
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        if resp.status.is_informational() {
            // Returned before the hop-by-hop headers are stripped: a 101 keeps its
            // Connection and Upgrade headers, which are the handshake.
            if status == 101 {
                ctx.upstream_status = status;
            }
            return Ok(());
        }
        ctx.got_header = true;
        ctx.upstream_status = status;
        ctx.done_waiting();
        if let (Some(i), Some(pool)) = (ctx.current, ctx.pool()) {
            if let Some(counters) = pool.metrics.upstream.get(i) {
                counters[class_index(status)].inc();
            }
            let backend = &pool.members[i].endpoint;
            backend.answered(ctx.attempt_started.elapsed(), status < 500);
            if status >= 500 {
                backend.report_failure();
            } else {
                backend.report_success();
            }
            if pool.config.retry_on_status.contains(&status)
                && idempotent(&session.req_header().method)
                && ctx.can_retry()
            {
                ctx.take_retry();
                ctx.status_retry = true;
                return Err(Error::explain(
                    HTTPStatus(status),
                    "retrying on another backend",
                ));
            }
        }
        for h in HOP_BY_HOP.iter().skip(1) {
            resp.remove_header(*h);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Most requests carry no hop-by-hop header: one pass over the names tells, and
        // only then are they looked up one by one and removed.
        if req.headers.keys().any(|n| HOP_BY_HOP.contains(&n.as_str())) {
            let upgrade = session
                .is_upgrade_req()
                .then(|| req.headers.get(http::header::UPGRADE).cloned())
                .flatten();
            let listed: Vec<String> = req
                .headers
                .get_all(http::header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
                .filter(|t| !t.is_empty() && t != "close" && t != "keep-alive")
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
        // vigil answered `100 Continue` itself (request_filter).
        if req.headers.contains_key(http::header::EXPECT) {
            req.remove_header(&http::header::EXPECT);
        }
        if ctx.request_id_generated {
            req.insert_header("x-request-id", ctx.request_id.as_str())?;
        }
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string());
        if let Some(ip) = client {
            let xff = match req
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
                _ => ip,
            };
            req.insert_header("x-forwarded-for", xff)?;
        }
        let scheme = if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
            "https"
        } else {
            "http"
        };
        req.insert_header("x-forwarded-proto", http::HeaderValue::from_static(scheme))?;
        let host = session
            .req_header()
            .headers
            .get(http::header::HOST)
            .cloned();
        if let Some(host) = host {
            req.insert_header("x-forwarded-host", host)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if ctx.no_backend {
            if let Some(p) = ctx.pool() {
                p.metrics.no_healthy.inc();
            }
            let ok = respond(
                session,
                503,
                &[("x-vigil-error", "no-healthy-backend")],
                "{\"error\":\"no healthy backend\"}",
            )
            .await
            .is_ok();
            return FailToProxy {
                error_code: 503,
                can_reuse_downstream: ok,
            };
        }
        let code = match e.etype() {
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
        };
        if code > 0 {
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, e: &Error) -> bool {
        // A pool without alive backends answers 503 to every request: counted in
        // vigil_no_healthy_backend_total, and its cause logged once (the state change);
        // a line per request would flood the log in an outage. Clients that go away are
        // not the proxy's fault. Upstream failures that reach the client stay logged.
        ctx.no_backend
            || matches!(e.esource(), ErrorSource::Downstream)
            || matches!(e.etype(), HTTPStatus(413))
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Ctx,
        _e: &Error,
        _c: ProxyWarnLogContext,
    ) -> bool {
        // Retries are counted in vigil_upstream_retries_total; a line each is noise.
        true
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        ctx.release_current();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(502);
        if let Some(pool) = ctx.pool() {
            pool.metrics.requests[class_index(status)].inc();
            pool.metrics
                .duration
                .observe(ctx.started.elapsed().as_secs_f64());
        } else {
            self.app.edge.count_unrouted(status);
        }
        if self.app.access_log.enabled() {
            self.app.access_log.log(access_entry(session, ctx, status));
        }
        if std::mem::take(&mut ctx.counted) {
            self.app.in_flight.finished();
        }
    }
}
