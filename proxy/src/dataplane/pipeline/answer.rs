//! An attempt's answer: its head awaited (informational answers skipped, the client
//! watched meanwhile), then copied to the client with its body, or, after a `101`,
//! the tunnel.

use super::client::Client;
use super::framing::{Asked, Body, Framing};
use super::h2::H2Upstream;
use super::response::{parse_fields, parse_response, Response};
use super::{tunnel, within, Pipeline};
use crate::dataplane::context::Ctx;
use crate::dataplane::reports::LoadReport;
use bytes::{Buf, BytesMut};
use pingora::prelude::*;
use pingora::protocols::Stream;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use vigil_healthcheck::load_report;

/// How one attempt ended.
pub(super) enum Exchange {
    /// The client has its answer (`status`); `keep` when its connection can carry
    /// another request, `reusable` when the backend's can.
    Answered {
        status: u16,
        keep: bool,
        reusable: bool,
    },
    /// The client went away during the request or its answer.
    ClientGone,
    /// The pool retries the backend's status elsewhere.
    StatusRetry,
}

impl Pipeline {
    /// A `101`: the answer's head (and whatever followed it) to the client, then the
    /// tunnel until either side closes.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn switch(
        &self,
        client: &mut Client<'_>,
        up: &mut Stream,
        resp: Response,
        buf: BytesMut,
        read_timeout: Duration,
        ctx: &mut Ctx,
        sent: &mut Option<u16>,
    ) -> Result<Exchange> {
        // Answered: the tunnel is no longer a request waiting for its answer (the
        // stall watcher would otherwise take its silence for a stuck backend).
        ctx.answered(101, false);
        let mut head = resp.client_head;
        head.extend_from_slice(&buf);
        if self.write_client(client.stream, &head).await.is_err() {
            return Ok(Exchange::ClientGone);
        }
        *sent = Some(101);
        tunnel::run(
            client,
            up,
            read_timeout,
            self.plane.edge.client_write_timeout(),
        )
        .await;
        Ok(Exchange::Answered {
            status: 101,
            keep: false,
            reusable: false,
        })
    }

    /// Copies the answer whose head is `resp` to the client, its body framed (or
    /// de-chunked) as `resp` says. `Some((payload bytes, bytes left past the answer))`;
    /// None when the client went away.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn copy_answer(
        &self,
        client: &mut Client<'_>,
        up: &mut Stream,
        resp: Response,
        mut buf: BytesMut,
        read_timeout: Duration,
        sent: &mut Option<u16>,
        report: Option<&mut Option<LoadReport>>,
    ) -> Result<Option<(u64, usize)>> {
        let mut body = Body::new(resp.framing);
        if report.is_some() {
            body.keep_trailers();
        }
        let mut decoded = resp.dechunk.then(Vec::new);
        let (take, mut done) = body.feed_to(&buf, decoded.as_mut())?;
        if let Some(head) = resp.h2_head {
            // An HTTP/2 client's head goes to its codec as fields; what follows is
            // its body, framed as the backend framed it.
            super::h2::H2Client::of(client.stream)?.answer(head, resp.framing);
        }
        let mut first = resp.client_head;
        match decoded.as_mut() {
            Some(d) => first.append(d),
            None => first.extend_from_slice(&buf[..take]),
        }
        buf.advance(take);
        if self.write_client(client.stream, &first).await.is_err() {
            return Ok(None);
        }
        *sent = Some(resp.status);
        drop(first);
        while !done {
            buf.clear();
            if read_some(up, &mut buf, read_timeout).await? == 0 {
                if resp.framing == Framing::Close {
                    break;
                }
                return Error::e_explain(ConnectionClosed, "before the response body ended")
                    .map_err(|e| e.into_up());
            }
            let (take, end) = body.feed_to(&buf, decoded.as_mut())?;
            done = end;
            let bytes = match decoded.as_mut() {
                Some(d) => &d[..],
                None => &buf[..take],
            };
            if self.write_client(client.stream, bytes).await.is_err() {
                return Ok(None);
            }
            if let Some(d) = decoded.as_mut() {
                d.clear();
            }
            buf.advance(take);
        }
        if let Some(report) = report {
            *report = body.trailers().and_then(trailer_report);
        }
        Ok(Some((body.payload, buf.len())))
    }
}

