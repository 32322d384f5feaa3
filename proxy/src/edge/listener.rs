//! Client connections per listener: at most `max_connections` open at once, and small
//! buffers for each.
//!
//! A connection over the bound is accepted and closed at once, and counted: a flood
//! meets refusals (or the kernel's backlog) instead of exhausting memory or file
//! descriptors. Pingora's default 64 KiB read buffer per connection is left out on
//! plain listeners: the HTTP/1 parser reads into its own 4 KiB buffer anyway, so it
//! only copied bytes twice and held 64 KiB for every idle keep-alive client.

use crate::edge::limits::EdgeLimits;
use crate::edge::tls::ListenerTlsState;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::{L4BufferSettings, Stream as L4Stream};
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::AsyncReadExt;

/// Client connections, plain or TLS: no L4 buffers. The request loop writes whole heads
/// and bodies, the h2 codec and rustls buffer their own frames and records, and each
/// buffer would be held by every idle connection (a 64 KiB read buffer was most of what
/// an idle TLS client cost).
pub fn client_buffers() -> L4BufferSettings {
    L4BufferSettings::new(0, 0)
}

/// One listener's bound and counters.
pub struct Slot {
    address: SocketAddr,
    max: usize,
    /// TLS listeners: the acceptor in force and the handshake counters.
    tls: Option<Arc<ListenerTlsState>>,
    /// Plain listeners with `http2: true`: HTTP/2 by prior knowledge (h2c) as well.
    h2c: bool,
    /// Exact count for the bound; `open_gauge` mirrors it for /metrics.
    open: AtomicUsize,
    open_gauge: IntGauge,
    refused: IntCounter,
}

impl Slot {
    pub fn new(
        address: SocketAddr,
        max: usize,
        tls: Option<Arc<ListenerTlsState>>,
        h2c: bool,
        open_gauge: IntGauge,
        refused: IntCounter,
    ) -> Self {
        Slot {
            address,
            max,
            h2c: h2c && tls.is_none(),
            tls,
            open: AtomicUsize::new(0),
            open_gauge,
            refused,
        }
    }
}

/// Wraps a Pingora app (the HTTP proxy) with a bound on open connections per listener,
/// and the TLS handshake of TLS listeners.
pub struct ConnectionLimit<A> {
    inner: Arc<A>,
    /// The same app set to speak HTTP/2 to clients that open with its preface.
    h2c: Option<Arc<A>>,
    slots: Vec<Slot>,
    /// Handshakes end within the limits' `header_timeout`.
    edge: Arc<EdgeLimits>,
}

impl<A> ConnectionLimit<A> {
    pub fn new(inner: A, h2c: Option<A>, slots: Vec<Slot>, edge: Arc<EdgeLimits>) -> Self {
        assert!(!slots.is_empty(), "a service listens somewhere");
        ConnectionLimit {
            inner: Arc::new(inner),
            h2c: h2c.map(Arc::new),
            slots,
            edge,
        }
    }

    /// The listener `stream` was accepted on (see [`accepted_on`]).
    fn slot(&self, stream: &Stream) -> &Slot {
        if self.slots.len() == 1 {
            return &self.slots[0];
        }
        let addresses = self.slots.iter().map(|s| s.address);
        let i = local_inet(stream).and_then(|l| accepted_on(addresses, l));
        &self.slots[i.unwrap_or(0)]
    }
}

/// The local (inet) address of a connection.
pub fn local_inet(stream: &Stream) -> Option<SocketAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied())
}

/// Which of the configured `listeners` a connection to `local` came in on: the one
/// bound to that address, or one bound to the unspecified address on its port.
pub fn accepted_on(
    listeners: impl Iterator<Item = SocketAddr> + Clone,
    local: SocketAddr,
) -> Option<usize> {
    let mut any_ip = listeners.clone();
    listeners
        .clone()
        .position(|a| a == local)
        .or_else(|| any_ip.position(|a| a.port() == local.port() && a.ip().is_unspecified()))
}

