//! vigil's HTTP/1 request loop. It serves each HTTP/1 client connection from its
//! bytes: a request head is parsed where it lies in the read buffer (`head`), its
//! upstream head written straight from the client's bytes (the hop-by-hop headers left
//! out, `X-Forwarded-*` and, with the access log on, `X-Request-Id` added), its body
//! held whole when it fits the retry buffer or streamed as it arrives, and the answer's
//! head and body copied back as they come (`attempt`, `framing`), or, after a `101`,
//! the bytes of both sides (`tunnel`). No header map is built and no head serialized
//! again: Pingora's HTTP/1 sessions and proxy cost about as much CPU per request as all
//! of HAProxy does (issue #8).
//!
//! Every HTTP/1.x request takes this loop, whatever its method, body, `Expect`,
//! version, upgrade or the TLS of its pool, and with the access log on or off; so does
//! every HTTP/2 request (h2 and h2c), each stream shown to it as an HTTP/1.1 request by
//! the codec in `h2`, and every request to a `protocol: h2` pool, its backend's stream
//! shown to it as an HTTP/1.1 connection (`h2::H2Upstream`). Pingora's proxy and
//! `VigilProxy` carry an HTTP/1 `CONNECT` and the few heads whose judgement is left to
//! Pingora's parser (malformed, over a head limit, a framing or target form the loop
//! does not carry: see `head::Head::Other`); such a connection is handed over, every
//! byte read so far put back (`Rewound`). An HTTP/2 stream is no connection to hand
//! over: such a request is refused on it (`h2::H2Client::refusal`). Both paths take
//! every decision about a request through `Ctx` (routing, the backend, retries, stall
//! registration, failure accounting, metrics).

mod answer;
mod attempt;
mod client;
mod conn;
mod fields;
mod framing;
mod h2;
mod head;
mod queued;
mod response;
mod tunnel;
mod upstream;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod fuzz_answer;
#[cfg(test)]
mod fuzz_head;
#[cfg(test)]
mod fuzz_stream;

