//! HTTP/2 clients on the request loop. `server` serves an HTTP/2 connection (the `h2`
//! crate's codec, with the contract's limits) and runs its streams in its own task; each
//! stream's request is carried by the same loop as an HTTP/1 request, through
//! `H2Client`: a codec that shows the stream to the loop as an HTTP/1.1 connection
//! carrying that one request. The loop reads the request's head from its fields as it
//! would read the same head written as HTTP/1.1 (`StreamHead`: `:authority` as `Host`,
//! cookies joined; `head::parse_stream`), without writing it; the codec's reads give
//! its body (chunked when the client gave no length, so that a body ending with an
//! empty DATA frame is framed once). A
//! backend's answer head is handed to it as HTTP/2 fields (`answer`; the loop's
//! `response` makes them where it would write an HTTP/1.1 client's head); its writes
//! take the body as the backend framed it, and the loop's own answers (a refusal, a
//! 502) as HTTP/1.1 text, read back; all is sent as HEADERS, DATA and trailers, within
//! the stream's flow control. The head's
//! policy, routing, the attempts, retries, stall registration, the access log and the
//! metrics are the loop's own: one pipeline, two codecs (as HAProxy's muxes feed one
//! HTTP analyser). A request the loop does not carry (a plain `CONNECT`, a head past
//! the limits) is refused on its stream as on HTTP/1. The same codec turned the other
//! way (`upstream::H2Upstream`) carries requests to `protocol: h2` backends.

mod conns;
mod convert;
mod convert_up;
mod digests;
#[cfg(test)]
mod hpack_memo;
#[cfg(test)]
mod room;
mod send;
mod server;
mod upstream;

pub(super) use conns::{find as h2_conn, open as open_h2_conn};
#[cfg(test)]
pub(super) use convert_up::answer_head as answer_text;
pub(super) use server::serve as serve_connection;
pub(super) use upstream::H2Upstream;

