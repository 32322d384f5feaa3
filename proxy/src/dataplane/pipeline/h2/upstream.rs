//! A `protocol: h2` backend on the request loop: `H2Upstream`, the mirror of
//! `H2Client`, shows one HTTP/2 stream to a backend as an HTTP/1.1 connection. The
//! loop hands it the request's head as HTTP/2 fields (`hand`: the head it writes for
//! an HTTP/1.1 backend, made as fields, `upstream::H2Head`), which opens the stream
//! (`Host` as `:authority`), and writes the body as it would to an HTTP/1.1 backend,
//! which goes out as DATA and trailers (`Outbound`). Its reads give the backend's answer
//! as HTTP/1.1: the head, then the body, chunked when it has no length, its HTTP/2
//! trailers (gRPC's `grpc-status`) as the last chunk's trailer lines, which the loop
//! copies to the client like any other body and `H2Client` turns back into trailers.
//! The attempts, retries, stall registration and the access log are the loop's own.
//!
//! An answer going to an HTTP/2 client (`through`) is not written as text at all: the
//! loop takes its head as fields (`poll_head`, decided by `response::parse_fields` as
//! the same head written as HTTP/1.1 would be), its body comes as the DATA came,
//! delimited by the stream's end, and its trailers are kept as fields, which the loop
//! hands to the client's codec (`take_trailers`).

use super::conns::Conn;
use super::convert_up::{answer_head, chunk, last_chunk};
use super::other;
use super::send::Outbound;
use crate::dataplane::pipeline::framing::Framing;
use crate::dataplane::pipeline::upstream::H2Head;
use bytes::{Buf, Bytes};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One HTTP/2 stream to a backend, shown to the loop as an HTTP/1.1 connection.
pub(in crate::dataplane::pipeline) struct H2Upstream {
    pub(super) conn: Arc<Conn>,
    send: h2::client::SendRequest<Bytes>,
    write: Sending,
    /// (In a mutex for `poll_head`, which the loop calls through a shared reference.)
    read: Mutex<Receiving>,
    head_request: bool,
    /// The answer goes to an HTTP/2 client: not chunked, its trailers kept as fields.
    through: AtomicBool,
    /// The answer's trailers, when `through`.
    trailers: Mutex<Option<http::HeaderMap>>,
    /// The request's head, handed over by the loop (`hand`), not sent yet.
    handed: Mutex<Option<H2Head>>,
}

// (The stream spends its life in `Body`; boxing it would be an allocation more per
// request, in a value that lives boxed as the attempt's `Stream` already.)
#[allow(clippy::large_enum_variant)]
enum Sending {
    /// The stream is not open yet: it opens with the head the loop hands over.
    Head,
    Body(Outbound),
    /// Sent, END_STREAM included.
    Ended,
}

enum Receiving {
    /// No request sent yet.
    NotAsked,
    Waiting(h2::client::ResponseFuture),
    /// The answer: `pending` (its head, then each DATA or the last chunk) not read
    /// yet; `ended` once the stream ended.
    Body {
        recv: h2::RecvStream,
        chunked: bool,
        pending: Bytes,
        ended: bool,
    },
    Done,
}

impl std::fmt::Debug for H2Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H2Upstream")
    }
}

/// The request for the backend on `conn`: its scheme, and the `Host` as `:authority`
/// (the backend's address when the request had none).
fn request(
    method: http::Method,
    target: &Bytes,
    host: Option<Bytes>,
    headers: http::HeaderMap,
    conn: &Conn,
) -> io::Result<http::Request<()>> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(conn.scheme.clone());
    uri.authority = Some(
        match host {
            Some(host) => http::uri::Authority::from_maybe_shared(host),
            None => http::uri::Authority::try_from(&*conn.authority),
        }
        .map_err(other)?,
    );
    uri.path_and_query = Some(match &target[..] {
        b"/" => http::uri::PathAndQuery::from_static("/"),
        _ => http::uri::PathAndQuery::from_maybe_shared(target.clone()).map_err(other)?,
    });
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.version = http::Version::HTTP_2;
    parts.method = method;
    parts.uri = http::Uri::from_parts(uri).map_err(other)?;
    parts.headers = headers;
    Ok(http::Request::from_parts(parts, ()))
}