/// How an attempt waits for its answer's head.
pub(super) struct Wait {
    pub asked: Asked,
    /// Whether the client is watched meanwhile (not while its body is left unsent).
    pub watch_client: bool,
    pub read_timeout: Duration,
}

/// Reads until `buf` starts with the answer's head, informational answers skipped.
/// None when the client left while its request waited: that cancels it, the backend's
/// connection closes, and the request's slot and in-flight count are freed.
pub(super) async fn answer_head(
    client: &mut Client<'_>,
    up: &mut Stream,
    buf: &mut BytesMut,
    wait: Wait,
) -> Result<Option<Response>> {
    if let Some(h2) = H2Upstream::of(up).filter(|_| wait.asked.h2) {
        return fields_head(client, h2, wait).await;
    }
    let mut first_wait = true;
    loop {
        if !buf.is_empty() {
            match parse_response(buf, wait.asked)? {
                Some(r) if r.status == 101 && wait.asked.upgrade => return Ok(Some(r)),
                // Nothing was asked to switch protocols.
                Some(r) if r.status == 101 => {
                    return Error::e_explain(InvalidHTTPHeader, "101 to a plain request")
                        .map_err(|e| e.into_up())
                }
                // Informational answers are not passed on (vigil answered any
                // `Expect` itself).
                Some(r) if r.status < 200 => {
                    buf.advance(r.len);
                    continue;
                }
                Some(r) => return Ok(Some(r)),
                None => {}
            }
        }
        let read = tokio::select! {
            biased;
            read = read_some(up, buf, wait.read_timeout) => read?,
            gone = client.gone(std::mem::replace(&mut first_wait, false)), if wait.watch_client => match gone {
                true => return Ok(None),
                false => continue,
            },
        };
        if read == 0 {
            return Error::e_explain(ConnectionClosed, "before the response head")
                .map_err(|e| e.into_up());
        }
    }
}

/// An HTTP/2 backend's answer head for an HTTP/2 client, taken as fields (HTTP/2 to
/// HTTP/2, it is not written as HTTP/1.1 text and read back), as `answer_head` takes
/// it otherwise.
async fn fields_head(
    client: &mut Client<'_>,
    up: &H2Upstream,
    wait: Wait,
) -> Result<Option<Response>> {
    let mut first_wait = true;
    loop {
        let head = std::future::poll_fn(|cx| up.poll_head(cx));
        let read = tokio::select! {
            biased;
            read = within(wait.read_timeout, head) => read,
            gone = client.gone(std::mem::replace(&mut first_wait, false)), if wait.watch_client => match gone {
                true => return Ok(None),
                false => continue,
            },
        };
        return match read {
            Ok(Ok((parts, end))) => parse_fields(parts, end, wait.asked).map(Some),
            Ok(Err(e)) => read_failed(e),
            Err(_) => timed_out(wait.read_timeout),
        };
    }
}

/// Reads more of the backend's answer into `buf`, within `read_timeout`.
async fn read_some(up: &mut Stream, buf: &mut BytesMut, read_timeout: Duration) -> Result<usize> {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(16 * 1024);
    }
    match within(read_timeout, up.read_buf(buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => read_failed(e),
        Err(_) => timed_out(read_timeout),
    }
}

/// A failed read of the backend's answer, as the attempt reports it.
fn read_failed<T>(e: std::io::Error) -> Result<T> {
    Error::e_because(ReadError, "reading the response", e).map_err(|e| e.into_up())
}

/// No answer from the backend within the pool's `read_timeout`.
fn timed_out<T>(read_timeout: Duration) -> Result<T> {
    Error::e_explain(ReadTimedout, format!("timeout: {read_timeout:?}")).map_err(|e| e.into_up())
}

/// The `endpoint-load-metrics` trailer among a chunked body's trailer lines (gRPC
/// backends report in trailers).
fn trailer_report(trailers: &[u8]) -> Option<LoadReport> {
    trailers.split(|&b| b == b'\n').find_map(|line| {
        let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
        name.trim_ascii()
            .eq_ignore_ascii_case(load_report::HEADER.as_bytes())
            .then(|| load_report::parse(value[1..].trim_ascii()))
    })
}
