//! A `protocol: h2` backend on the request loop: `H2Upstream`, the mirror of
//! `H2Client`, shows one HTTP/2 stream to a backend as an HTTP/1.1 connection. The
//! loop writes its request as it would to an HTTP/1.1 backend; the head is read back
//! into HTTP/2 (`Host` as `:authority`, connection-specific fields left out) and the
//! body goes out as DATA and trailers (`Outbound`). Its reads give the backend's answer
//! as HTTP/1.1: the head, then the body, chunked when it has no length, its HTTP/2
//! trailers (gRPC's `grpc-status`) as the last chunk's trailer lines, which the loop
//! copies to the client like any other body and `H2Client` turns back into trailers.
//! The attempts, retries, stall registration and the access log are the loop's own.
//!
//! An answer going to an HTTP/2 client (`through`) skips the chunked framing: its body
//! comes as the DATA came, delimited by the stream's end, and its trailers are kept as
//! fields, which the loop hands to the client's codec (`take_trailers`): HTTP/2 to
//! HTTP/2, the trailers are not written as text and read back.

use super::conns::Conn;
use super::convert_up::{answer_head, chunk, last_chunk, parse_request};
use super::other;
use super::send::Outbound;
use crate::dataplane::pipeline::fields::Text;
use crate::dataplane::pipeline::framing::Framing;
use bytes::{Buf, Bytes, BytesMut};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest request head the codec holds while it waits for its end.
const MAX_REQUEST_HEAD: usize = 1 << 20;

/// One HTTP/2 stream to a backend, shown to the loop as an HTTP/1.1 connection.
pub(in crate::dataplane::pipeline) struct H2Upstream {
    pub(super) conn: Arc<Conn>,
    send: h2::client::SendRequest<Bytes>,
    write: Sending,
    read: Receiving,
    head_request: bool,
    /// The answer goes to an HTTP/2 client: not chunked, its trailers kept as fields.
    through: AtomicBool,
    /// The answer's trailers, when `through`.
    trailers: Mutex<Option<http::HeaderMap>>,
}

enum Sending {
    /// The request head, as far as the loop wrote it.
    Head(BytesMut),
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
            write: Sending::Head(BytesMut::new()),
            read: Receiving::NotAsked,
            head_request: false,
            through: AtomicBool::new(false),
            trailers: Mutex::new(None),
        }
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

    /// Takes the request head's bytes; once it is whole, opens the stream with it (the
    /// connection has room: `poll_ready` said so) and takes the body's first bytes.
    fn take_head(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Sending::Head(head) = &mut self.write else {
            return Ok(());
        };
        head.extend_from_slice(bytes);
        let conn = &self.conn;
        // Frozen, so that the request's fields share its buffer.
        let text = Text::new(std::mem::take(head).freeze());
        let Some((len, up)) = parse_request(&text, &conn.scheme, &conn.authority)? else {
            if text.bytes().len() > MAX_REQUEST_HEAD {
                return Err(other("request head too large"));
            }
            // Not all written yet (rare: the loop writes a head at once): kept to be
            // added to (unshared: no field was cut from it).
            let text = text.into_bytes();
            *head = text
                .try_into_mut()
                .unwrap_or_else(|b| BytesMut::from(&b[..]));
            return Ok(());
        };
        let rest = text.bytes().slice(len..);
        let end = up.framing == Framing::Empty;
        self.head_request = up.head_request;
        let (response, sender) = self
            .send
            .send_request(up.request, end)
            .map_err(|e| failed(conn, e))?;
        self.read = Receiving::Waiting(response);
        self.write = if end {
            Sending::Ended
        } else {
            let mut body = Outbound::new(up.framing, sender);
            body.take(&rest)?;
            Sending::Body(body)
        };
        Ok(())
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

    /// The next bytes of the answer into `pending`, or its end.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let conn = &self.conn;
        match &mut self.read {
            Receiving::NotAsked => Poll::Ready(Err(other("no request sent"))),
            Receiving::Waiting(response) => {
                let response = ready!(Pin::new(response).poll(cx)).map_err(|e| failed(conn, e))?;
                let (parts, recv) = response.into_parts();
                let end = recv.is_end_stream();
                let through = self.through.load(Ordering::Relaxed);
                let (head, chunked) = answer_head(&parts, end, self.head_request, through);
                self.read = Receiving::Body {
                    recv,
                    chunked,
                    pending: head,
                    ended: end || self.head_request,
                };
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
            match &mut me.read {
                Receiving::Body { pending, .. } if !pending.is_empty() => {
                    let n = pending.len().min(buf.remaining());
                    buf.put_slice(&pending[..n]);
                    pending.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Receiving::Body { ended: true, .. } => me.read = Receiving::Done,
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
        match &mut me.write {
            Sending::Head(_) => {
                // Bytes are taken only once the connection has room for a stream.
                if let Err(e) = ready!(me.send.poll_ready(cx)) {
                    return Poll::Ready(Err(failed(&me.conn, e)));
                }
                me.take_head(buf)?;
            }
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
        self.poll_send(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_send(cx)
    }
}