use crate::dataplane::context::Ctx;
use crate::dataplane::proxy::VigilProxy;
use crate::dataplane::rewound::Rewound;
use crate::dataplane::DataPlane;
use crate::edge::listener::{accepted_on, local_inet};
use async_trait::async_trait;
use attempt::{Outgoing, Streamed};
use bytes::{Buf, BytesMut};
use client::Client;
use conn::Conn;
use framing::Asked;
use head::{Env, Head, LogHead, Refusal, Request, RequestBody};
use pingora::apps::ServerApp;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::prelude::*;
use pingora::protocols::http::v1::server::{refuse_request_head, HeadLimits};
use pingora::protocols::tls::ALPN;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What an HTTP/2 connection by prior knowledge (h2c) opens with (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Headers a head may have at most (Pingora's own limit).
const MAX_HEADERS: usize = 256;

/// How long a draining vigil still waits for the next request on a keep-alive
/// connection before it closes it (`Pipeline::idle`).
const DRAIN_LINGER: Duration = Duration::from_millis(500);

pub struct Pipeline {
    /// False with `VIGIL_FAST_PATH=off` in the environment: every request takes
    /// Pingora's path, for comparing the two (`bench/harness.py split`).
    enabled: bool,
    plane: Arc<DataPlane>,
    pingora: Arc<HttpProxy<VigilProxy>>,
    /// Dials new upstream connections; idle ones are kept in `idle`.
    dial: TransportConnector,
    /// The configured listener addresses, to name a connection's in metrics.
    listeners: Vec<std::net::SocketAddr>,
}

impl Pipeline {
    pub fn new(
        plane: Arc<DataPlane>,
        pingora: HttpProxy<VigilProxy>,
        conf: &ServerConf,
        listeners: Vec<std::net::SocketAddr>,
    ) -> Self {
        Pipeline {
            enabled: std::env::var("VIGIL_FAST_PATH").map_or(true, |v| v != "off"),
            plane,
            pingora: Arc::new(pingora),
            dial: TransportConnector::new(Some(ConnectorOptions::from_server_conf(conf))),
            listeners,
        }
    }

    /// Serves the connection's requests until it closes, or hands it to Pingora's proxy.
    /// `h2`: the stream is one HTTP/2 stream's request (`h2::H2Client`).
    async fn serve(
        &self,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
        h2: bool,
    ) -> Option<Stream> {
        let digest = stream.get_socket_digest();
        let client = digest.as_ref().and_then(|d| d.peer_addr().cloned());
        let conn = Conn::new(client);
        let https = stream.get_ssl_digest().is_some();
        let mut buf = BytesMut::new();

        let mut first = true;
        loop {
            if h2 && !first {
                // An HTTP/2 stream carries one request.
                return None;
            }
            if buf.is_empty() && !h2 {
                // Between requests the connection holds only its socket.
                buf = BytesMut::new();
                if !self.idle(&mut stream, shutdown, first).await {
                    return None;
                }
            }
            first = false;
            let limits = self.plane.edge.limits();
            let env = Env {
                limits: &limits,
                table: self.plane.table(),
                client: conn.client_ip.as_deref(),
                https,
                logging: self.plane.access_log.enabled(),
                body_bytes: self.plane.edge.body_bytes(),
                h2,
            };
            // Boxed, as is all the work of a request: a connection held idle between two
            // requests then holds only its socket and this loop's few fields.
            // (Each boxed in a statement of its own: a future made in the statement
            // that awaits it would still take room in this one's.)
            let read = Box::pin(self.read_head(&mut stream, &mut buf, &env));
            let req = match read.await {
                Ok(Head::Request(req)) => req,
                Ok(Head::Refused(refusal)) => {
                    let refuse =
                        Box::pin(self.refuse(&mut stream, &mut buf, refusal, &conn, shutdown));
                    if refuse.await {
                        continue;
                    }
                    if may_still_send(&mut stream, &buf, h2) {
                        let linger = Box::pin(linger(&mut stream));
                        linger.await;
                    }
                    return None;
                }
                Ok(_) if h2 => {
                    // A stream is no connection to hand over: what the loop does not
                    // carry is refused on it, its body unread.
                    let status = (stream.as_any())
                        .downcast_ref::<h2::H2Client>()
                        .map_or(400, |c| c.refusal(&limits));
                    self.plane.edge.refused(status, conn.client.as_ref());
                    let refuse = Box::pin(refuse_request_head(&mut stream, status));
                    refuse.await;
                    return None;
                }
                Ok(_) => {
                    let stream: Stream = if buf.is_empty() {
                        stream
                    } else {
                        Box::new(Rewound::new(stream, buf.freeze()))
                    };
                    return self.pingora.process_new(stream, shutdown).await;
                }
                Err(Some(status)) => {
                    self.plane.edge.refused(status, conn.client.as_ref());
                    let refuse = Box::pin(refuse_request_head(&mut stream, status));
                    refuse.await;
                    return None;
                }
                Err(None) => return None,
            };
            let carry = Box::pin(self.carry(&mut stream, &mut buf, req, &conn, shutdown));
            if !carry.await {
                if may_still_send(&mut stream, &buf, h2) {
                    // Boxed: the connection's own future stays small (see above).
                    let linger = Box::pin(linger(&mut stream));
                    linger.await;
                }
                return None;
            }
        }
    }

    /// Carries one request: its body, its attempts, its log line. True when the
    /// connection can carry another.
    async fn carry(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        req: Request,
        conn: &Conn,
        shutdown: &ShutdownWatch,
    ) -> bool {
        let mut ctx = Ctx::new();
        ctx.flight = Some(self.plane.in_flight.start());
        // (The clock read once for the request: it is read on every one.)
        let deadline = ctx.started + self.plane.edge.body_timeout();
        if req.continue_100 {
            // Answered here, as nginx does: the client sends its body at once instead
            // of waiting out its own timeout for a backend that may never say 100.
            if self
                .write_client(stream, b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                ctx.finished(&self.plane, 0);
                return false;
            }
        }
        // A body that fits the retry buffer is held whole: sent with the head, and
        // again if an attempt fails where that is safe.
        let mut upstream = req.upstream;
        let mut streamed = None;
        let held = match req.body {
            RequestBody::None => 0,
            RequestBody::Held(n) => {
                let want = req.len + n;
                if let Err(slow) = self.read_body(stream, buf, want, deadline).await {
                    if slow {
                        self.timed_out(stream, "body");
                        self.plane.edge.refused(408, conn.client.as_ref());
                        let refuse = Box::pin(refuse_request_head(stream, 408));
                        refuse.await;
                    }
                    ctx.finished(&self.plane, if slow { 408 } else { 0 });
                    return false;
                }
                upstream.extend_from_slice(&buf[req.len..want]);
                n
            }
            RequestBody::Streamed(framing) => {
                streamed = Some(Streamed::new(
                    framing,
                    deadline,
                    self.plane.edge.body_bytes(),
                ));
                0
            }
        };
        buf.advance(req.len + held);
        // A draining vigil (SIGTERM, an upgrade) or a service shutting down answers
        // this request, says `Connection: close`, and closes: the client, not vigil,
        // ends the connection between two requests, so none is lost on the way.
        let close = req.close || *shutdown.borrow() || self.plane.draining();
        ctx.routed_with_key(req.table, req.pool, req.hash_key);
        let h2_line = (req.h2_head.as_ref()).map(|h| (h.method.clone(), h.target.clone()));
        let h2_head = std::sync::Mutex::new(req.h2_head);
        let out = Outgoing {
            bytes: &upstream,
            h2_head: &h2_head,
            h2_line: h2_line.as_ref(),
            asked: Asked {
                head: req.head,
                close,
                http10: req.http10,
                upgrade: req.upgrade,
                h2: req.h2,
            },
            idempotent: req.idempotent,
        };
        let mut client = Client {
            stream,
            pending: buf,
        };
        let (status, keep) = self
            .attempts(&mut client, &out, streamed.as_mut(), &mut ctx)
            .await;
        if let Some(log) = req.log {
            let bytes_in = streamed.map_or(held as u64, |s| s.body.payload);
            let entry = log_entry(&log, conn.client_text(), bytes_in, &ctx, status);
            self.plane.access_log.log(&entry);
        }
        ctx.finished(&self.plane, status);
        keep
    }

    /// Answers a request refused without calling a backend (400, 404, 413). True when
    /// the connection can carry another request.
    async fn refuse(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        r: Refusal,
        conn: &Conn,
        shutdown: &ShutdownWatch,
    ) -> bool {
        let mut ctx = Ctx::new();
        if let Some((table, pool)) = r.route {
            ctx.routed_with_key(table, pool, Vec::new());
        }
        buf.advance(r.len);
        let close = r.close || *shutdown.borrow() || self.plane.draining();
        let ok = self
            .respond(stream, r.status, &[], r.body, close, r.head)
            .await;
        if let Some(log) = r.log {
            let entry = log_entry(&log, conn.client_text(), 0, &ctx, r.status);
            self.plane.access_log.log(&entry);
        }
        ctx.finished(&self.plane, r.status);
        ok && !close
    }

    /// Writes to the client, within `limits.client_write_timeout`: a client that does
    /// not take a write of its answer that fast is cut (an error, as if it had gone).
    async fn write_client(&self, client: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
        let limit = self.plane.edge.client_write_timeout();
        match within(limit, write_flushed(client, bytes)).await {
            Ok(written) => written,
            Err(_) => {
                self.timed_out(client, "write");
                Err(std::io::ErrorKind::TimedOut.into())
            }
        }
    }

    /// Counts a client on `stream` cut for being too slow (`kind`: `write`, `body`),
    /// under the configured listener it came in on.
    pub(super) fn timed_out(&self, stream: &Stream, kind: &str) {
        let local = local_inet(stream);
        let listener = local
            .and_then(|l| accepted_on(self.listeners.iter().copied(), l))
            .map(|i| self.listeners[i])
            .or(local)
            .map(|a| a.to_string())
            .unwrap_or_default();
        self.plane.metrics.client_timeout(&listener, kind);
    }
}

/// How long a closing connection reads what its client still sends, and how much.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

/// The connection closes after an answer (`Connection: close`, a body left unread, a
/// drain). If its client may still be sending — bytes read past the request, or bytes
/// waiting in the socket — closing now would make the kernel answer with a reset, which
/// can take the answer from a client that has not read it yet: it lingers instead. A
/// connection with nothing more to read closes at once.
fn may_still_send(stream: &mut Stream, pending: &BytesMut, h2: bool) -> bool {
    !h2 && (!pending.is_empty() || readable_now(stream))
}

/// Closes vigil's side first and reads what still comes, for up to `LINGER` (RFC 9112
/// §9.6; Pingora's head refusal and nginx's lingering close do the same).
async fn linger(stream: &mut Stream) {
    let _ = timeout(LINGER, AsyncWriteExt::shutdown(stream)).await;
    let mut sink = vec![0u8; 4096];
    let _ = timeout(LINGER, async {
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Whether the client's socket has something to read now (bytes or its end), by the
/// readiness the runtime already tracks: no system call. False for a stream that
/// cannot tell (TLS).
fn readable_now(stream: &mut Stream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let ready = std::pin::pin!(stream.wait_readable());
    matches!(ready.poll(&mut cx), std::task::Poll::Ready(Ok(true)))
}

/// The access-log line of a request the loop carried.
fn log_entry<'a>(
    head: &'a LogHead,
    client: &'a str,
    bytes_in: u64,
    ctx: &'a Ctx,
    status: u16,
) -> crate::observe::access_log::Entry<'a> {
    crate::observe::access_log::Entry {
        client,
        method: &head.method,
        host: &head.host,
        path: &head.target,
        protocol: head.protocol,
        bytes_in,
        bytes_out: ctx.bytes_out as u64,
        request_id: &head.request_id,
        ..ctx.access_entry(status)
    }
}

async fn write_flushed(stream: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// `step` within `limit`, as Pingora's `timeout`, its timer made only once the step
/// has to wait: most of a request's reads and writes are done when first polled (an
/// HTTP/2 stream's always take what they are given), and making a timer reads the
/// clock, twice (Pingora's timer checks that its clock thread runs).
async fn within<F: Future>(limit: Duration, step: F) -> Result<F::Output, Elapsed> {
    let mut step = std::pin::pin!(step);
    let mut timer = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = step.as_mut().poll(cx) {
            return Poll::Ready(Ok(done));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(pingora::prelude::sleep(limit)));
        timer.as_mut().poll(cx).map(|()| Err(Elapsed))
    })
    .await
}

#[async_trait]
impl ServerApp for Pipeline {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if !self.enabled {
            return self.pingora.process_new(stream, shutdown).await;
        }
        let h2c = self.pingora.server_options.as_ref().is_some_and(|o| o.h2c);
        let h2 = match stream.selected_alpn_proto() {
            Some(ALPN::H2) => true,
            None | Some(ALPN::H1) if h2c && stream.get_ssl_digest().is_none() => {
                // HTTP/2 by prior knowledge on a plain listener: it opens with the
                // preface (read by the HTTP/2 codec; only looked at here).
                let mut preface = [0u8; H2_PREFACE.len()];
                match stream.try_peek(&mut preface).await {
                    Ok(true) => preface == *H2_PREFACE,
                    Ok(false) => return self.pingora.process_new(stream, shutdown).await,
                    Err(_) => return None,
                }
            }
            None | Some(ALPN::H1) => false,
            _ => return self.pingora.process_new(stream, shutdown).await,
        };
        if h2 {
            // Its streams, each a request for the loop, served in this task. (Boxed: an
            // HTTP/1 connection's future is not to hold room for a codec.)
            let serve = Box::pin(h2::serve_connection(self, stream, shutdown));
            serve.await;
            return None;
        }
        self.serve(stream, shutdown, false).await
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.pingora).await
    }
}
