//! A body going out on an HTTP/2 stream, whichever side the stream is on: the loop
//! writes it with its HTTP/1.1 framing (a length, or chunks and trailers), and it is
//! decoded as it comes and sent as DATA within the stream's flow control, ending with
//! END_STREAM or the trailers. The answer to an HTTP/2 client (`H2Client`) and the
//! request to a `protocol: h2` backend (`H2Upstream`) both go out this way.

use super::super::framing::{Body, Framing};
use super::convert::parse_trailers;
use super::other;
use bytes::Bytes;
use std::io;
use std::task::{ready, Context, Poll};

pub(in crate::dataplane::pipeline) struct Outbound {
    body: Body,
    pub framing: Framing,
    pub sender: h2::SendStream<Bytes>,
    /// Payload decoded and not yet sent.
    out: Vec<u8>,
    /// The body has ended (its last bytes may still wait in `out`).
    pub done: bool,
    /// Trailers handed over as fields (from an HTTP/2 backend's answer), sent at the
    /// end in place of a chunked body's trailer lines.
    pub handed: Option<http::HeaderMap>,
}

impl Outbound {
    pub(in crate::dataplane::pipeline) fn new(
        framing: Framing,
        sender: h2::SendStream<Bytes>,
    ) -> Self {
        let mut body = Body::new(framing);
        if framing == Framing::Chunked {
            body.keep_trailers();
        }
        Outbound {
            body,
            framing,
            sender,
            out: Vec::new(),
            done: false,
            handed: None,
        }
    }

    /// Takes bytes of the body as the loop wrote them; bytes past its end are ignored.
    pub(in crate::dataplane::pipeline) fn take(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.done || bytes.is_empty() {
            return Ok(());
        }
        // Room for it at once (the payload is at most what is written).
        self.out.reserve(bytes.len());
        let (_, end) = self
            .body
            .feed_to(bytes, Some(&mut self.out))
            .map_err(|e| other(e.to_string()))?;
        self.done = end;
        Ok(())
    }

    /// A body delimited by its sender's close has ended: it closed.
    pub(in crate::dataplane::pipeline) fn end_at_close(&mut self) {
        if self.framing == Framing::Close {
            self.done = true;
        }
    }

    /// Sends what `out` holds as flow control allows, and the stream's end (or its
    /// trailers) once the body has ended. Ready(true) once the stream has ended,
    /// Ready(false) when all taken so far is sent.
    pub(in crate::dataplane::pipeline) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<bool>> {
        while !self.out.is_empty() {
            let mut room = self.sender.capacity();
            if room == 0 {
                self.sender.reserve_capacity(self.out.len());
                room = match ready!(self.sender.poll_capacity(cx)) {
                    Some(Ok(n)) => n,
                    Some(Err(e)) => return Poll::Ready(Err(other(e))),
                    None => return Poll::Ready(Err(other("stream closed"))),
                };
                if room == 0 {
                    continue;
                }
            }
            let n = room.min(self.out.len());
            let last = self.done && n == self.out.len() && !self.has_trailers();
            let chunk = self.split_to(n);
            self.sender.send_data(chunk, last).map_err(other)?;
            if last {
                return Poll::Ready(Ok(true));
            }
        }
        if !self.done {
            return Poll::Ready(Ok(false));
        }
        match self.take_trailers() {
            Some(trailers) => self.sender.send_trailers(trailers).map_err(other)?,
            None => self.sender.send_data(Bytes::new(), true).map_err(other)?,
        }
        Poll::Ready(Ok(true))
    }

    /// The first `n` bytes of `out`, taken (all of it without a copy).
    fn split_to(&mut self, n: usize) -> Bytes {
        if n == self.out.len() {
            return Bytes::from(std::mem::take(&mut self.out));
        }
        let first = Bytes::copy_from_slice(&self.out[..n]);
        self.out.drain(..n);
        first
    }

    /// The chunked body's trailer lines, when it had any.
    fn trailers(&self) -> Option<&[u8]> {
        self.body.trailers().filter(|t| !t.is_empty())
    }

    /// The body ends with trailers: handed over, or a chunked body's lines.
    fn has_trailers(&self) -> bool {
        self.handed.as_ref().is_some_and(|t| !t.is_empty()) || self.trailers().is_some()
    }

    /// The trailers the body ends with, as fields, if it has any.
    fn take_trailers(&mut self) -> Option<http::HeaderMap> {
        match self.handed.take().filter(|t| !t.is_empty()) {
            Some(trailers) => Some(trailers),
            None => self.trailers().map(parse_trailers),
        }
    }

    /// The stream given up before its end: what is whole goes (h2 queues what flow
    /// control holds back), anything else is reset. `whole_at_close`: a body delimited
    /// by its sender's close, which has come.
    pub(in crate::dataplane::pipeline) fn finish_or_reset(&mut self, whole_at_close: bool) {
        if self.done || (self.framing == Framing::Close && whole_at_close) {
            let rest = Bytes::from(std::mem::take(&mut self.out));
            match self.take_trailers() {
                Some(trailers) => {
                    let _ = self.sender.send_data(rest, false);
                    let _ = self.sender.send_trailers(trailers);
                }
                None => {
                    let _ = self.sender.send_data(rest, true);
                }
            }
        } else {
            self.sender.send_reset(h2::Reason::INTERNAL_ERROR);
        }
    }
}
