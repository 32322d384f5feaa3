//! vigil's own HTTP/1.1 request loop. It serves each HTTP/1 client connection from its
//! bytes: a plain request (a common method, no body or a `Content-Length` one that fits
//! the retry buffer, no upgrade, `Expect` or other hop-by-hop header, in origin form, to
//! a pool of plain HTTP/1 backends) is parsed where it lies in the read buffer, its
//! upstream head written straight from the client's bytes (the hop-by-hop `Connection`
//! left out, `X-Forwarded-*` and, with the access log on, `X-Request-Id` added), and
//! the answer's head and body copied back as they come, with only the hop-by-hop
//! headers left out. No header map is built, no head cloned or serialized again, and
//! the request's future is small: Pingora's HTTP/1 sessions and proxy cost about as
//! much CPU per request as all of HAProxy does (issue #8).
//!
//! The first request that is not plain (a chunked or large body, an upgrade, HTTP/1.0, a head that does
//! not parse or breaks a limit, no route, a TLS or HTTP/2 pool) is
//! handed, with every byte read so far put back (`Rewound`), to Pingora's proxy and
//! `VigilProxy`, which then serves the rest of the connection; so are HTTP/2
//! connections. Both paths take every decision about a request through `Ctx` (routing,
//! the backend, retries, stall registration, failure accounting, metrics), so a request
//! is treated the same whichever path carries it.

use crate::app::App;
use crate::idle;
use crate::proxy::VigilProxy;
use crate::request::*;
use crate::rewound::Rewound;
use crate::routing::{normalize_host, RoutingTable};
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::{ServerApp, IDLE_KEEPALIVE};
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::prelude::*;
use pingora::protocols::http::v1::server::{refuse_request_head, HeadLimitValues, HeadLimits};
use pingora::protocols::tls::ALPN;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use std::io::Write;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vigil_conf::HashKey;

/// Headers a head may have at most (Pingora's own limit).
const MAX_HEADERS: usize = 256;

/// A backend's response head may be at most this long (Pingora's own limit).
const MAX_RESPONSE_HEAD: usize = 1 << 20;

pub struct FastPath {
    /// False with `VIGIL_FAST_PATH=off` in the environment: every request takes
    /// Pingora's path, for comparing the two (`bench/harness.py split`).
    enabled: bool,
    app: Arc<App>,
    pingora: Arc<HttpProxy<VigilProxy>>,
    /// Dials new upstream connections; idle ones are kept in `idle`.
    dial: TransportConnector,
}

/// A plain request, read and checked: all the loop needs once its head is parsed.
struct Plain {
    /// Bytes of the client's buffer the head took.
    len: usize,
    /// The head to send upstream.
    upstream: Vec<u8>,
    /// A `HEAD` request: the answer has no body.
    head: bool,
    /// Its method may be sent twice (RFC 9110 §9.2.2).
    idempotent: bool,
    /// Bytes of body that follow the head (`Content-Length`), at most `RETRY_BUFFER`.
    body: usize,
    /// The client asked to close after this answer.
    close: bool,
    table: Arc<RoutingTable>,
    pool: usize,
    hash_key: Vec<u8>,
    /// What the access log needs of the head; None while the log is off.
    log: Option<Box<LogHead>>,
}

/// The parts of a request head its access-log line shows.
struct LogHead {
    method: &'static str,
    host: String,
    target: String,
    request_id: String,
}

enum Head {
    /// More bytes are needed.
    Partial,
    Plain(Plain),
    /// For Pingora's proxy.
    Other,
}

/// How the body of an answer ends (RFC 9112 §6.3).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// At the end of the connection.
    Close,
}

/// A backend's response head, parsed.
struct Response {
    /// Bytes of the buffer the head took.
    len: usize,
    status: u16,
    framing: Framing,
    /// The backend's connection may carry another request.
    reusable: bool,
    /// The head for the client (empty for an informational answer).
    client_head: Vec<u8>,
}

/// The client's side of a connection while the loop serves one of its requests.
struct Client<'a> {
    stream: &'a mut Stream,
    /// Bytes read from the client past the current request (its next, pipelined).
    pending: &'a mut BytesMut,
}

impl Client<'_> {
    /// Waits until the client closes its side (true) or sends more (false, the bytes
    /// kept in `pending` for its next request). Once `PIPELINE_HELD` bytes wait, the
    /// client is no longer watched: it never returns. `first`: the request has just
    /// been sent; most answers come sooner than `WATCH_AFTER`, and for them the client's
    /// socket is not read at all (a read that finds nothing is a system call).
    async fn gone(&mut self, first: bool) -> bool {
        if first {
            tokio::time::sleep(WATCH_AFTER).await;
        }
        if self.pending.len() >= PIPELINE_HELD {
            return std::future::pending().await;
        }
        self.pending.reserve(4096);
        matches!(self.stream.read_buf(self.pending).await, Ok(0) | Err(_))
    }
}

