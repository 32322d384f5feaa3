//! vigil's own request loop for the plain HTTP/1 request: a `GET` or `HEAD` without a
//! body, upgrade or `Expect`, to a pool of plain HTTP/1 backends. It reads the head,
//! sends it on a pooled keep-alive connection, and copies the answer back in one task,
//! in line, without Pingora's proxy machinery (the per-request hooks, the channel
//! between the two halves of a request, cache and module checks), which cost about as
//! much CPU as the whole request does in HAProxy (issue #8).
//!
//! Every other request (a body, an upgrade, HTTP/2, a TLS or HTTP/2 pool, no route,
//! a bad Host, the access log on) is handed, its head put back unread, to Pingora's
//! proxy and `VigilProxy`. Both paths take every decision through `Ctx` (routing, the
//! backend, retries, stall registration, failure accounting, metrics), so a request is
//! treated the same whichever path carries it.

use crate::app::App;
use crate::idle;
use crate::proxy::VigilProxy;
use crate::request::*;
use crate::routing::RoutingTable;
use async_trait::async_trait;
use bytes::Bytes;
use http::{header, Method, Version};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession as Upstream;
use pingora::protocols::http::ServerSession;
use pingora::protocols::UniqueID;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::Peer;
use std::sync::Arc;

pub struct FastPath {
    /// False with `VIGIL_FAST_PATH=off` in the environment: every request takes
    /// Pingora's path, for comparing the two (`bench/harness.py split`).
    enabled: bool,
    app: Arc<App>,
    pingora: Arc<HttpProxy<VigilProxy>>,
    /// Dials new upstream connections; idle ones are kept in `idle`.
    dial: TransportConnector,
}

/// How one attempt ended.
enum Exchange {
    /// The client has its answer; the backend's connection goes back to the pool if
    /// it can carry another request.
    Answered,
    /// The client went away during the answer.
    ClientGone,
    /// The pool retries the backend's status elsewhere.
    StatusRetry,
}

impl FastPath {
    pub fn new(app: Arc<App>, pingora: HttpProxy<VigilProxy>, conf: &ServerConf) -> Self {
        FastPath {
            enabled: std::env::var("VIGIL_FAST_PATH").map_or(true, |v| v != "off"),
            app,
            pingora: Arc::new(pingora),
            dial: TransportConnector::new(Some(ConnectorOptions::from_server_conf(conf))),
        }
    }

    /// The request's route, when this path can carry it.
    fn plain(&self, session: &ServerSession) -> Option<(Arc<RoutingTable>, usize)> {
        if self.app.access_log.enabled() {
            return None;
        }
        let req = session.req_header();
        if !matches!(req.method, Method::GET | Method::HEAD)
            || !matches!(req.version, Version::HTTP_11 | Version::HTTP_10)
            || req.uri.authority().is_some()
        {
            return None;
        }
        let mut hosts = 0;
        for (name, value) in req.headers.iter() {
            match *name {
                header::HOST => hosts += 1,
                // Only `keep-alive` and `close`: anything else names more hop-by-hop
                // headers.
                header::CONNECTION => {
                    let tokens = value.to_str().ok()?;
                    if !tokens.split(',').all(|t| {
                        let t = t.trim();
                        t.is_empty()
                            || t.eq_ignore_ascii_case("keep-alive")
                            || t.eq_ignore_ascii_case("close")
                    }) {
                        return None;
                    }
                }
                // A body, an answer to wait for, or a hop-by-hop header to act on.
                header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::EXPECT => return None,
                _ if HOP_BY_HOP.contains(&name.as_str()) || name == "http2-settings" => {
                    return None
                }
                _ => {}
            }
        }
        // Pingora's path answers a missing or doubled Host with 400.
        if hosts > 1 || (hosts == 0 && req.version == Version::HTTP_11) {
            return None;
        }
        let table = self.app.table();
        let index = route_index(&table, req)?;
        let pool = &table.pools[index];
        if pool.tls.is_some() || pool.config.protocol != vigil_conf::Protocol::Http1 {
            return None;
        }
        Some((table, index))
    }

    async fn forward(&self, mut down: ServerSession, mut ctx: Ctx) -> Option<ReusedHttpStream> {
        down.set_pipelining_enabled(true);
        let reusable = self.attempts(&mut down, &mut ctx).await;
        let status = down
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(502);
        ctx.finished(&self.app, status);
        if !reusable {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&down);
        down.finish()
            .await
            .ok()
            .flatten()
            .map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
    }

