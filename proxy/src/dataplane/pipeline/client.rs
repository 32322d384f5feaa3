//! The client's side of a connection while the loop serves one of its requests: its
//! stream, the bytes read past the request head, and whether it has left.

use bytes::BytesMut;
use pingora::protocols::Stream;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The client's side of a connection while the loop serves one of its requests.
pub(super) struct Client<'a> {
    pub stream: &'a mut Stream,
    /// Bytes read from the client past the request head: the rest of a streamed body,
    /// then its next request (pipelined).
    pub pending: &'a mut BytesMut,
}

impl Client<'_> {
    /// Waits until the client closes its side (true) or sends more (false, the bytes
    /// kept in `pending` for its next request). Once `PIPELINE_HELD` bytes wait, the
    /// client is no longer watched: it never returns. `first`: the request has just
    /// been sent, and most answers come before the client does anything: its socket is
    /// not read until it has something (a read that finds nothing is a system call). A
    /// plain socket says so from the readiness its runtime already tracks, at no cost;
    /// a stream that cannot tell (TLS, an HTTP/2 stream) is read after `WATCH_AFTER`.
    /// (A timer per request was the earlier way for all: arming one wakes the runtime's
    /// driver through its eventfd, a `write` for many requests.)
    pub(super) async fn gone(&mut self, first: bool) -> bool {
        if first {
            match self.stream.wait_readable().await {
                Ok(true) => {}
                Ok(false) => tokio::time::sleep(WATCH_AFTER).await,
                Err(_) => return true,
            }
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