/// Pipelined bytes the loop reads ahead while a request waits for its answer.
const PIPELINE_HELD: usize = 64 * 1024;

/// How long a request waits for its answer before the loop watches its client too.
const WATCH_AFTER: Duration = Duration::from_millis(50);

/// A request as the loop sends it upstream.
#[derive(Clone, Copy)]
struct Outgoing<'a> {
    /// Its head and body, as sent.
    bytes: &'a [u8],
    /// A `HEAD`: the answer has no body.
    head: bool,
    /// It may be sent twice (RFC 9110 §9.2.2).
    idempotent: bool,
    /// The client's connection closes after the answer.
    close: bool,
}

/// How one attempt ended.
enum Exchange {
    /// The client has its answer (`status`); `keep` when its connection can carry
    /// another request, `reusable` when the backend's can.
    Answered {
        status: u16,
        keep: bool,
        reusable: bool,
    },
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

    /// Serves the connection's requests until one is not plain, then hands it over.
    async fn serve(&self, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned());
        let client_ip = client.as_ref().and_then(|a| a.as_inet()).map(|a| a.ip());
        let https = stream.get_ssl_digest().is_some();
        let mut buf = BytesMut::new();
        let mut first = true;
        loop {
            if buf.is_empty() {
                // Between requests the connection holds only its socket.
                buf = BytesMut::new();
                if !self.idle(&mut stream, shutdown, first).await {
                    return None;
                }
            }
            first = false;
            let limits = self.app.edge.limits();
            let plain = match self
                .read_head(&mut stream, &mut buf, &limits, client_ip, https)
                .await
            {
                Ok(Some(plain)) => plain,
                Ok(None) => {
                    let stream: Stream = if buf.is_empty() {
                        stream
                    } else {
                        Box::new(Rewound::new(stream, buf.freeze()))
                    };
                    return self.pingora.process_new(stream, shutdown).await;
                }
                Err(Some(status)) => {
                    self.app.edge.refused(status, client.as_ref());
                    Box::pin(refuse_request_head(&mut stream, status)).await;
                    return None;
                }
                Err(None) => return None,
            };
            // The body, held whole (at most RETRY_BUFFER): sent with the head, and again
            // if an attempt fails where that is safe.
            let mut upstream = plain.upstream;
            if plain.body > 0 {
                match self
                    .read_body(&mut stream, &mut buf, plain.len + plain.body)
                    .await
                {
                    Ok(()) => {}
                    Err(true) => {
                        self.app.edge.refused(408, client.as_ref());
                        Box::pin(refuse_request_head(&mut stream, 408)).await;
                        return None;
                    }
                    Err(false) => return None,
                }
                upstream.extend_from_slice(&buf[plain.len..plain.len + plain.body]);
            }
            buf.advance(plain.len + plain.body);
            // A draining vigil (SIGTERM, an upgrade) or a service shutting down answers
            // this request, says `Connection: close`, and closes: the client, not vigil,
            // ends the connection between two requests, so none is lost on the way.
            let close = plain.close || *shutdown.borrow() || self.app.draining();
            let mut ctx = Ctx::new();
            self.app.in_flight.started();
            ctx.counted = true;
            ctx.routed_with_key(plain.table, plain.pool, plain.hash_key);
            let out = Outgoing {
                bytes: &upstream,
                head: plain.head,
                idempotent: plain.idempotent,
                close,
            };
            let mut conn = Client {
                stream: &mut stream,
                pending: &mut buf,
            };
            let (status, keep) = self.attempts(&mut conn, &out, &mut ctx).await;
            if let Some(log) = plain.log {
                let entry = log_entry(*log, client.as_ref(), plain.body, &ctx, status);
                self.app.access_log.log(entry);
            }
            ctx.finished(&self.app, status);
            if !keep {
                return None;
            }
        }
    }

    /// Writes to the client, within `limits.client_write_timeout`: a client that does
    /// not take a write of its answer that fast is cut (an error, as if it had gone).
    async fn write_client(&self, client: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
        let limit = self.app.edge.client_write_timeout();
        match timeout(limit, write_flushed(client, bytes)).await {
            Ok(written) => written,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Reads until `buf` holds `want` bytes, within `limits.body_timeout`.
    /// `Err(true)`: the client was too slow (it gets 408); `Err(false)`: it went away.
    async fn read_body(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        want: usize,
    ) -> std::result::Result<(), bool> {
        let deadline = tokio::time::Instant::now() + self.app.edge.body_timeout();
        while buf.len() < want {
            buf.reserve(want - buf.len());
            match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Err(false),
                Err(_) => return Err(true),
            }
        }
        Ok(())
    }

    /// Waits until the client sends something: true when it did. A new connection's
    /// first request is awaited whatever the shutdown watch says (see pingora-core
    /// patch 3); later ones are not.
    async fn idle(&self, stream: &mut Stream, shutdown: &ShutdownWatch, first: bool) -> bool {
        if first {
            let readable = timeout(IDLE_KEEPALIVE, stream.wait_readable());
            return matches!(readable.await, Ok(Ok(_)));
        }
        if !*shutdown.borrow() {
            let mut shutdown = shutdown.clone();
            tokio::select! {
                ready = timeout(IDLE_KEEPALIVE, stream.wait_readable()) => {
                    return matches!(ready, Ok(Ok(_)))
                }
                _ = shutdown.changed() => {}
            }
        }
        // Draining (the watch turns at its start): the client may have sent its next
        // request just now, not knowing. A request that comes within DRAIN_LINGER is
        // still answered, with `Connection: close`; a client quiet that long is not
        // racing us, and its connection closes. The drain waits for the linger.
        self.app.in_flight.started();
        let ready = timeout(DRAIN_LINGER, stream.wait_readable()).await;
        self.app.in_flight.finished();
        matches!(ready, Ok(Ok(_)))
    }

    /// Reads until `buf` starts with a whole head. `Ok(None)`: the head is for Pingora's
    /// proxy (`buf` holds all that was read); `Err(Some(status))`: it is refused with
    /// `status`; `Err(None)`: the client closed or failed.
    async fn read_head(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        limits: &HeadLimitValues,
        client: Option<IpAddr>,
        https: bool,
    ) -> std::result::Result<Option<Plain>, Option<u16>> {
        // Until the first byte the keep-alive limit applies, then the head's own.
        let mut deadline = None;
        loop {
            if !buf.is_empty() {
                match self.parse_head(buf, limits, client, https) {
                    Head::Plain(plain) => return Ok(Some(plain)),
                    Head::Other => return Ok(None),
                    Head::Partial => {}
                }
                if deadline.is_none() {
                    deadline = limits.timeout.map(|t| tokio::time::Instant::now() + t);
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            let read = match deadline {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
                        Ok(read) => read,
                        Err(_) => return Err(Some(408)),
                    }
                }
                None => match timeout(IDLE_KEEPALIVE, stream.read_buf(buf)).await {
                    Ok(read) => read,
                    Err(_) => return Err(None),
                },
            };
            match read {
                Ok(0) | Err(_) => return Err(None),
                Ok(_) => {}
            }
        }
    }

    /// Parses the head at the start of `buf` and decides whether this loop carries it.
    fn parse_head(
        &self,
        buf: &[u8],
        limits: &HeadLimitValues,
        client: Option<IpAddr>,
        https: bool,
    ) -> Head {
        let mut slots = [MaybeUninit::<httparse::Header>::uninit(); MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let max = limits.max_headers.min(MAX_HEADERS);
        let len = match req.parse_with_uninit_headers(buf, &mut slots[..max]) {
            Ok(httparse::Status::Complete(len)) if len <= limits.max_bytes => len,
            Ok(httparse::Status::Partial) if buf.len() <= limits.max_bytes => return Head::Partial,
            // Too long, too many headers, malformed: Pingora's proxy answers.
            _ => return Head::Other,
        };
        if req.version != Some(1) {
            return Head::Other;
        }
        let logging = self.app.access_log.enabled();
        let Some(&method) = req.method.and_then(|m| METHODS.iter().find(|&&k| k == m)) else {
            return Head::Other;
        };
        let head = method == "HEAD";
        let Some(target) = req
            .path
            .filter(|t| t.starts_with('/') && t.bytes().all(uri_byte))
        else {
            return Head::Other;
        };
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        let mut host = None;
        let mut close = false;
        let mut body: Option<u64> = None;
        // Every X-Forwarded-For line: the chain continues from all of them.
        let mut xff: Vec<&[u8]> = Vec::new();
        // With the access log on: the client's request id, as on Pingora's path.
        let mut request_id: Option<&str> = None;
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                if host.is_some() {
                    return Head::Other;
                }
                host = Some(h.value);
            } else if name.eq_ignore_ascii_case("connection") {
                // Only `keep-alive` and `close`: anything else names more hop-by-hop
                // headers.
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                        return Head::Other;
                    }
                }
            } else if name.eq_ignore_ascii_case("content-length") {
                // One plain length; anything else (a list, a second line) is for
                // Pingora's proxy to judge.
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .filter(|v| {
                        !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit())
                    })
                    .and_then(|v| v.parse().ok());
                match (n, body) {
                    (Some(n), None) => body = Some(n),
                    _ => return Head::Other,
                }
            } else if name.eq_ignore_ascii_case("x-forwarded-for") {
                xff.push(h.value);
            } else if logging && request_id.is_none() && name.eq_ignore_ascii_case("x-request-id") {
                request_id = std::str::from_utf8(h.value).ok().filter(|v| !v.is_empty());
            } else if NOT_PLAIN.iter().any(|n| name.eq_ignore_ascii_case(n)) {
                // A body, an answer to wait for, or a hop-by-hop header to act on.
                return Head::Other;
            }
        }
        // Pingora's path answers a missing or invalid Host with 400.
        let Some(host) = host
            .filter(|h| valid_host(h))
            .and_then(|h| std::str::from_utf8(h).ok())
        else {
            return Head::Other;
        };
        let table = self.app.table();
        let Some(pool) = table.route_index(&normalize_host(host), path) else {
            return Head::Other;
        };
        let config = &table.pools[pool].config;
        if table.pools[pool].tls.is_some() || config.protocol != vigil_conf::Protocol::Http1 {
            return Head::Other;
        }
        // A body the loop holds whole, so that it can be sent again; a longer one, or
        // one over `limits.body_bytes` (413), is for Pingora's proxy.
        let body = body.unwrap_or(0);
        if body > RETRY_BUFFER as u64 || self.app.edge.body_bytes().is_some_and(|max| body > max) {
            return Head::Other;
        }
        let hash_key = match &config.hash_key {
            None => Vec::new(),
            Some(HashKey::Header(key)) => req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(key))
                .map(|h| h.value.to_vec())
                .unwrap_or_default(),
            Some(HashKey::Path) => path.as_bytes().to_vec(),
            Some(HashKey::ClientIp) => client
                .map(|ip| ip.to_string().into_bytes())
                .unwrap_or_default(),
        };
        // The same headers as `forward_headers` on Pingora's path.
        let mut up = Vec::with_capacity(len + 128);
        up.extend_from_slice(method.as_bytes());
        up.push(b' ');
        up.extend_from_slice(target.as_bytes());
        up.extend_from_slice(b" HTTP/1.1\r\n");
        for h in req.headers.iter() {
            // An empty request id is replaced by ours, as on Pingora's path.
            let empty_id =
                logging && request_id.is_none() && h.name.eq_ignore_ascii_case("x-request-id");
            if !empty_id
                && !FORWARDED_BY_US
                    .iter()
                    .any(|n| h.name.eq_ignore_ascii_case(n))
            {
                up.extend_from_slice(h.name.as_bytes());
                up.extend_from_slice(b": ");
                up.extend_from_slice(h.value);
                up.extend_from_slice(b"\r\n");
            }
        }
        if let Some(ip) = client {
            up.extend_from_slice(b"x-forwarded-for: ");
            // As on Pingora's path: values it can read as text, trimmed, empty ones left out.
            for prev in xff.iter().map(|v| v.trim_ascii()).filter(|v| {
                !v.is_empty() && v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
            }) {
                up.extend_from_slice(prev);
                up.extend_from_slice(b", ");
            }
            let _ = write!(up, "{ip}\r\n");
        }
        up.extend_from_slice(if https {
            b"x-forwarded-proto: https\r\n"
        } else {
            b"x-forwarded-proto: http\r\n"
        });
        up.extend_from_slice(b"x-forwarded-host: ");
        up.extend_from_slice(host.as_bytes());
        up.extend_from_slice(b"\r\n");
        let log = logging.then(|| {
            let request_id = match request_id {
                Some(id) => id.to_string(),
                None => {
                    let id = new_request_id();
                    let _ = write!(up, "x-request-id: {id}\r\n");
                    id
                }
            };
            Box::new(LogHead {
                method,
                host: host.to_string(),
                target: target.to_string(),
                request_id,
            })
        });
        up.extend_from_slice(b"\r\n");
        Head::Plain(Plain {
            len,
            upstream: up,
            head,
            idempotent: idempotent_method(method),
            body: body as usize,
            close,
            table,
            pool,
            hash_key,
            log,
        })
    }

    /// Tries backends until one answers or none is left: the status the client got and
    /// whether its connection can carry another request.
    async fn attempts(
        &self,
        client: &mut Client<'_>,
        out: &Outgoing<'_>,
        ctx: &mut Ctx,
    ) -> (u16, bool) {
        let Outgoing {
            bytes: req,
            idempotent,
            close,
            ..
        } = *out;
        loop {
            let i = match ctx.next_member() {
                Ok(i) => i,
                Err(e) => return self.failed(client.stream, ctx, e, req, close).await,
            };
            let pool = ctx.pool().expect("routed");
            let addr = pool.members[i].endpoint.socket_addr;
            let read_timeout = pool.config.read_timeout;
            // After a stale idle connection, a new one.
            let idle = if ctx.stale_resent {
                None
            } else {
                idle::take(addr)
            };
            let (mut up, reused) = match idle {
                Some(stream) => (stream, true),
                None => {
                    let peer = peer_for(pool, i);
                    // Boxed: dialling is rare, and its future would otherwise make every
                    // connection's (held while idle) several KiB larger.
                    match Box::pin(self.dial.new_stream(&peer)).await {
                        Ok(stream) => (stream, false),
                        Err(e) => {
                            if ctx.connect_failed() {
                                continue;
                            }
                            let e = e.into_up();
                            return self.failed(client.stream, ctx, e, req, close).await;
                        }
                    }
                }
            };
            let local = up
                .get_socket_digest()
                .and_then(|s| s.local_addr().and_then(|a| a.as_inet()).copied());
            ctx.connected(reused, up.id(), local, idempotent);
            let mut sent = None;
            let exchange = self
                .exchange(client, &mut up, out, read_timeout, ctx, &mut sent)
                .await;
            match exchange {
                Ok(Exchange::Answered {
                    status,
                    keep,
                    reusable,
                }) => {
                    if reusable {
                        idle::put(addr, up, UPSTREAM_IDLE_TIMEOUT);
                    }
                    return (status, keep);
                }
                Ok(Exchange::ClientGone) => return (sent.unwrap_or(502), false),
                // `answered` took the retry; the flag is for Pingora's path, whose
                // retry goes through `attempt_failed`.
                Ok(Exchange::StatusRetry) => ctx.status_retry = false,
                Err(e) => {
                    let e = e.more_context(format!("Peer: {addr}"));
                    if let Some(status) = sent {
                        // The answer was cut short: the client can only see the
                        // connection close.
                        ctx.attempt_failed(&e, false);
                        tracing::error!(
                            "Fail to proxy: {e}, status: {status}, tries: {}, {}",
                            ctx.tried.len(),
                            summary(req)
                        );
                        return (status, false);
                    }
                    // The whole request is at hand: an idempotent one may go again.
                    if reused && ctx.stale_connection(&e, idempotent) {
                        continue;
                    }
                    if !ctx.attempt_failed(&e, idempotent) {
                        return self.failed(client.stream, ctx, e, req, close).await;
                    }
                }
            }
        }
    }

    /// One attempt on `up`: the request out, the answer back. `sent` is set once the
    /// client has the answer's head.
    async fn exchange(
        &self,
        client: &mut Client<'_>,
        up: &mut Stream,
        out: &Outgoing<'_>,
        read_timeout: Duration,
        ctx: &mut Ctx,
        sent: &mut Option<u16>,
    ) -> Result<Exchange> {
        let Outgoing {
            bytes: req,
            head,
            close,
            ..
        } = *out;
        if let Err(e) = write_flushed(up, req).await {
            return Error::e_because(WriteError, "writing the request upstream", e)
                .map_err(|e| e.into_up());
        }
        let mut buf = BytesMut::with_capacity(8192);
        let mut first_wait = true;
        let resp = loop {
            if !buf.is_empty() {
                match parse_response(&buf, head, close)? {
                    // Nothing was asked to switch protocols.
                    Some(r) if r.status == 101 => {
                        return Error::e_explain(InvalidHTTPHeader, "101 to a plain request")
                            .map_err(|e| e.into_up())
                    }
                    Some(r) if r.status < 200 => {
                        buf.advance(r.len);
                        continue;
                    }
                    Some(r) => break r,
                    None => {}
                }
            }
            // A client that leaves while its request waits cancels it: the backend's
            // connection closes, and the request's slot and in-flight count are freed.
            let read = tokio::select! {
                biased;
                read = read_some(up, &mut buf, read_timeout) => read?,
                gone = client.gone(std::mem::replace(&mut first_wait, false)) => match gone {
                    true => return Ok(Exchange::ClientGone),
                    false => continue,
                },
            };
            if read == 0 {
                return Error::e_explain(ConnectionClosed, "before the response head")
                    .map_err(|e| e.into_up());
            }
        };
        if ctx.answered(resp.status, out.idempotent) {
            return Ok(Exchange::StatusRetry);
        }
        buf.advance(resp.len);
        let mut body = Body::new(resp.framing);
        let (take, mut done) = body.feed(&buf)?;
        let mut out = resp.client_head;
        out.extend_from_slice(&buf[..take]);
        ctx.bytes_out = take;
        buf.advance(take);
        if self.write_client(client.stream, &out).await.is_err() {
            return Ok(Exchange::ClientGone);
        }
        *sent = Some(resp.status);
        drop(out);
        while !done {
            buf.clear();
            if read_some(up, &mut buf, read_timeout).await? == 0 {
                if resp.framing == Framing::Close {
                    break;
                }
                return Error::e_explain(ConnectionClosed, "before the response body ended")
                    .map_err(|e| e.into_up());
            }
            let (take, end) = body.feed(&buf)?;
            done = end;
            if self
                .write_client(client.stream, &buf[..take])
                .await
                .is_err()
            {
                return Ok(Exchange::ClientGone);
            }
            ctx.bytes_out += take;
            buf.advance(take);
        }
        Ok(Exchange::Answered {
            status: resp.status,
            keep: !close && resp.framing != Framing::Close,
            // Bytes past the answer mean the backend is out of step.
            reusable: resp.reusable && buf.is_empty(),
        })
    }

    /// The request failed with `e` before the client had an answer: it gets its
    /// status, as on Pingora's path (`VigilProxy::fail_to_proxy`).
    async fn failed(
        &self,
        client: &mut Stream,
        ctx: &mut Ctx,
        e: Box<Error>,
        req: &[u8],
        close: bool,
    ) -> (u16, bool) {
        if ctx.no_backend {
            if let Some(p) = ctx.pool() {
                p.metrics.no_healthy.inc();
            }
            let mut out = Vec::with_capacity(256);
            let (status, extra, body) = NO_HEALTHY_BACKEND;
            let _ = write!(
                out,
                "HTTP/1.1 {status} Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            );
            for (k, v) in extra {
                let _ = write!(out, "{k}: {v}\r\n");
            }
            let connection = if close { "close" } else { "keep-alive" };
            let _ = write!(out, "Connection: {connection}\r\n\r\n");
            // An answer to HEAD has its length and no body.
            if !req.starts_with(b"HEAD ") {
                out.extend_from_slice(body.as_bytes());
            }
            let ok = self.write_client(client, &out).await.is_ok();
            return (status, ok && !close);
        }
        let code = error_status(&e);
        if code > 0 {
            let reason = http::StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            let out = format!(
                "HTTP/1.1 {code} {reason}\r\nCache-Control: private, no-store\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = self.write_client(client, out.as_bytes()).await;
        }
        if !matches!(e.esource(), ErrorSource::Downstream) {
            tracing::error!(
                "Fail to proxy: {e}, status: {code}, tries: {}, {}",
                ctx.tried.len(),
                summary(req)
            );
        }
        (if code > 0 { code } else { 502 }, false)
    }
}

/// Request headers that make a request not plain: a body, an answer to wait for, or a
/// hop-by-hop header to act on.
const NOT_PLAIN: [&str; 8] = [
    "transfer-encoding",
    "expect",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
];

/// How long a draining vigil still waits for the next request on a keep-alive
/// connection before it closes it (`FastPath::idle`).
const DRAIN_LINGER: Duration = Duration::from_millis(500);

/// Methods the loop carries; others are for Pingora's proxy.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// The longest request body the loop carries: it is held whole, so that a request may
/// be sent again after a failed attempt; longer ones take Pingora's proxy.
const RETRY_BUFFER: usize = 64 * 1024;

/// Request headers not copied upstream: the hop-by-hop `Connection` (only `keep-alive`
/// and `close` reach here) and the three vigil writes itself.
const FORWARDED_BY_US: [&str; 4] = [
    "connection",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Bytes of an origin-form target this loop passes on as they are (RFC 3986 pchar,
/// `/`, `?` and `%`); anything else is left to Pingora's proxy to judge.
fn uri_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// The access-log line of a request the loop carried.
fn log_entry(
    head: LogHead,
    client: Option<&pingora::protocols::l4::socket::SocketAddr>,
    bytes_in: usize,
    ctx: &Ctx,
    status: u16,
) -> crate::access_log::Entry {
    crate::access_log::Entry {
        client: client.map(|a| a.to_string()).unwrap_or_default(),
        method: head.method.to_string(),
        host: head.host,
        path: head.target,
        protocol: "HTTP/1.1",
        bytes_in,
        bytes_out: ctx.bytes_out,
        request_id: head.request_id,
        ..ctx.access_entry(status)
    }
}

/// The request line, for the error log.
fn summary(req: &[u8]) -> String {
    let line = req.split(|&b| b == b'\r').next().unwrap_or_default();
    String::from_utf8_lossy(line).into_owned()
}

async fn write_flushed(stream: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Reads more of the backend's answer into `buf`, within `read_timeout`.
async fn read_some(up: &mut Stream, buf: &mut BytesMut, read_timeout: Duration) -> Result<usize> {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(16 * 1024);
    }
    match timeout(read_timeout, up.read_buf(buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => {
            Error::e_because(ReadError, "reading the response", e).map_err(|e| e.into_up())
        }
        Err(_) => Error::e_explain(ReadTimedout, format!("timeout: {read_timeout:?}"))
            .map_err(|e| e.into_up()),
    }
}

fn bad_response<T>(why: &'static str) -> Result<T> {
    Error::e_explain(InvalidHTTPHeader, why).map_err(|e| e.into_up())
}

/// Parses the backend's response head at the start of `buf`: None while incomplete.
/// `head`: it answers a `HEAD`; `close`: the client's connection closes after it.
fn parse_response(buf: &[u8], head: bool, close: bool) -> Result<Option<Response>> {
    let mut slots = [MaybeUninit::<httparse::Header>::uninit(); MAX_HEADERS];
    let mut r = httparse::Response::new(&mut []);
    // As Pingora's client does, a space before a header's colon is let through;
    // obsolete line folding is not (a folded value would be passed on folded).
    let mut config = httparse::ParserConfig::default();
    config.allow_spaces_after_header_name_in_responses(true);
    let len = match config.parse_response_with_uninit_headers(&mut r, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_RESPONSE_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => return bad_response("response head too large"),
        Err(_) => return bad_response("invalid response head"),
    };
    let status = r.code.unwrap_or(0);
    if status < 200 {
        return Ok(Some(Response {
            len,
            status,
            framing: Framing::Empty,
            reusable: false,
            client_head: Vec::new(),
        }));
    }
    let mut length = None;
    let mut chunked = None;
    let (mut conn_close, mut conn_keepalive) = (false, false);
    // Headers the backend's `Connection` names: its connection's own, not passed on.
    let mut named: Vec<&[u8]> = Vec::new();
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (n, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return bad_response("invalid Content-Length"),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding counts: chunked or not.
            if let Some(last) = h
                .value
                .split(|&b| b == b',')
                .map(|c| c.trim_ascii())
                .next_back()
            {
                chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                conn_close |= token.eq_ignore_ascii_case(b"close");
                conn_keepalive |= token.eq_ignore_ascii_case(b"keep-alive");
                if !token.is_empty() && !connection_keeps(token) {
                    named.push(token);
                }
            }
        }
    }
    let framing = if head || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    let reusable = framing != Framing::Close
        && !(chunked.is_some() && length.is_some())
        && if r.version == Some(1) {
            !conn_close
        } else {
            conn_keepalive && !conn_close
        };
    let mut out = Vec::with_capacity(len + 32);
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", r.reason.unwrap_or(""));
    for h in r.headers.iter() {
        let skip = HOP_BY_HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n))
            || named.iter().any(|n| h.name.as_bytes().eq_ignore_ascii_case(n))
            // A length beside Transfer-Encoding is not sent on (RFC 9112 §6.2).
            || (chunked.is_some() && h.name.eq_ignore_ascii_case("content-length"));
        if !skip {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(if close || framing == Framing::Close {
        b"Connection: close\r\n\r\n"
    } else {
        b"Connection: keep-alive\r\n\r\n"
    });
    Ok(Some(Response {
        len,
        status,
        framing,
        reusable,
        client_head: out,
    }))
}

/// Where a body being copied is: it tells how many of the next bytes belong to it.
#[derive(Debug)]
enum Body {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

/// The state of a chunked body (RFC 9112 §7.1) between two reads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// In a chunk-size line: the size so far, its digits, past them (an extension).
    Size {
        size: u64,
        digits: u8,
        ext: bool,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the empty line that ends the body).
    TrailerStart,
    TrailerLine,
    TrailerEndLf,
}

impl Body {
    fn new(framing: Framing) -> Body {
        match framing {
            Framing::Empty => Body::Done,
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::Chunked(Chunk::Size {
                size: 0,
                digits: 0,
                ext: false,
            }),
            Framing::Close => Body::Close,
        }
    }

    /// Of `bytes`, how many belong to the body, and whether it ended with them.
    fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool)> {
        match self {
            Body::Done => Ok((0, true)),
            Body::Close => Ok((bytes.len(), false)),
            Body::Length(left) => {
                let take = (*left).min(bytes.len() as u64);
                *left -= take;
                let done = *left == 0;
                if done {
                    *self = Body::Done;
                }
                Ok((take as usize, done))
            }
            Body::Chunked(state) => {
                let mut i = 0;
                while i < bytes.len() {
                    if let Chunk::Data(left) = state {
                        let take = (*left).min((bytes.len() - i) as u64);
                        *left -= take;
                        i += take as usize;
                        if *left == 0 {
                            *state = Chunk::DataCr;
                        }
                        continue;
                    }
                    let b = bytes[i];
                    i += 1;
                    *state = match (*state, b) {
                        (
                            Chunk::Size {
                                size,
                                digits,
                                ext: false,
                            },
                            _,
                        ) if b.is_ascii_hexdigit() => {
                            if digits >= 15 {
                                return bad_response("chunk size too large");
                            }
                            let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                            Chunk::Size {
                                size: size * 16 + d,
                                digits: digits + 1,
                                ext: false,
                            }
                        }
                        (Chunk::Size { digits: 0, .. }, _) => {
                            return bad_response("invalid chunk size")
                        }
                        (Chunk::Size { size, .. }, b'\r') => Chunk::SizeLf { size },
                        (Chunk::Size { size, .. }, b'\n') | (Chunk::SizeLf { size }, b'\n') => {
                            if size == 0 {
                                Chunk::TrailerStart
                            } else {
                                Chunk::Data(size)
                            }
                        }
                        (Chunk::Size { size, digits, .. }, b';' | b' ' | b'\t') => Chunk::Size {
                            size,
                            digits,
                            ext: true,
                        },
                        (s @ Chunk::Size { ext: true, .. }, _) => s,
                        (Chunk::DataCr, b'\r') => Chunk::DataLf,
                        (Chunk::DataCr | Chunk::DataLf, b'\n') => Chunk::Size {
                            size: 0,
                            digits: 0,
                            ext: false,
                        },
                        (Chunk::TrailerStart, b'\r') => Chunk::TrailerEndLf,
                        (Chunk::TrailerStart | Chunk::TrailerEndLf, b'\n') => {
                            *self = Body::Done;
                            return Ok((i, true));
                        }
                        (Chunk::TrailerLine, b'\n') => Chunk::TrailerStart,
                        (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
                        _ => return bad_response("invalid chunked body"),
                    };
                }
                Ok((bytes.len(), false))
            }
        }
    }
}

#[async_trait]
impl ServerApp for FastPath {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let h2c = self.pingora.server_options.as_ref().is_some_and(|o| o.h2c);
        let h1 = matches!(stream.selected_alpn_proto(), None | Some(ALPN::H1));
        if !self.enabled || h2c || !h1 {
            return self.pingora.process_new(stream, shutdown).await;
        }
        self.serve(stream, shutdown).await
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.pingora).await
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(framing: Framing, parts: &[&[u8]]) -> Result<(usize, bool)> {
        let mut body = Body::new(framing);
        let mut total = 0;
        for part in parts {
            let (take, done) = body.feed(part)?;
            total += take;
            if done {
                return Ok((total, true));
            }
            assert_eq!(take, part.len(), "all of a part is body until the end");
        }
        Ok((total, false))
    }

    #[test]
    fn chunked_bodies_end_where_their_last_chunk_and_trailers_end() {
        let body: &[u8] = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nx-t: 1\r\n\r\n";
        assert_eq!(
            feed_all(Framing::Chunked, &[body]).unwrap(),
            (body.len(), true)
        );
        let mut with_next = body.to_vec();
        with_next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(
            feed_all(Framing::Chunked, &[&with_next]).unwrap(),
            (body.len(), true)
        );
        // Split at every byte.
        let parts: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(
            feed_all(Framing::Chunked, &parts).unwrap(),
            (body.len(), true)
        );
        assert_eq!(
            feed_all(Framing::Chunked, &[b"0\r\n\r\n"]).unwrap(),
            (5, true)
        );
        assert_eq!(
            feed_all(Framing::Chunked, &[b"a\r\n0123456789"]).unwrap(),
            (13, false)
        );
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"ffffffffffffffff0\r\n",
        ] {
            assert!(feed_all(Framing::Chunked, &[bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn length_bodies_take_only_their_length() {
        assert_eq!(
            feed_all(Framing::Length(3), &[b"ab", b"cdef"]).unwrap(),
            (3, true)
        );
        assert_eq!(feed_all(Framing::Empty, &[b"abc"]).unwrap(), (0, true));
        assert_eq!(
            feed_all(Framing::Close, &[b"abc", b"d"]).unwrap(),
            (4, false)
        );
    }

    fn parsed(head: &str, head_req: bool, close: bool) -> Response {
        parse_response(head.as_bytes(), head_req, close)
            .expect("valid")
            .expect("complete")
    }

    #[test]
    fn responses_are_framed_as_rfc_9112_says() {
        let r = parsed(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            false,
            false,
        );
        assert_eq!((r.framing, r.reusable), (Framing::Length(5), true));
        assert_eq!(r.len, 38);
        let r = parsed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, false);
        assert_eq!(r.framing, Framing::Empty, "an answer to HEAD has no body");
        let r = parsed(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            false,
            false,
        );
        assert_eq!(r.framing, Framing::Empty);
        let r = parsed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
            false,
        );
        assert_eq!((r.framing, r.reusable), (Framing::Chunked, true));
        let r = parsed("HTTP/1.1 200 OK\r\n\r\n", false, false);
        assert_eq!((r.framing, r.reusable), (Framing::Close, false));
        let r = parsed(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
            false,
            false,
        );
        assert!(!r.reusable);
        let r = parsed("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false, false);
        assert!(!r.reusable, "HTTP/1.0 without keep-alive closes");
        let r = parsed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            false,
            false,
        );
        assert_eq!((r.framing, r.reusable), (Framing::Chunked, false));
        let head = String::from_utf8(r.client_head).unwrap();
        assert!(
            !head.to_ascii_lowercase().contains("content-length"),
            "{head}"
        );
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1 1\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            assert!(
                parse_response(bad.as_bytes(), false, false).is_err(),
                "{bad}"
            );
        }
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nA: b\r\n", false, false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_client_gets_the_head_without_hop_by_hop_headers() {
        let r = parsed(
            "HTTP/1.1 200 Fine\r\nX-A: 1\r\nConnection: keep-alive, x-a\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
        );
        assert_eq!(
            String::from_utf8(r.client_head).unwrap(),
            "HTTP/1.1 200 Fine\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
            "X-A is named by Connection: the backend's connection's own"
        );
        let r = parsed("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, true);
        assert!(String::from_utf8(r.client_head)
            .unwrap()
            .ends_with("Connection: close\r\n\r\n"));
    }
}
