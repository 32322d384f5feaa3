//! HTTP/2 clients on the request loop. Pingora's HTTP/2 server (the `h2` crate, its
//! handshake, limits, stream acceptance and GOAWAY on shutdown) turns a connection into
//! streams; each stream's request is then carried by the same loop as an HTTP/1
//! request, through `H2Client`: a codec that shows the stream to the loop as an HTTP/1.1
//! connection carrying that one request. Its reads give the request's head written as
//! HTTP/1.1 (`:authority` as `Host`, cookies joined) and then its body (chunked when
//! the client gave no length, so that a body ending with an empty DATA frame is framed
//! once); its writes take the loop's answer, HTTP/1.1 as an HTTP/1.1 client would get
//! it, and send it as HEADERS, DATA and trailers, within the stream's flow control.
//! The head's policy, routing, the attempts, retries, stall registration, the access
//! log and the metrics are the loop's own: one pipeline, two codecs (as HAProxy's
//! muxes feed one HTTP analyser). A request the loop does not carry (`CONNECT`) is
//! handed back to Pingora's proxy as the stream it came on. The same codec turned the
//! other way (`upstream::H2Upstream`) carries requests to `protocol: h2` backends.

mod conns;
mod convert;
mod convert_up;
mod digests;
mod send;
mod upstream;

pub(super) use conns::{find as h2_conn, open as open_h2_conn};
pub(super) use upstream::H2Upstream;

use super::framing::Framing;
use super::Pipeline;
use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use convert::{extended_connect, parse_answer, request_head};
use convert_up::{chunk, last_chunk};
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::v2::server::{H2Options, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::SocketDigest;
use pingora::server::ShutdownWatch;
use send::Outbound;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest answer head the codec holds while it waits for its end (the loop's own
/// bound on a backend's head).
const MAX_ANSWER_HEAD: usize = 1 << 20;

/// An HTTP/2 connection's application: Pingora's HTTP/2 server accepts its streams and
/// gives each here, to be carried by the loop.
pub(super) struct H2Front {
    pub pipeline: Arc<Pipeline>,
}

#[async_trait]
impl HttpServerApp for H2Front {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session {
            ServerSession::H2(session) => {
                let client = Box::new(H2Client::new(session));
                self.pipeline.serve(client, shutdown, true).await;
            }
            // An h2c listener's HTTP/1 client (Pipeline sends those to the loop before
            // this; kept for any other way in).
            ServerSession::H1(session) => {
                self.pipeline
                    .serve(session.into_inner(), shutdown, false)
                    .await;
            }
            other => {
                self.pipeline
                    .pingora
                    .process_new_http(other, shutdown)
                    .await;
            }
        }
        None
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.pipeline.pingora.h2_options.clone()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.pipeline.pingora.server_options.as_ref()
    }
}

/// One HTTP/2 stream, shown to the loop as an HTTP/1.1 connection carrying its request.
pub(super) struct H2Client {
    session: Option<HttpSession>,
    socket: Option<Arc<SocketDigest>>,
    ssl: Option<Arc<SslDigest>>,
    read: Reading,
    write: Writing,
    /// A `HEAD` request: its answer has no body, whatever its head says.
    head_request: bool,
    /// An extended CONNECT (RFC 8441): after its `101`, the stream carries a tunnel.
    tunnel: bool,
    /// The loop cut the answer short (`reset_on_close`): the stream ends with a reset.
    cut: AtomicBool,
}

enum Reading {
    /// The request head as HTTP/1.1, not all read yet.
    Head(Bytes),
    /// Its body, `chunked` when it has no length; `pending` of it not read yet;
    /// `ended` once the stream said it ended.
    Body {
        chunked: bool,
        pending: Bytes,
        ended: bool,
    },
    /// All read.
    Done,
}

enum Writing {
    /// The answer's head, as far as it came.
    Head(BytesMut),
    /// Its body, sent as it comes within flow control.
    Body(Outbound),
    /// Sent, END_STREAM included.
    Ended,
}

impl std::fmt::Debug for H2Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H2Client")
    }
}

fn other(why: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::other(why)
}

impl H2Client {
    pub(super) fn new(session: HttpSession) -> H2Client {
        let digest = session.digest();
        let socket = digest.and_then(|d| d.socket_digest.clone());
        let ssl = digest.and_then(|d| d.ssl_digest.clone());
        let head_request = session.req_header().method == http::Method::HEAD;
        let tunnel = extended_connect(&session).is_some();
        let head = request_head(&session);
        H2Client {
            session: Some(session),
            socket,
            ssl,
            read: Reading::Head(head),
            write: Writing::Head(BytesMut::new()),
            head_request,
            tunnel,
            cut: AtomicBool::new(false),
        }
    }

    /// The stream back, for Pingora's proxy: only before any of its body was read.
    pub(super) fn into_session(mut self) -> Option<HttpSession> {
        self.session.take()
    }

    /// The answer was cut short: the stream is reset, not ended, when the loop drops it.
    pub(super) fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    fn session(&mut self) -> io::Result<&mut HttpSession> {
        self.session
            .as_mut()
            .ok_or_else(|| other("stream handed over"))
    }

