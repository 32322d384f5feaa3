//! Limits on what a client may send, answered by vigil without calling a backend
//! (contract §8 `limits`).
//!
//! The request head is limited while Pingora reads it (our patch on pingora-core, see
//! `third_party/README.md`): too large or too many headers is 431, a head that does not
//! arrive whole within `header_timeout` of its first byte is 408, and the connection
//! closes. The body limit is checked here, from `Content-Length` before anything is
//! sent upstream and from the bytes seen for chunked bodies.

use crate::observe::access_log::{AccessLog, Entry};
use crate::observe::metrics::class_index;
use arc_swap::ArcSwap;
use pingora::protocols::http::v1::server::{HeadLimitValues, HeadLimits};
use pingora::protocols::l4::socket::SocketAddr;
use prometheus::IntCounter;
use std::sync::Arc;
use std::time::SystemTime;
use vigil_conf::LimitsConfig;

/// The limits in force, swapped whole on reload; read once per request head.
pub struct EdgeLimits {
    current: ArcSwap<LimitsConfig>,
    /// `vigil_requests_total{pool="-"}` by status class: requests answered before
    /// they were routed to a pool.
    unrouted: [IntCounter; 4],
    access_log: Arc<AccessLog>,
}

impl std::fmt::Debug for EdgeLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EdgeLimits")
            .field(&self.current.load())
            .finish()
    }
}

impl EdgeLimits {
    pub fn new(
        limits: &LimitsConfig,
        unrouted: [IntCounter; 4],
        access_log: Arc<AccessLog>,
    ) -> Self {
        EdgeLimits {
            current: ArcSwap::from_pointee(limits.clone()),
            unrouted,
            access_log,
        }
    }

    pub fn set(&self, limits: &LimitsConfig) {
        self.current.store(Arc::new(limits.clone()));
    }

    /// A TLS handshake must end within this, as a request head must.
    pub fn header_timeout(&self) -> std::time::Duration {
        self.current.load().header_timeout
    }

    /// A request body the request loop holds must arrive whole within this.
    pub fn body_timeout(&self) -> std::time::Duration {
        self.current.load().body_timeout
    }

    /// A client that takes longer than this to take one write of its answer is cut.
    pub fn client_write_timeout(&self) -> std::time::Duration {
        self.current.load().client_write_timeout
    }

    /// Request bodies above this many bytes are refused with 413; None = no limit.
    pub fn body_bytes(&self) -> Option<u64> {
        Some(self.current.load().body_bytes).filter(|&b| b > 0)
    }

    /// Counts a request answered with `status` before it had a pool.
    pub fn count_unrouted(&self, status: u16) {
        self.unrouted[class_index(status)].inc();
    }
}

impl HeadLimits for EdgeLimits {
    fn limits(&self) -> HeadLimitValues {
        let l = self.current.load();
        HeadLimitValues {
            max_bytes: l.header_bytes,
            max_headers: l.headers,
            timeout: Some(l.header_timeout),
        }
    }

    fn refused(&self, status: u16, client: Option<&SocketAddr>) {
        self.count_unrouted(status);
        if self.access_log.enabled() {
            let client = client.map(|c| c.to_string());
            self.access_log.log(&Entry {
                time: Some(SystemTime::now()),
                client: client.as_deref().unwrap_or(""),
                protocol: "HTTP/1.1",
                status,
                ..Entry::default()
            });
        }
    }
}
