//! What Pingora asks of a stream besides reads and writes (its id, TLS and socket
//! digests, timing): an HTTP/2 stream, to a client or a backend, answers from its
//! connection, or not at all.

use super::upstream::H2Upstream;
use super::H2Client;
use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, ALPN};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use std::sync::Arc;

/// The digests of an HTTP/2 stream type: `$socket` and `$ssl` give its connection's
/// (`|s| expr` over `&Self`), `$id` its id.
macro_rules! stream_digests {
    ($t:ty, id: |$s0:ident| $id:expr, socket: |$s1:ident| $socket:expr, ssl: |$s2:ident| $ssl:expr) => {
        #[async_trait]
        impl Shutdown for $t {
            async fn shutdown(&mut self) {}
        }

        impl UniqueID for $t {
            fn id(&self) -> UniqueIDType {
                let $s0 = self;
                $id
            }
        }

        impl Ssl for $t {
            fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
                let $s2 = self;
                $ssl
            }

            fn selected_alpn_proto(&self) -> Option<ALPN> {
                Some(ALPN::H2)
            }
        }

        impl GetTimingDigest for $t {
            fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
                Vec::new()
            }
        }

        impl GetProxyDigest for $t {
            fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
                None
            }
        }

        impl GetSocketDigest for $t {
            fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
                let $s1 = self;
                $socket
            }

            fn set_socket_digest(&mut self, _digest: SocketDigest) {}
        }
    };
}

// A client's stream has no socket of its own (`reset_on_close` must not touch the
// connection's).
stream_digests!(H2Client, id: |_s| -1, socket: |s| s.socket.clone(), ssl: |s| s.ssl.clone());

// A backend's stream names its connection's socket: the stall detector watches it, and
// cuts it when the backend freezes (every stream on it is then as stuck as this one).
stream_digests!(
    H2Upstream,
    id: |s| s.conn.fd,
    socket: |s| s.conn.socket.clone(),
    ssl: |s| s.conn.ssl.clone()
);

#[async_trait]
impl Peek for H2Client {
    /// Reading a stream whose request is all read costs no system call (it waits for the
    /// client's reset): the loop may read at once, with no timer to arm first.
    async fn wait_readable(&mut self) -> std::io::Result<bool> {
        Ok(true)
    }
}

#[async_trait]
impl Peek for H2Upstream {}
