//! vigil's `ProxyHttp`: route by Host and path, pick an alive backend, retry on
//! another one when that is safe, never on one already tried.

use crate::app::App;
use crate::metrics::class_index;
use crate::routing::{normalize_host, RoutingTable};
use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use vigil_conf::HashKey;

/// How long an idle upstream keep-alive connection is kept in Pingora's pool.
const UPSTREAM_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub struct VigilProxy {
    pub app: Arc<App>,
}

pub struct Ctx {
    /// The snapshot this request routes with, loaded once in `request_filter`.
    table: Option<Arc<RoutingTable>>,
    pool: usize,
    /// Members already tried, in order.
    tried: Vec<usize>,
    /// The member the current attempt went to (its in-flight count is held).
    current: Option<usize>,
    retries_left: u32,
    hash_key: Vec<u8>,
    started: Instant,
    no_backend: bool,
    /// The current attempt received a response header.
    got_header: bool,
    /// `upstream_response_filter` asked for a retry on the response status.
    status_retry: bool,
    counted: bool,
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Headers that concern one connection only (RFC 9110 §7.6.1). Transfer-Encoding is
/// left to Pingora, which frames the body itself.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

impl Ctx {
    fn pool(&self) -> Option<&crate::routing::PoolRoute> {
        self.table.as_ref().map(|t| &t.pools[self.pool])
    }

    /// One more attempt is allowed and an untried candidate exists.
    fn can_retry(&self) -> bool {
        self.retries_left > 0
            && self
                .pool()
                .is_some_and(|p| p.candidates.iter().any(|i| !self.tried.contains(i)))
    }

    fn take_retry(&mut self) {
        self.retries_left -= 1;
        if let Some(p) = self.pool() {
            p.metrics.retries.inc();
        }
    }

    fn release_current(&mut self) {
        if let (Some(i), Some(p)) = (
            self.current.take(),
            self.table.as_ref().map(|t| &t.pools[self.pool]),
        ) {
            p.members[i].backend.request_finished();
        }
    }

    fn current_backend(&self) -> Option<&vigil_healthcheck::Backend> {
        let i = self.current?;
        self.pool().map(|p| &*p.members[i].backend)
    }
}

fn hash_key(key: &HashKey, session: &Session) -> Vec<u8> {
    match key {
        HashKey::Header(name) => session
            .req_header()
            .headers
            .get(name.as_str())
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
        HashKey::Path => session.req_header().uri.path().as_bytes().to_vec(),
        HashKey::ClientIp => session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string().into_bytes())
            .unwrap_or_default(),
    }
}

/// Writes a small complete response.
pub(crate) async fn respond(
    session: &mut Session,
    status: u16,
    extra: &[(&str, &str)],
    body: &str,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    for (k, v) in extra {
        resp.insert_header(k.to_string(), *v)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::copy_from_slice(body.as_bytes())), true)
        .await
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
            no_backend: false,
            got_header: false,
            status_retry: false,
            counted: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        self.app.in_flight.fetch_add(1, Ordering::SeqCst);
        ctx.counted = true;
        let table = self.app.table();
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or(req.uri.host())
            .map(normalize_host)
            .unwrap_or_default();
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
        Ok(false)
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
        member.backend.request_started();
        let mut peer = HttpPeer::new(member.backend.socket_addr, false, String::new());
        peer.options.connection_timeout = Some(pool.config.connect_timeout);
        peer.options.read_timeout = Some(pool.config.read_timeout);
        // Pooled connections to a backend removed by reload must not linger forever.
        peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        ctx.tried.push(i);
        ctx.current = Some(i);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(b) = ctx.current_backend() {
            b.report_failure();
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
        let mut e = e.more_context(format!("Peer: {peer}"));
        if std::mem::take(&mut ctx.status_retry) {
            e.set_retry(true);
            return e;
        }
        let from_upstream = matches!(e.esource(), ErrorSource::Upstream);
        if from_upstream && !ctx.got_header {
            if let Some(b) = ctx.current_backend() {
                b.report_failure();
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
            return Ok(());
        }
        ctx.got_header = true;
        if let (Some(i), Some(pool)) = (ctx.current, ctx.pool()) {
            if let Some(counters) = pool.metrics.upstream.get(i) {
                counters[class_index(status)].inc();
            }
            let backend = &pool.members[i].backend;
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
        _ctx: &mut Ctx,
    ) -> Result<()> {
        // Most requests carry no hop-by-hop header: one pass over the names tells, and
        // only then are they looked up one by one and removed.
        if req.headers.keys().any(|n| HOP_BY_HOP.contains(&n.as_str())) {
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
        req.insert_header("x-forwarded-proto", http::HeaderValue::from_static("http"))?;
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
        ctx.no_backend || matches!(e.esource(), ErrorSource::Downstream)
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
        if let Some(pool) = ctx.pool() {
            let status = session
                .response_written()
                .map(|r| r.status.as_u16())
                .unwrap_or(502);
            pool.metrics.requests[class_index(status)].inc();
            pool.metrics
                .duration
                .observe(ctx.started.elapsed().as_secs_f64());
        }
        if std::mem::take(&mut ctx.counted) {
            self.app.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
