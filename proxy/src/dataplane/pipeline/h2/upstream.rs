//! A `protocol: h2` backend on the request loop: `H2Upstream`, the mirror of
//! `H2Client`, shows one HTTP/2 stream to a backend as an HTTP/1.1 connection. The
//! loop hands it the request's head as HTTP/2 fields (`ask`: made where it would write
//! an HTTP/1.1 backend's head, with the same policy: `convert_up::UpFields`), and
//! writes the body as it would to an HTTP/1.1 backend; the body goes out as DATA and
//! trailers (`Outbound`). Its reads give the backend's answer
//! as HTTP/1.1: the head, then the body, chunked when it has no length, its HTTP/2
//! trailers (gRPC's `grpc-status`) as the last chunk's trailer lines, which the loop
//! copies to the client like any other body and `H2Client` turns back into trailers.
//! The attempts, retries, stall registration and the access log are the loop's own.

use super::conns::Conn;
use super::convert_up::{answer_head, chunk, last_chunk, UpHead};
use super::other;
use super::send::Outbound;
use crate::dataplane::pipeline::framing::Framing;
use bytes::{Buf, Bytes};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One HTTP/2 stream to a backend, shown to the loop as an HTTP/1.1 connection.
pub(in crate::dataplane::pipeline) struct H2Upstream {
    pub(super) conn: Arc<Conn>,
    send: h2::client::SendRequest<Bytes>,
    write: Sending,
    read: Receiving,
    head_request: bool,
    /// The request's head, handed over by `ask`: sent with the first write or flush.
    handed: Mutex<Option<UpHead>>,
}

enum Sending {
    /// No request yet.
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
            read: Receiving::NotAsked,
            head_request: false,
            handed: Mutex::new(None),
        }
    }

    /// The HTTP/2 stream to a backend `stream` is.
    pub(in crate::dataplane::pipeline) fn of(
        stream: &pingora::protocols::Stream,
    ) -> pingora::Result<&H2Upstream> {
        match stream.as_any().downcast_ref::<H2Upstream>() {
            Some(up) => Ok(up),
            None => pingora::Error::e_explain(
                pingora::ErrorType::InternalError,
                "HTTP/2 fields for a backend that is not an HTTP/2 stream",
            ),
        }
    }

    /// The request's head, as HTTP/2 fields: the stream opens with the next write or
    /// flush, and what the loop writes next is its body.
    pub(in crate::dataplane::pipeline) fn ask(&self, head: UpHead) {
        let mut handed = self.handed.lock().unwrap_or_else(|e| e.into_inner());
        *handed = Some(head);
    }

    /// Opens the stream with the head `ask` handed over (the connection has room:
    /// `poll_ready` said so).
    fn open(&mut self) -> io::Result<()> {
        let handed = self.handed.get_mut().unwrap_or_else(|e| e.into_inner());
        let Some(head) = handed.take() else {
            return Err(other("no request head handed over"));
        };
        let conn = &self.conn;
        let up = head.request(&conn.scheme, &conn.authority)?;
        let end = up.framing == Framing::Empty;
        self.head_request = up.head_request;
        let (response, sender) = self
            .send
            .send_request(up.request, end)
            .map_err(|e| failed(conn, e))?;
        self.read = Receiving::Waiting(response);
        self.write = match end {
            true => Sending::Ended,
            false => Sending::Body(Outbound::new(up.framing, sender)),
        };
        Ok(())
    }

    /// Opens the stream once the connection has room for it.
    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Sending::Head = self.write {
            if let Err(e) = ready!(self.send.poll_ready(cx)) {
                return Poll::Ready(Err(failed(&self.conn, e)));
            }
            self.open()?;
        }
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

    /// The next bytes of the answer into `pending`, or its end.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let conn = &self.conn;
        match &mut self.read {
            Receiving::NotAsked => Poll::Ready(Err(other("no request sent"))),
            Receiving::Waiting(response) => {
                let response = ready!(Pin::new(response).poll(cx)).map_err(|e| failed(conn, e))?;
                let (parts, recv) = response.into_parts();
                let end = recv.is_end_stream();
                let (head, chunked) = answer_head(&parts, end, self.head_request);
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
                        if *chunked {
                            let trailers =
                                ready!(recv.poll_trailers(cx)).map_err(|e| failed(conn, e))?;
                            *pending = last_chunk(trailers.as_ref());
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
        // Bytes are taken only once the connection has room for a stream.
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
        ready!(self.poll_open(cx))?;
        self.poll_send(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_open(cx))?;
        self.poll_send(cx)
    }
}
