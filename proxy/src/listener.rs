//! Client connections per listener: at most `max_connections` open at once, and small
//! buffers for each.
//!
//! A connection over the bound is accepted and closed at once, and counted: a flood
//! meets refusals (or the kernel's backlog) instead of exhausting memory or file
//! descriptors. Pingora's default 64 KiB read buffer per connection is left out on
//! plain listeners: the HTTP/1 parser reads into its own 4 KiB buffer anyway, so it
//! only copied bytes twice and held 64 KiB for every idle keep-alive client.

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Plain HTTP listeners: no L4 read buffer, Pingora's MSS-sized write buffer.
pub fn plain_buffers() -> L4BufferSettings {
    L4BufferSettings::new(
        0,
        pingora::protocols::l4::stream::DEFAULT_L4_WRITE_BUFFER_SIZE,
    )
}

/// One listener's bound and counters.
pub struct Slot {
    address: SocketAddr,
    max: usize,
    /// Exact count for the bound; `open_gauge` mirrors it for /metrics.
    open: AtomicUsize,
    open_gauge: IntGauge,
    refused: IntCounter,
}

impl Slot {
    pub fn new(address: SocketAddr, max: usize, open_gauge: IntGauge, refused: IntCounter) -> Self {
        Slot {
            address,
            max,
            open: AtomicUsize::new(0),
            open_gauge,
            refused,
        }
    }
}

/// Wraps a Pingora app (the HTTP proxy) with a bound on open connections per listener.
pub struct ConnectionLimit<A> {
    inner: Arc<A>,
    slots: Vec<Slot>,
}

impl<A> ConnectionLimit<A> {
    pub fn new(inner: A, slots: Vec<Slot>) -> Self {
        assert!(!slots.is_empty(), "a service listens somewhere");
        ConnectionLimit {
            inner: Arc::new(inner),
            slots,
        }
    }

    /// The listener `stream` was accepted on: its local address, or a listener bound to
    /// the unspecified address on the same port.
    fn slot(&self, stream: &Stream) -> &Slot {
        if self.slots.len() == 1 {
            return &self.slots[0];
        }
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        local
            .and_then(|l| {
                self.slots.iter().find(|s| s.address == l).or_else(|| {
                    self.slots
                        .iter()
                        .find(|s| s.address.port() == l.port() && s.address.ip().is_unspecified())
                })
            })
            .unwrap_or(&self.slots[0])
    }
}

/// Gives a connection's place back when it closes, however it closes.
struct Held<'a>(&'a Slot);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.open_gauge.dec();
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
        if slot.open.fetch_add(1, Ordering::Relaxed) >= slot.max {
            slot.open.fetch_sub(1, Ordering::Relaxed);
            slot.refused.inc();
            // Dropping the stream closes it.
            return None;
        }
        slot.open_gauge.inc();
        let _held = Held(slot);
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
