//! One request's attempts on the loop: a backend chosen, the request sent (its body
//! held whole or streamed as it arrives), the answer copied back or, after a `101`,
//! the tunnel; retries where they are safe, and the client's answer when all failed.

use super::answer::{answer_head, Exchange, Wait};
use super::client::Client;
use super::framing::{Asked, Body, Framing};
use super::h2::{h2_conn, open_h2_conn, H2Client, H2Upstream};
use super::upstream::H2Head;
use super::{within, write_flushed, Pipeline};
use crate::dataplane::context::*;
use crate::dataplane::idle;
use crate::dataplane::request::*;
use crate::dataplane::routing::PoolRoute;
use bytes::{Buf, BytesMut};
use pingora::prelude::*;
use pingora::protocols::http::date::get_cached_date;
use pingora::protocols::Stream;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use vigil_healthcheck::load_report;

/// A request as the loop sends it upstream.
#[derive(Clone, Copy)]
pub(super) struct Outgoing<'a> {
    /// Its head, and its body when held whole, as sent (for a `protocol: h2` pool, the
    /// body alone: the head is `h2_head`).
    pub bytes: &'a [u8],
    /// For a `protocol: h2` pool: the head, as HTTP/2 fields (taken by the attempt
    /// that sends it, copied when it may be sent again).
    pub h2_head: &'a Mutex<Option<Box<H2Head>>>,
    /// For a `protocol: h2` pool: its method and target, for the error log.
    pub h2_line: Option<&'a (http::Method, bytes::Bytes)>,
    /// What the answer's framing depends on.
    pub asked: Asked,
    /// It may be sent twice (RFC 9110 §9.2.2).
    pub idempotent: bool,
}

/// A body streamed from the client as it arrives (a long or a chunked one).
pub(super) struct Streamed {
    pub body: Body,
    /// Some of it was taken from the client: the request cannot be sent again.
    pub started: bool,
    /// The whole body within `limits.body_timeout`.
    pub deadline: Instant,
    /// `limits.body_bytes`, for a chunked body.
    pub max: Option<u64>,
}

impl Streamed {
    pub(super) fn new(framing: Framing, deadline: Instant, max: Option<u64>) -> Streamed {
        Streamed {
            body: Body::new(framing),
            started: false,
            deadline,
            max,
        }
    }
}

/// A failure of the client's, while its body streams: the status it gets.
fn client_error<T>(status: u16, why: &'static str) -> Result<T> {
    Error::e_explain(HTTPStatus(status), why).map_err(|e| e.into_down())
}