    /// Reads the next DATA of the request body into `pending` (framed as a chunk when
    /// `chunked`), or marks its end (with the chunked terminator).
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let session = self.session()?;
            let data = match ready!(session.poll_read_body_bytes(cx)) {
                Some(Ok(data)) => Some(data),
                Some(Err(e)) => return Poll::Ready(Err(other(e))),
                None => None,
            };
            let Reading::Body {
                chunked,
                pending,
                ended,
            } = &mut self.read
            else {
                return Poll::Ready(Ok(()));
            };
            match data {
                // An empty DATA frame (one that only carries END_STREAM) is no chunk:
                // the body's end is written once, when the stream says it ended.
                Some(data) if data.is_empty() => continue,
                Some(data) if *chunked => *pending = chunk(&data),
                Some(data) => *pending = data,
                None => {
                    *ended = true;
                    if *chunked {
                        *pending = last_chunk(None);
                    }
                }
            }
            return Poll::Ready(Ok(()));
        }
    }

    /// Waits until the client resets the stream (or the connection ends): an error.
    fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let reason = match &mut self.write {
            Writing::Body(body) => ready!(body.sender.poll_reset(cx)).map_err(other)?,
            _ => {
                let session = self.session()?;
                let mut idle = session.idle();
                ready!(Pin::new(&mut idle).poll(cx)).map_err(|e| other(e.to_string()))?
            }
        };
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("stream reset by the client: {reason}"),
        )))
    }

    /// Takes the loop's answer bytes: its head (informational ones skipped), then its
    /// body, decoded into `out`.
    fn take(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        loop {
            match &mut self.write {
                Writing::Head(head) => {
                    head.extend_from_slice(bytes);
                    bytes = &[];
                    let Some((len, resp, framing)) =
                        parse_answer(head, self.head_request, self.tunnel)?
                    else {
                        if head.len() > MAX_ANSWER_HEAD {
                            return Err(other("answer head too large"));
                        }
                        return Ok(());
                    };
                    let mut rest = std::mem::take(head);
                    rest.advance(len);
                    let Some(resp) = resp else {
                        // Informational: not passed on (as on HTTP/1).
                        self.write = Writing::Head(rest);
                        continue;
                    };
                    let end = framing == Framing::Empty;
                    let session = self.session()?;
                    session
                        .write_response_header(Box::new(resp), end)
                        .map_err(|e| other(e.to_string()))?;
                    if end {
                        self.write = Writing::Ended;
                        return Ok(());
                    }
                    let sender = session
                        .take_response_body_writer()
                        .ok_or_else(|| other("no body writer"))?;
                    self.write = Writing::Body(Outbound::new(framing, sender));
                    if rest.is_empty() {
                        return Ok(());
                    }
                    return self.take(&rest);
                }
                Writing::Body(body) => return body.take(bytes),
                Writing::Ended => return Ok(()),
            }
        }
    }

    /// Sends what the answer's body has so far as the stream's flow control allows:
    /// ready when nothing is left to send.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Writing::Body(body) = &mut self.write else {
            return Poll::Ready(Ok(()));
        };
        if ready!(body.poll_send(cx))? {
            self.write = Writing::Ended;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for H2Client {
    fn drop(&mut self) {
        if let Writing::Body(body) = &mut self.write {
            // An answer delimited by its backend's close ended with it, unless the loop
            // cut it short.
            body.finish_or_reset(!*self.cut.get_mut());
        }
    }
}

impl AsyncRead for H2Client {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        loop {
            match &mut me.read {
                Reading::Head(head) => {
                    let n = head.len().min(buf.remaining());
                    buf.put_slice(&head[..n]);
                    head.advance(n);
                    if head.is_empty() {
                        let done = me.session()?.is_body_done();
                        me.read = if done {
                            Reading::Done
                        } else {
                            let length = me
                                .session()?
                                .req_header()
                                .headers
                                .contains_key(http::header::CONTENT_LENGTH);
                            Reading::Body {
                                chunked: !length && !me.tunnel,
                                pending: Bytes::new(),
                                ended: false,
                            }
                        };
                    }
                    // Only the head in this read: a request the loop does not carry
                    // goes back to Pingora with its body unread.
                    return Poll::Ready(Ok(()));
                }
                Reading::Body { pending, .. } if !pending.is_empty() => {
                    let n = pending.len().min(buf.remaining());
                    buf.put_slice(&pending[..n]);
                    pending.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Reading::Body { ended: true, .. } => me.read = Reading::Done,
                Reading::Body { .. } => ready!(me.poll_body(cx))?,
                Reading::Done => {
                    // The request is all read: the client is quiet until it resets the
                    // stream; once the answer is sent, the "connection" ends. A
                    // tunnel's client has closed its side, which the backend is told.
                    if me.tunnel || matches!(me.write, Writing::Ended) {
                        return Poll::Ready(Ok(()));
                    }
                    return me.poll_reset(cx);
                }
            }
        }
    }
}

impl AsyncWrite for H2Client {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // What an earlier write left is sent first: back-pressure from the client's
        // flow control.
        ready!(self.poll_send(cx))?;
        self.take(buf)?;
        // Sent as far as the window allows now; the rest on the next write or flush.
        if let Poll::Ready(Err(e)) = self.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_send(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A tunnel's backend closed its side: the stream ends once all is sent.
        if let Writing::Body(body) = &mut self.write {
            body.end_at_close();
        }
        self.poll_send(cx)
    }
}