/// An HTTP/2 failure as the loop sees a connection's: the backend refusing the
/// connection's streams or closing it marks the connection for replacement.
fn failed(conn: &Conn, e: h2::Error) -> io::Error {
    if e.is_go_away() || e.is_io() || e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        conn.broken();
    }
    let kind = if e.is_io() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

impl H2Upstream {
    pub(in crate::dataplane::pipeline) fn new(conn: Arc<Conn>) -> H2Upstream {
        conn.stream_began();
        H2Upstream {
            send: conn.send.clone(),
            conn,
            write: Sending::Head,
            read: Mutex::new(Receiving::NotAsked),
            head_request: false,
            through: AtomicBool::new(false),
            trailers: Mutex::new(None),
            handed: Mutex::new(None),
        }
    }

    /// The request's head, as HTTP/2 fields: the stream opens with it at the next
    /// write or flush (once the connection has room for one), before the body's bytes.
    pub(in crate::dataplane::pipeline) fn hand(&self, head: H2Head) {
        *self.handed.lock().unwrap_or_else(|e| e.into_inner()) = Some(head);
    }

    /// The HTTP/2 backend stream `stream` is, if it is one.
    pub(in crate::dataplane::pipeline) fn of(stream: &pingora::protocols::Stream) -> Option<&Self> {
        stream.as_any().downcast_ref::<H2Upstream>()
    }

    /// The answer goes to an HTTP/2 client: its body is passed on as it comes, its end
    /// the stream's, and its trailers kept for `take_trailers`. Before it is read.
    pub(in crate::dataplane::pipeline) fn through(&self) {
        self.through.store(true, Ordering::Relaxed);
    }

    /// The answer's trailers, once it has all been read (`through`).
    pub(in crate::dataplane::pipeline) fn take_trailers(&self) -> Option<http::HeaderMap> {
        self.trailers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Opens the stream with the head `hand` gave, once the connection has room for
    /// it: ready when it is open (or was).
    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !matches!(self.write, Sending::Head) {
            return Poll::Ready(Ok(()));
        }
        let conn = &self.conn;
        if let Err(e) = ready!(self.send.poll_ready(cx)) {
            return Poll::Ready(Err(failed(conn, e)));
        }
        let handed = self.handed.get_mut().unwrap_or_else(|e| e.into_inner());
        let Some(head) = handed.take() else {
            // The loop hands every head over; one it could not make as HTTP/2 fields
            // (a field HTTP/2 cannot carry) fails here, as the codec would refuse it.
            return Poll::Ready(Err(other("a request head HTTP/2 cannot carry")));
        };
        let end = head.framing == Framing::Empty;
        self.head_request = head.method == http::Method::HEAD;
        let request = request(head.method, &head.target, head.host, head.headers, conn)?;
        let (response, sender) = self
            .send
            .send_request(request, end)
            .map_err(|e| failed(conn, e))?;
        *self.read.get_mut().unwrap_or_else(|e| e.into_inner()) = Receiving::Waiting(response);
        self.write = match end {
            true => Sending::Ended,
            false => Sending::Body(Outbound::new(head.framing, sender)),
        };
        Poll::Ready(Ok(()))
    }