impl Pipeline {
    /// Tries backends until one answers or none is left: the status the client got and
    /// whether its connection can carry another request.
    pub(super) async fn attempts(
        &self,
        client: &mut Client<'_>,
        out: &Outgoing<'_>,
        mut streamed: Option<&mut Streamed>,
        ctx: &mut Ctx,
    ) -> (u16, bool) {
        let close = out.asked.close;
        loop {
            // A streamed body, once begun, cannot be sent again.
            let repeatable = out.idempotent && !streamed.as_ref().is_some_and(|s| s.started);
            let i = match self.next_member(client.stream, out, ctx).await {
                Ok(i) => i,
                Err(answered) => return answered,
            };
            let pool = ctx.pool().expect("routed");
            let member = &pool.members[i];
            let addr = member.endpoint.socket_addr;
            let key = match &pool.tls {
                None => (addr, 0),
                Some(tls) => (addr, tls.connection_key(&member.endpoint.address)),
            };
            let read_timeout = pool.config.read_timeout;
            let h2 = pool.config.protocol == vigil_conf::Protocol::H2;
            // After a stale idle connection, a new one.
            let idle = (!ctx.stale_resent && !h2)
                .then(|| idle::take(key))
                .flatten();
            let (mut up, reused) = match idle {
                Some(stream) => (stream, true),
                None => match self.connect(pool, i, key, ctx.stale_resent).await {
                    Ok(connected) => connected,
                    Err(_) if ctx.connect_failed() => continue,
                    Err(e) => return self.failed(client.stream, ctx, e, out, close).await,
                },
            };
            let local = up
                .get_socket_digest()
                .and_then(|s| s.local_addr().and_then(|a| a.as_inet()).copied());
            ctx.connected(reused, up.id(), local, repeatable);
            let mut sent = None;
            let exchange = self
                .exchange(
                    client,
                    &mut up,
                    out,
                    streamed.as_deref_mut(),
                    read_timeout,
                    ctx,
                    &mut sent,
                )
                .await;
            let repeatable = out.idempotent && !streamed.as_ref().is_some_and(|s| s.started);
            match exchange {
                Ok(Exchange::Answered {
                    status,
                    keep,
                    reusable,
                }) => {
                    if reusable && !h2 {
                        idle::put(key, up, UPSTREAM_IDLE_TIMEOUT);
                    }
                    return (status, keep);
                }
                Ok(Exchange::ClientGone) => return (sent.unwrap_or(502), false),
                // `answered` took the retry; the flag is for Pingora's path, whose
                // retry goes through `attempt_failed`.
                Ok(Exchange::StatusRetry) => ctx.status_retry = false,
                Err(e) if matches!(e.esource(), ErrorSource::Downstream) => {
                    // The client's own failure (its body): not the backend's.
                    return self.failed(client.stream, ctx, e, out, true).await;
                }
                Err(e) => {
                    let e = e.more_context(format!("Peer: {addr}"));
                    if let Some(status) = sent {
                        // The answer was cut short: the client can only see how its
                        // connection ends, a reset and not a close (an answer delimited
                        // by the close would look whole).
                        reset_on_close(client.stream);
                        ctx.attempt_failed(&e, false);
                        tracing::error!(
                            "Fail to proxy: {e}, status: {status}, tries: {}, {}",
                            ctx.tried.len(),
                            summary(out)
                        );
                        return (status, false);
                    }
                    // The whole request is at hand: an idempotent one may go again.
                    if reused && ctx.stale_connection(&e, repeatable) {
                        continue;
                    }
                    if !ctx.attempt_failed(&e, repeatable) {
                        return self.failed(client.stream, ctx, e, out, close).await;
                    }
                }
            }
        }
    }

    /// A connection to member `i` of `pool` (`key`), and whether it was open before: a
    /// new one, or for a `protocol: h2` pool a stream on this thread's connection to it
    /// (a new connection when there is none, or when `fresh`).
    async fn connect(
        &self,
        pool: &PoolRoute,
        i: usize,
        key: idle::Key,
        fresh: bool,
    ) -> Result<(Stream, bool)> {
        if pool.config.protocol != vigil_conf::Protocol::H2 {
            return Ok((self.dial(pool, i).await?, false));
        }
        if let Some(conn) = h2_conn(key).filter(|_| !fresh) {
            return Ok((Box::new(H2Upstream::new(conn)), true));
        }
        let stream = self.dial(pool, i).await?;
        let scheme = match pool.tls {
            Some(_) => http::uri::Scheme::HTTPS,
            None => http::uri::Scheme::HTTP,
        };
        let address = &pool.members[i].endpoint.address;
        let timeout = pool.config.connect_timeout;
        // Boxed, as dialling is.
        let conn = Box::pin(open_h2_conn(key, stream, scheme, address, timeout))
            .await
            .or_err(ConnectError, "HTTP/2 handshake with the backend")
            .map_err(|e| e.into_up())?;
        Ok((Box::new(H2Upstream::new(conn)), false))
    }

    /// A new connection to member `i` of `pool`.
    async fn dial(&self, pool: &PoolRoute, i: usize) -> Result<Stream> {
        let peer = peer_for(pool, i);
        // Boxed: dialling is rare, and its future would otherwise make every
        // connection's (held while idle) several KiB larger.
        Box::pin(self.dial.new_stream(&peer))
            .await
            .map_err(|e| e.into_up())
    }

