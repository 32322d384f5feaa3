//! A client connection between requests: waiting for the next one (and the linger of a
//! drain), reading a head until it is whole, reading a body held whole.

use super::head::{self, Env, Head};
use super::{Pipeline, DRAIN_LINGER};
use bytes::BytesMut;
use pingora::apps::IDLE_KEEPALIVE;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

impl Pipeline {
    /// Reads until `buf` holds `want` bytes, by `deadline` (`limits.body_timeout`).
    /// `Err(true)`: the client was too slow (it gets 408); `Err(false)`: it went away.
    pub(super) async fn read_body(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        want: usize,
        deadline: tokio::time::Instant,
    ) -> std::result::Result<(), bool> {
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
    pub(super) async fn idle(
        &self,
        stream: &mut Stream,
        shutdown: &ShutdownWatch,
        first: bool,
    ) -> bool {
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
        let _lingering = self.plane.in_flight.start();
        let ready = timeout(DRAIN_LINGER, stream.wait_readable()).await;
        matches!(ready, Ok(Ok(_)))
    }

    /// Reads until `buf` starts with a whole head. `Err(Some(status))`: it is refused
    /// with `status` (too slow); `Err(None)`: the client closed or failed.
    pub(super) async fn read_head(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        env: &Env<'_>,
    ) -> std::result::Result<Head, Option<u16>> {
        if buf.is_empty() && env.https && !env.h2 {
            // A TLS stream cannot wait for its next request without reading it (`idle`
            // returns at once): its first bytes are read small, so that a client idle
            // between requests holds no 4 KiB buffer. The rest of the record is in
            // rustls's buffer already, and the reads below take it without a system call.
            let mut first = [0u8; 512];
            match timeout(IDLE_KEEPALIVE, stream.read(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {
                    buf.reserve(4096);
                    buf.extend_from_slice(&first[..n]);
                }
                _ => return Err(None),
            }
        }
        // Until the first byte the keep-alive limit applies, then the head's own.
        let mut deadline = None;
        loop {
            if !buf.is_empty() {
                match head::parse(buf, env) {
                    Head::Partial => {}
                    other => return Ok(other),
                }
                if deadline.is_none() {
                    deadline = env.limits.timeout.map(|t| tokio::time::Instant::now() + t);
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
                // An HTTP/2 stream's head is at hand (`h2::H2Client`).
                None if env.h2 => stream.read_buf(buf).await,
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
}