    /// Sends what the request's body has so far as flow control allows: ready when
    /// nothing is left to send.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Sending::Body(body) = &mut self.write else {
            return Poll::Ready(Ok(()));
        };
        if ready!(body.poll_send(cx))? {
            self.write = Sending::Ended;
        }
        Poll::Ready(Ok(()))
    }

    /// The answer's head as fields, for an answer going to an HTTP/2 client
    /// (`through`): the loop decides it from them (`response::parse_fields`), and its
    /// body is read after it as it came. `end`: the HEADERS ended the stream.
    pub(in crate::dataplane::pipeline) fn poll_head(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(http::response::Parts, bool)>> {
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        head_of(&mut read, &self.conn, self.head_request, cx)
    }

    /// The next bytes of the answer into `pending`, or its end.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let conn = &self.conn;
        let read = self.read.get_mut().unwrap_or_else(|e| e.into_inner());
        match read {
            Receiving::NotAsked => Poll::Ready(Err(other("no request sent"))),
            Receiving::Waiting(_) => {
                let (parts, end) = ready!(head_of(read, conn, self.head_request, cx))?;
                // Written as HTTP/1.1, the head is the body's first bytes.
                let through = self.through.load(Ordering::Relaxed);
                let (head, framed) = answer_head(&parts, end, self.head_request, through);
                if let Receiving::Body {
                    chunked, pending, ..
                } = read
                {
                    (*chunked, *pending) = (framed, head);
                }
                Poll::Ready(Ok(()))
            }
            Receiving::Body {
                recv,
                chunked,
                pending,
                ended,
            } => {
                match ready!(recv.poll_data(cx)) {
                    Some(Ok(data)) => {
                        // Taken by the loop before the next is asked for: the window
                        // opens as fast as the client reads.
                        let _ = recv.flow_control().release_capacity(data.len());
                        *pending = if *chunked { chunk(&data) } else { data };
                    }
                    Some(Err(e)) => return Poll::Ready(Err(failed(conn, e))),
                    None => {
                        let through = self.through.get_mut();
                        if *chunked || *through {
                            let trailers =
                                ready!(recv.poll_trailers(cx)).map_err(|e| failed(conn, e))?;
                            match *through {
                                true => {
                                    *self.trailers.get_mut().unwrap_or_else(|e| e.into_inner()) =
                                        trailers
                                }
                                false => *pending = last_chunk(trailers.as_ref()),
                            }
                        }
                        *ended = true;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Receiving::Done => Poll::Ready(Ok(())),
        }
    }
}

/// The answer's head once it has come, `read` then at its body (nothing of it
/// pending, not chunked); `end`: the HEADERS ended the stream.
fn head_of(
    read: &mut Receiving,
    conn: &Conn,
    head_request: bool,
    cx: &mut Context<'_>,
) -> Poll<io::Result<(http::response::Parts, bool)>> {
    let Receiving::Waiting(response) = read else {
        return Poll::Ready(Err(other("no answer awaited")));
    };
    let response = ready!(Pin::new(response).poll(cx)).map_err(|e| failed(conn, e))?;
    let (parts, recv) = response.into_parts();
    let end = recv.is_end_stream();
    *read = Receiving::Body {
        recv,
        chunked: false,
        pending: Bytes::new(),
        ended: end || head_request,
    };
    Poll::Ready(Ok((parts, end)))
}

impl Drop for H2Upstream {
    fn drop(&mut self) {
        // A request body cut short is reset; the answer's stream, if still open, is
        // cancelled by h2 as its last handle goes.
        if let Sending::Body(body) = &mut self.write {
            body.finish_or_reset(false);
        }
        self.conn.stream_ended();
    }
}

impl AsyncRead for H2Upstream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        loop {
            let read = me.read.get_mut().unwrap_or_else(|e| e.into_inner());
            match read {
                Receiving::Body { pending, .. } if !pending.is_empty() => {
                    let n = pending.len().min(buf.remaining());
                    buf.put_slice(&pending[..n]);
                    pending.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Receiving::Body { ended: true, .. } => *read = Receiving::Done,
                // The answer is all read: the "connection" ends.
                Receiving::Done => return Poll::Ready(Ok(())),
                _ => ready!(me.poll_answer(cx))?,
            }
        }
    }
}

impl AsyncWrite for H2Upstream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        // Bytes are taken only once the stream is open.
        ready!(me.poll_open(cx))?;
        match &mut me.write {
            Sending::Head => {}
            Sending::Body(_) => {
                // What an earlier write left is sent first: back-pressure from the
                // backend's flow control.
                ready!(me.poll_send(cx))?;
                if let Sending::Body(body) = &mut me.write {
                    body.take(buf)?;
                }
            }
            // Bytes past the request's end: not the backend's.
            Sending::Ended => {}
        }
        if let Poll::Ready(Err(e)) = me.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A request without a body opens its stream here.
        ready!(self.poll_open(cx))?;
        self.poll_send(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_open(cx))?;
        self.poll_send(cx)
    }
}
