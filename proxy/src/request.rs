//! One request's context and the helpers that read the client's request: its Host,
//! body length, `Expect`, hash key, and its access-log entry.

use crate::access_log::Entry;
use crate::routing::RoutingTable;
use bytes::Bytes;
use http::{Method, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;
use vigil_conf::HashKey;

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
    pub(crate) no_backend: bool,
    /// The current attempt received a response header.
    pub(crate) got_header: bool,
    /// `upstream_response_filter` asked for a retry on the response status.
    pub(crate) status_retry: bool,
    pub(crate) counted: bool,
    /// Status of the last response header a backend sent; 0 when none did.
    pub(crate) upstream_status: u16,
    /// Set only while the access log is on: the client's `x-request-id` or ours.
    pub(crate) request_id: String,
    /// We made the id up, so it is added to the request sent upstream.
    pub(crate) request_id_generated: bool,
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
pub(crate) fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
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

impl Ctx {
    pub(crate) fn pool(&self) -> Option<&crate::routing::PoolRoute> {
        self.table.as_ref().map(|t| &t.pools[self.pool])
    }

    /// One more attempt is allowed and an untried candidate exists.
    pub(crate) fn can_retry(&self) -> bool {
        self.retries_left > 0
            && self
                .pool()
                .is_some_and(|p| p.candidates.iter().any(|i| !self.tried.contains(i)))
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

pub(crate) fn hash_key(key: &HashKey, session: &Session) -> Vec<u8> {
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

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host header (HTTP/2 carries the
/// authority in its own field).
pub(crate) fn check_host(session: &Session) -> std::result::Result<(), &'static str> {
    let req = session.req_header();
    if req.version != Version::HTTP_11 {
        return Ok(());
    }
    match req.headers.get_all(http::header::HOST).iter().count() {
        0 => Err("HTTP/1.1 request without Host"),
        1 => Ok(()),
        _ => Err("more than one Host header"),
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

pub(crate) fn access_entry(session: &Session, ctx: &Ctx, status: u16) -> Entry {
    let req = session.req_header();
    let pool = ctx.pool();
    Entry {
        time: Some(SystemTime::now()),
        client: session
            .client_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        method: req.method.as_str().to_string(),
        host: request_host(req).unwrap_or_default().to_string(),
        path: req
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string(),
        protocol: match req.version {
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_09 => "HTTP/0.9",
            _ => "HTTP/1.1",
        },
        status,
        bytes_in: session.as_downstream().body_bytes_read(),
        bytes_out: session.as_downstream().body_bytes_sent(),
        duration: ctx.started.elapsed(),
        pool: pool.map(|p| p.config.name.clone()).unwrap_or_default(),
        backend: pool
            .zip(ctx.tried.last())
            .map(|(p, &i)| p.members[i].endpoint.address.to_string())
            .unwrap_or_default(),
        attempts: ctx.tried.len(),
        upstream_status: ctx.upstream_status,
        request_id: ctx.request_id.clone(),
    }
}