/// How long a new connection may stay silent: the keep-alive idle time of our pingora-core
/// patch 3.
const IDLE_BEFORE_REQUEST: std::time::Duration = pingora::apps::IDLE_KEEPALIVE;

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl<A> ConnectionLimit<A> {
    /// Whether the client opens with HTTP/2's preface. Reads only until the bytes
    /// differ from it (an HTTP/1 request does at its first or second byte), the first
    /// within the keep-alive idle time and the rest within `header_timeout`, then puts
    /// them back. Pingora's own h2c check waits for 24 bytes without a deadline.
    async fn sniff_h2c(&self, stream: Stream) -> Option<(bool, Stream)> {
        let mut l4 = stream.into_any().downcast::<L4Stream>().ok()?;
        let mut got = Vec::with_capacity(H2_PREFACE.len());
        let mut buf = [0u8; 24];
        while got.len() < H2_PREFACE.len() {
            let limit = if got.is_empty() {
                IDLE_BEFORE_REQUEST
            } else {
                self.edge.header_timeout()
            };
            let want = H2_PREFACE.len() - got.len();
            match tokio::time::timeout(limit, l4.read(&mut buf[..want])).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
            if !H2_PREFACE.starts_with(&got) {
                break;
            }
        }
        let h2 = got == H2_PREFACE;
        l4.rewind(&got);
        Some((h2, l4))
    }

    /// The TLS handshake, with the acceptor in force now, counted; None if it failed.
    async fn handshake(&self, tls: &ListenerTlsState, stream: Stream) -> Option<Stream> {
        let [ok, failed, timed_out] = &tls.handshakes;
        let Ok(l4) = stream.into_any().downcast::<L4Stream>() else {
            failed.inc();
            return None;
        };
        let acceptor = tls.acceptor();
        match tokio::time::timeout(self.edge.header_timeout(), acceptor.tls_handshake(*l4)).await {
            Ok(Ok(s)) => {
                ok.inc();
                Some(Box::new(s))
            }
            Ok(Err(e)) => {
                failed.inc();
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                timed_out.inc();
                None
            }
        }
    }
}

/// Gives a connection's place back when it closes, however it closes.
struct Held<'a>(&'a Slot);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.open_gauge.dec();
        crate::edge::descriptors::CLIENTS.release();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionLimit<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let slot = self.slot(&stream);
        // Over the listener's bound, or the descriptors every listener's clients share
        // (`descriptors`, asked only under the bound): refused.
        if slot.open.fetch_add(1, Ordering::Relaxed) >= slot.max
            || !crate::edge::descriptors::CLIENTS.admit()
        {
            slot.open.fetch_sub(1, Ordering::Relaxed);
            slot.refused.inc();
            // Dropping the stream closes it.
            return None;
        }
        slot.open_gauge.inc();
        let _held = Held(slot);
        let mut app = &self.inner;
        // Boxed, each in a statement of its own: a TLS handshake's future is several
        // KiB, which every connection would otherwise hold, TLS or not, for as long as it
        // is open (a future made in the statement that awaits it keeps its room).
        let mut stream = match (&slot.tls, &self.h2c) {
            (Some(tls), _) => {
                let handshake = Box::pin(self.handshake(tls, stream));
                handshake.await?
            }
            (None, Some(h2c)) if slot.h2c => {
                let sniff = Box::pin(self.sniff_h2c(stream));
                let (h2, stream) = sniff.await?;
                if h2 {
                    app = h2c;
                }
                stream
            }
            _ => stream,
        };
        // Keep-alive: the connection stays here, so it is counted, handshaken and
        // sniffed once, not once per request.
        loop {
            stream = app.process_new(stream, shutdown).await?;
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    /// pingora-core patch 11: an open TLS stream holds one TLS connection, not room for
    /// three (its handshake states, boxed). About 4.7 KB without the patch.
    #[test]
    fn an_open_tls_stream_holds_one_tls_connection() {
        use pingora::protocols::l4::stream::Stream;
        let size = std::mem::size_of::<pingora::protocols::tls::TlsStream<Stream>>();
        assert!(size < 2500, "a TLS stream takes {size} bytes");
    }
}