    /// One attempt on `up`: the request out, the answer back. `sent` is set once the
    /// client has the answer's head.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        client: &mut Client<'_>,
        up: &mut Stream,
        out: &Outgoing<'_>,
        streamed: Option<&mut Streamed>,
        read_timeout: Duration,
        ctx: &mut Ctx,
        sent: &mut Option<u16>,
    ) -> Result<Exchange> {
        // HTTP/2 to HTTP/2: the answer's body comes as it came, its trailers as fields
        // (set before anything of the answer is read, which may be while the body goes).
        let h2 = H2Upstream::of(up);
        let through = out.asked.h2 && h2.map(H2Upstream::through).is_some();
        if let Some(h2) = h2 {
            let mut kept = out.h2_head.lock().unwrap_or_else(|e| e.into_inner());
            // Only a request that may go again (idempotent) is ever sent twice.
            let head = match out.idempotent {
                true => kept.as_deref().cloned(),
                false => kept.take().map(|head| *head),
            };
            if let Some(head) = head {
                h2.hand(head);
            }
        }
        write_up(up, out.bytes, read_timeout).await?;
        let mut buf = BytesMut::with_capacity(8192);
        // The body left unsent when the backend answered early: the client's
        // connection cannot carry another request.
        let mut unfinished = false;
        let mut repeatable = out.idempotent;
        if let Some(streamed) = streamed {
            let sending = self
                .stream_body(client, up, streamed, &mut buf, read_timeout)
                .await;
            repeatable &= !streamed.started;
            match sending? {
                Some(done) => unfinished = !done,
                None => return Ok(Exchange::ClientGone),
            }
        }
        // A body left unsent leaves the client's connection unusable: told so.
        let asked = Asked {
            close: out.asked.close || unfinished,
            ..out.asked
        };
        let wait = Wait {
            asked,
            watch_client: !unfinished,
            read_timeout,
        };
        let Some(resp) = answer_head(client, up, &mut buf, wait).await? else {
            return Ok(Exchange::ClientGone);
        };
        let reports = ctx.takes_load_reports();
        if let Some(at) = resp.load_report.as_ref().filter(|_| reports) {
            ctx.load_reported(load_report::parse(at.value(&buf)));
        }
        if resp.status != 101 && ctx.answered(resp.status, repeatable) && !unfinished {
            return Ok(Exchange::StatusRetry);
        }
        buf.advance(resp.len);
        if resp.status == 101 {
            return self
                .switch(client, up, resp, buf, read_timeout, ctx, sent)
                .await;
        }
        let (status, keep, reusable) = (resp.status, resp.keep, resp.reusable);
        let mut trailer = None;
        let wanted = (reports && resp.framing == Framing::Chunked).then_some(&mut trailer);
        let copied = self
            .copy_answer(client, up, resp, buf, read_timeout, sent, wanted)
            .await?;
        let Some((payload, rest)) = copied else {
            return Ok(Exchange::ClientGone);
        };
        if let Some(report) = trailer {
            ctx.load_reported(report);
        }
        if let Some(trailers) = through
            .then(|| H2Upstream::of(up))
            .flatten()
            .and_then(H2Upstream::take_trailers)
        {
            if let Some(report) = trailers.get(load_report::HEADER).filter(|_| reports) {
                ctx.load_reported(load_report::parse(report.as_bytes()));
            }
            H2Client::of(client.stream)?.trailers(trailers);
        }
        ctx.bytes_out = payload as usize;
        Ok(Exchange::Answered {
            status,
            keep: keep && !unfinished,
            // Bytes past the answer mean the backend is out of step.
            reusable: reusable && rest == 0 && !unfinished,
        })
    }

    /// Copies a streamed body from the client to the backend as it arrives, each write
    /// within the pool's `read_timeout` (a backend that does not take it is cut). Ends
    /// with `Some(true)` when all of it is sent, `Some(false)` when the backend
    /// answered first (its answer's start is in `answer`), None when the client left.
    async fn stream_body(
        &self,
        client: &mut Client<'_>,
        up: &mut Stream,
        s: &mut Streamed,
        answer: &mut BytesMut,
        write_timeout: Duration,
    ) -> Result<Option<bool>> {
        loop {
            if !client.pending.is_empty() {
                let (take, done) = match s.body.feed(client.pending) {
                    Ok(fed) => fed,
                    Err(_) => return client_error(400, "invalid chunked request body"),
                };
                if s.max.is_some_and(|max| s.body.payload > max) {
                    return client_error(413, "request body too large");
                }
                s.started = true;
                write_up(up, &client.pending[..take], write_timeout).await?;
                client.pending.advance(take);
                if done {
                    return Ok(Some(true));
                }
            }
            if client.pending.capacity() < 16 * 1024 {
                client.pending.reserve(16 * 1024);
            }
            tokio::select! {
                read = tokio::time::timeout_at(s.deadline, client.stream.read_buf(client.pending)) => {
                    match read {
                        Ok(Ok(n)) if n > 0 => {}
                        Ok(_) => return Ok(None),
                        Err(_) => {
                            self.timed_out(client.stream, "body");
                            return client_error(408, "request body timed out");
                        }
                    }
                }
                // The backend answers before the body is all sent (a 413, a 401...).
                read = up.read_buf(answer) => match read {
                    Ok(n) if n > 0 => return Ok(Some(false)),
                    Ok(_) => return Error::e_explain(ConnectionClosed, "while sending the request body")
                        .map_err(|e| e.into_up()),
                    Err(e) => return Error::e_because(ReadError, "while sending the request body", e)
                        .map_err(|e| e.into_up()),
                },
            }
        }
    }

    /// The request failed with `e` before the client had an answer: it gets its
    /// status, as on Pingora's path (`VigilProxy::fail_to_proxy`).
    pub(super) async fn failed(
        &self,
        client: &mut Stream,
        ctx: &mut Ctx,
        e: Box<Error>,
        out: &Outgoing<'_>,
        close: bool,
    ) -> (u16, bool) {
        if ctx.no_backend {
            if let Some(p) = ctx.pool() {
                p.metrics.no_healthy.inc();
            }
            let (status, extra, body) = NO_HEALTHY_BACKEND;
            let ok = self
                .respond(client, status, &extra, body, close, out.asked.head)
                .await;
            return (status, ok && !close);
        }
        let code = error_status(&e);
        if code > 0 {
            let reason = http::StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            let out = format!(
                "HTTP/1.1 {code} {reason}\r\nDate: {}\r\nCache-Control: private, no-store\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                get_cached_date().to_str().unwrap_or_default()
            );
            let _ = self.write_client(client, out.as_bytes()).await;
        }
        if !matches!(e.esource(), ErrorSource::Downstream) {
            tracing::error!(
                "Fail to proxy: {e}, status: {code}, tries: {}, {}",
                ctx.tried.len(),
                summary(out)
            );
        }
        (if code > 0 { code } else { 502 }, false)
    }

    /// Writes a small JSON answer: true when the client took it.
    pub(super) async fn respond(
        &self,
        client: &mut Stream,
        status: u16,
        extra: &[(&str, &str)],
        body: &str,
        close: bool,
        head: bool,
    ) -> bool {
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut out = Vec::with_capacity(256);
        let _ = write!(
            out,
            "HTTP/1.1 {status} {reason}\r\nDate: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            get_cached_date().to_str().unwrap_or_default(),
            body.len()
        );
        for (k, v) in extra {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        let connection = if close { "close" } else { "keep-alive" };
        let _ = write!(out, "Connection: {connection}\r\n\r\n");
        // An answer to HEAD has its length and no body.
        if !head {
            out.extend_from_slice(body.as_bytes());
        }
        self.write_client(client, &out).await.is_ok()
    }
}

/// Makes the stream's close a reset (`SO_LINGER` 0; pingora-core patch 12; an HTTP/2
/// stream's `RST_STREAM`).
fn reset_on_close(stream: &Stream) {
    if let Some(h2) = stream.as_any().downcast_ref::<super::h2::H2Client>() {
        return h2.cut();
    }
    let _ = pingora::protocols::l4::ext::set_reset_on_close(stream.id());
}

/// Writes to the backend, within `limit`.
async fn write_up(up: &mut Stream, bytes: &[u8], limit: Duration) -> Result<()> {
    match within(limit, write_flushed(up, bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            Error::e_because(WriteError, "writing the request upstream", e).map_err(|e| e.into_up())
        }
        Err(_) => {
            Error::e_explain(WriteTimedout, format!("timeout: {limit:?}")).map_err(|e| e.into_up())
        }
    }
}

/// The request line, for the error log.
fn summary(out: &Outgoing) -> String {
    if let Some((method, target)) = out.h2_line {
        return format!("{method} {} HTTP/2", String::from_utf8_lossy(target));
    }
    let line = out.bytes.split(|&b| b == b'\r').next().unwrap_or_default();
    String::from_utf8_lossy(line).into_owned()
}