use super::framing::Framing;
use bytes::{Buf, Bytes, BytesMut};
pub(super) use convert::StreamHead;
use convert::{extended_connect, parse_answer};
use convert_up::{chunk, last_chunk};
use h2::server::SendResponse;
use h2::RecvStream;
use pingora::protocols::http::v1::server::HeadLimitValues;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::SocketDigest;
use send::Outbound;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest answer head the codec holds while it waits for its end (the loop's own
/// bound on a backend's head).
const MAX_ANSWER_HEAD: usize = 1 << 20;

/// One HTTP/2 stream, shown to the loop as an HTTP/1.1 connection carrying its request.
pub(super) struct H2Client {
    /// The request's body as it comes.
    body: RecvStream,
    /// Where the answer's head goes (its body then goes on `write`'s stream).
    respond: SendResponse<Bytes>,
    socket: Option<Arc<SocketDigest>>,
    ssl: Option<Arc<SslDigest>>,
    read: Reading,
    write: Writing,
    /// The request's head, read by the loop from its fields.
    head: StreamHead,
    /// A `HEAD` request: its answer has no body, whatever its head says.
    head_request: bool,
    /// An extended CONNECT (RFC 8441): after its `101`, the stream carries a tunnel.
    tunnel: bool,
    /// A plain `CONNECT` (a forward proxy's): refused with 405, as Pingora's proxy does.
    connect: bool,
    /// The loop cut the answer short (`reset_on_close`): the stream ends with a reset.
    cut: AtomicBool,
    /// The answer's head as HTTP/2 fields and its body's framing, handed over by the
    /// loop (`answer`) and sent with the next write or flush.
    handed: Mutex<Option<(http::response::Parts, Framing)>>,
    /// The answer's trailers as fields, handed over by the loop (`trailers`): an
    /// HTTP/2 backend's, sent when the stream ends.
    trailers: Mutex<Option<http::HeaderMap>>,
}

enum Reading {
    /// The request's body (its head is read from `head`), `chunked` when it has no length; `pending` of it not read yet;
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
    pub(super) fn new(
        request: http::Request<RecvStream>,
        respond: SendResponse<Bytes>,
        socket: Option<Arc<SocketDigest>>,
        ssl: Option<Arc<SslDigest>>,
    ) -> H2Client {
        let (mut parts, body) = request.into_parts();
        let length = parts.headers.get(http::header::CONTENT_LENGTH);
        // No body to read: the stream ended with its head, or said its length is 0.
        let bodiless = body.is_end_stream() || length.is_some_and(|l| l.as_bytes() == b"0");
        let length = length.is_some();
        let tunnel = extended_connect(&parts).is_some();
        let (head_request, connect) = (
            parts.method == http::Method::HEAD,
            parts.method == http::Method::CONNECT && !tunnel,
        );
        H2Client {
            head: StreamHead::new(&mut parts, bodiless),
            read: match bodiless {
                true => Reading::Done,
                false => Reading::Body {
                    chunked: !length && !tunnel,
                    pending: Bytes::new(),
                    ended: false,
                },
            },
            write: Writing::Head(BytesMut::new()),
            head_request,
            connect,
            tunnel,
            body,
            respond,
            socket,
            ssl,
            cut: AtomicBool::new(false),
            handed: Mutex::new(None),
            trailers: Mutex::new(None),
        }
    }

    /// The request's head, as the loop reads it (`head::parse_stream`).
    pub(super) fn head(&self) -> &StreamHead {
        &self.head
    }

    /// The HTTP/2 stream `stream` is.
    pub(super) fn of(stream: &pingora::protocols::Stream) -> pingora::Result<&H2Client> {
        match stream.as_any().downcast_ref::<H2Client>() {
            Some(client) => Ok(client),
            None => pingora::Error::e_explain(
                pingora::ErrorType::InternalError,
                "an HTTP/2 answer for a client that is not an HTTP/2 stream",
            ),
        }
    }

    /// The answer's head, as HTTP/2 fields, and how the body the loop writes next is
    /// framed: sent with that write, or the flush after it. (The loop's answers of its
    /// own, a refusal or a 502, come as HTTP/1.1 text, read back by `take`.)
    pub(super) fn answer(&self, head: http::response::Parts, framing: Framing) {
        let mut handed = self.handed.lock().unwrap_or_else(|e| e.into_inner());
        *handed = Some((head, framing));
    }

    /// The answer's trailers, as fields (an HTTP/2 backend's, `H2Upstream::through`),
    /// once the loop has written all of its body: sent as the stream ends.
    pub(super) fn trailers(&self, trailers: http::HeaderMap) {
        let mut handed = self.trailers.lock().unwrap_or_else(|e| e.into_inner());
        *handed = Some(trailers);
    }

    /// Gives the trailers `trailers` handed over, if any, to the body going out, which
    /// ends with them.
    fn trailers_to_body(&mut self) {
        let handed = self.trailers.get_mut().unwrap_or_else(|e| e.into_inner());
        if let (Writing::Body(body), Some(t)) = (&mut self.write, handed.take()) {
            body.handed = Some(t);
        }
    }

    /// Sends the head `answer` handed over, if any.
    fn hand_over(&mut self) -> io::Result<()> {
        let handed = self.handed.get_mut().unwrap_or_else(|e| e.into_inner());
        match handed.take() {
            Some((head, framing)) => self.respond(head, framing),
            None => Ok(()),
        }
    }

    /// Sends the answer's head, ending the stream when it has no body.
    fn respond(&mut self, head: http::response::Parts, framing: Framing) -> io::Result<()> {
        let end = framing == Framing::Empty;
        let sender = self
            .respond
            .send_response(http::Response::from_parts(head, ()), end)
            .map_err(other)?;
        self.write = match end {
            true => Writing::Ended,
            false => Writing::Body(Outbound::new(framing, sender)),
        };
        Ok(())
    }

    /// The status a request the loop does not carry is refused with: 405 for a plain
    /// `CONNECT` (vigil is no forward proxy, as Pingora's proxy said), 431 for a head
    /// past the limits (as HTTP/1.1 measures it), else 400.
    pub(super) fn refusal(&self, limits: &HeadLimitValues) -> u16 {
        if self.connect {
            return 405;
        }
        if self.head.past(limits) {
            return 431;
        }
        400
    }

    /// The answer was cut short: the stream is reset, not ended, when the loop drops it.
    pub(super) fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    /// Reads the next DATA of the request body into `pending` (framed as a chunk when
    /// `chunked`), or marks its end (with the chunked terminator).
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let data = match ready!(self.body.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Taken: the client may send as much again.
                    let _ = self.body.flow_control().release_capacity(data.len());
                    Some(data)
                }
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
            _ => ready!(self.respond.poll_reset(cx)).map_err(other)?,
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
                    self.respond(resp, framing)?;
                    if rest.is_empty() || matches!(self.write, Writing::Ended) {
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
        self.trailers_to_body();
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
        self.hand_over()?;
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
        self.hand_over()?;
        self.poll_send(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.hand_over()?;
        // A tunnel's backend closed its side, or an answer delimited by its
        // backend's close ended: the stream ends once all is sent.
        self.trailers_to_body();
        if let Writing::Body(body) = &mut self.write {
            body.end_at_close();
        }
        self.poll_send(cx)
    }
}
