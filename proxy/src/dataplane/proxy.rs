//! vigil's `ProxyHttp`: route by Host and path, pick an alive backend, retry on
//! another one when that is safe, never on one already tried.

use crate::dataplane::context::*;
use crate::dataplane::request::*;
use crate::dataplane::DataPlane;
use crate::observe::access_log::{AccessLog, Entry};
use async_trait::async_trait;
use bytes::Bytes;
use http::Version;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use std::sync::Arc;

pub struct VigilProxy {
    pub plane: Arc<DataPlane>,
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
                ctx.request_id = new_request_id();
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
        Ctx::new()
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        // Pipelined requests are answered in order, one after the other (RFC 9112
        // §9.3.2); Pingora keeps the setting for the rest of the connection.
        session.as_downstream_mut().set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.flight = Some(self.plane.in_flight.start());
        if self.plane.draining() {
            // The last answer on this connection, told so (as on the request loop).
            session.set_keepalive(None);
        }
        let write_limit = self.plane.edge.client_write_timeout();
        session
            .as_downstream_mut()
            .set_write_timeout(Some(write_limit));
        if self.plane.access_log.enabled() {
            self.assign_request_id(session, ctx);
        }
        if let Err(reason) = check_host(session) {
            session.set_keepalive(None);
            let body = format!("{{\"error\":\"{reason}\"}}");
            respond(session, 400, &[], &body).await?;
            return Ok(true);
        }
        // Routed by the normalized path, which the backend receives too (unless the
        // pool forwards the client's own target), as on the request loop.
        let original = match normalize_uri(&session.req_header().uri) {
            Ok(None) => None,
            Ok(Some(normal)) => {
                let original = session.req_header().uri.clone();
                session.req_header_mut().set_uri(normal);
                Some(original)
            }
            Err(why) => {
                session.set_keepalive(None);
                respond(session, 400, &[], why.body()).await?;
                return Ok(true);
            }
        };
        if !ctx.route(
            self.plane.table(),
            session.req_header(),
            session.client_addr(),
        ) {
            respond(session, 404, &[], "{\"error\":\"no route\"}").await?;
            return Ok(true);
        }
        if let Some(original) = original {
            if ctx.pool().is_some_and(|p| p.config.forward_original_path) {
                session.req_header_mut().set_uri(original);
            }
        }
        if let Some(max) = self.plane.edge.body_bytes() {
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
        if let Some(max) = self.plane.edge.body_bytes() {
            // fail_to_proxy answers 413 and closes the connection.
            if session.as_downstream().body_bytes_read() as u64 > max {
                return Err(Error::explain(HTTPStatus(413), "request body too large"));
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.next_peer().map(Box::new)
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
        let local = digest
            .and_then(|d| d.socket_digest.as_ref())
            .and_then(|s| s.local_addr())
            .and_then(|a| a.as_inet())
            .copied();
        let repeatable = idempotent(&session.req_header().method)
            && session.downstream_session.is_body_empty()
            && !session.as_ref().retry_buffer_truncated();
        ctx.connected(reused, fd, local, repeatable);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let retry = ctx.connect_failed();
        e.set_retry(retry);
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
        // A stale pooled connection never carried the request: safe for any method.
        let mut reused_only = e.retry;
        reused_only.decide_reuse(client_reused);
        let untruncated = !session.as_ref().retry_buffer_truncated();
        let repeatable = idempotent(&session.req_header().method) && untruncated;
        // Pingora marks errors on a reused connection before any answer `ReusedOnly`;
        // sent again to the same backend only if it may be sent twice, as on the loop.
        if reused_only.retry() && ctx.stale_connection(&e, repeatable) {
            e.set_retry(true);
            return e;
        }
        let safe = repeatable || (reused_only.retry() && untruncated);
        let retry = ctx.attempt_failed(&e, safe);
        e.set_retry(retry);
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
                // Answered: the tunnel's silence is no stuck request (as on the loop).
                ctx.answered(status, false);
            }
            return Ok(());
        }
        if ctx.answered(status, idempotent(&session.req_header().method)) {
            return Err(Error::explain(
                HTTPStatus(status),
                "retrying on another backend",
            ));
        }
        remove_connection_named(resp);
        for h in HOP_BY_HOP.iter().skip(1) {
            resp.remove_header(*h);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        // RFC 9112 §6.1: an HTTP/1.0 client cannot read a chunked answer; it gets the
        // body as it is, delimited by the end of the connection.
        if session.req_header().version == http::Version::HTTP_10
            && resp.headers.contains_key(http::header::TRANSFER_ENCODING)
        {
            resp.remove_header(&http::header::TRANSFER_ENCODING);
            session.set_keepalive(None);
            resp.insert_header(http::header::CONNECTION, "close")?;
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let https = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let id = ctx.request_id_generated.then_some(ctx.request_id.as_str());
        let upgrade = asks_upgrade(session.req_header());
        forward_headers(req, upgrade, client, https, id)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if ctx.no_backend {
            if let Some(p) = ctx.pool() {
                p.metrics.no_healthy.inc();
            }
            let ok = no_healthy_backend(session).await.is_ok();
            return FailToProxy {
                error_code: 503,
                can_reuse_downstream: ok,
            };
        }
        let code = error_status(e);
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
        // not the proxy's fault. Upstream failures that reach the client stay logged,
        // but not the end of a tunnel (after a 101), reset or not: that is how tunnels
        // end, once per connection.
        ctx.no_backend
            || ctx.upstream_status == 101
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
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(502);
        if self.plane.access_log.enabled() {
            log_access(&self.plane.access_log, session, ctx, status);
        }
        ctx.finished(&self.plane, status);
    }
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