    /// Tries backends until one answers or none is left; true when the client's
    /// connection can carry another request.
    async fn attempts(&self, down: &mut ServerSession, ctx: &mut Ctx) -> bool {
        loop {
            let peer = match ctx.next_peer() {
                Ok(peer) => peer,
                Err(e) => return self.failed(down, ctx, e).await,
            };
            let addr = *peer.address().as_inet().expect("backends are IP:port");
            let (stream, reused) = match idle::take(addr) {
                Some(stream) => (stream, true),
                None => match self.dial.new_stream(&peer).await {
                    Ok(stream) => (stream, false),
                    Err(e) => {
                        if ctx.connect_failed() {
                            continue;
                        }
                        return self.failed(down, ctx, e.into_up()).await;
                    }
                },
            };
            let mut up = Upstream::new_with_options(stream, &peer);
            let local = up
                .digest()
                .socket_digest
                .as_ref()
                .and_then(|s| s.local_addr())
                .and_then(|a| a.as_inet())
                .copied();
            ctx.connected(reused, up.id(), local, true);
            up.read_timeout = peer.options.read_timeout;
            match self.exchange(down, &mut up, ctx).await {
                Ok(Exchange::Answered) => {
                    up.respect_keepalive();
                    if let Some(stream) = up.reuse().await {
                        idle::put(addr, stream, UPSTREAM_IDLE_TIMEOUT);
                    }
                    return true;
                }
                Ok(Exchange::ClientGone) => return false,
                // `answered` took the retry; the flag is for Pingora's path, whose
                // retry goes through `attempt_failed`.
                Ok(Exchange::StatusRetry) => ctx.status_retry = false,
                Err(e) => {
                    let e = e.more_context(format!("Peer: {peer}"));
                    if !ctx.attempt_failed(&e, true) {
                        return self.failed(down, ctx, e).await;
                    }
                }
            }
        }
    }

    /// One attempt on `up`: the request out, the answer back.
    async fn exchange(
        &self,
        down: &mut ServerSession,
        up: &mut Upstream,
        ctx: &mut Ctx,
    ) -> Result<Exchange> {
        let mut req: RequestHeader = down.req_header().clone();
        req.set_version(Version::HTTP_11);
        let client = down.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let https = down.digest().is_some_and(|d| d.ssl_digest.is_some());
        forward_headers(&mut req, false, client, https, None)?;
        up.write_request_header(Box::new(req))
            .await
            .map_err(|e| e.into_up())?;
        let status = loop {
            up.read_response().await.map_err(|e| e.into_up())?;
            match up.get_status().map_or(0, |s| s.as_u16()) {
                // Nothing was asked to switch protocols.
                101 => {
                    return Error::e_explain(InvalidHTTPHeader, "101 to a plain request")
                        .map_err(|e| e.into_up())
                }
                100..=199 => continue,
                status => break status,
            }
        };
        if ctx.answered(status, true) {
            return Ok(Exchange::StatusRetry);
        }
        let mut resp = Box::new(up.resp_header().expect("read").clone());
        for h in HOP_BY_HOP.iter().skip(1) {
            resp.remove_header(*h);
        }
        if down.write_response_header(resp).await.is_err() {
            return Ok(Exchange::ClientGone);
        }
        while let Some(chunk) = up.read_body_ref().await.map_err(|e| e.into_up())? {
            let chunk = Bytes::copy_from_slice(chunk);
            if down.write_response_body(chunk, false).await.is_err() {
                return Ok(Exchange::ClientGone);
            }
        }
        Ok(Exchange::Answered)
    }

    /// The request failed with `e`: the client gets its status (when it still can) and
    /// the connection closes, as on Pingora's path (`VigilProxy::fail_to_proxy`).
    async fn failed(&self, down: &mut ServerSession, ctx: &mut Ctx, e: Box<Error>) -> bool {
        if ctx.no_backend {
            if let Some(p) = ctx.pool() {
                p.metrics.no_healthy.inc();
            }
            return no_healthy_backend_plain(down).await.is_ok();
        }
        let code = error_status(&e);
        if code > 0 {
            let _ = down.respond_error(code).await;
        }
        if !matches!(e.esource(), ErrorSource::Downstream) {
            tracing::error!(
                "Fail to proxy: {e}, status: {code}, tries: {}, {}",
                ctx.tried.len(),
                down.request_summary()
            );
        }
        false
    }
}

#[async_trait]
impl HttpServerApp for FastPath {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !self.enabled || session.as_http1().is_none() {
            return self.pingora.process_new_http(session, shutdown).await;
        }
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                // With head limits set, a bad head was answered while it was read.
                tracing::debug!("reading a request head: {e}");
                return None;
            }
        }
        if *shutdown.borrow() {
            // The service is shutting down: this is the connection's last request.
            session.set_keepalive(None);
        }
        if let Some((table, index)) = self.plain(&session) {
            let mut ctx = Ctx::new();
            self.app.in_flight.started();
            ctx.counted = true;
            ctx.routed(table, index, session.req_header(), session.client_addr());
            return self.forward(session, ctx).await;
        }
        session.unread_request();
        self.pingora.process_new_http(session, shutdown).await
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.pingora.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.pingora.server_options.as_ref()
    }

    async fn http_cleanup(&self) {
        self.pingora.http_cleanup().await
    }
}
