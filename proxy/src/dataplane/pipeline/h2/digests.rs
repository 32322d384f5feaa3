//! What Pingora asks of a stream besides reads and writes (its id, TLS and socket
//! digests, timing): an HTTP/2 stream answers from its connection, or not at all.

use super::H2Client;
use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, ALPN};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use std::sync::Arc;

#[async_trait]
impl Shutdown for H2Client {
    async fn shutdown(&mut self) {}
}

impl UniqueID for H2Client {
    fn id(&self) -> UniqueIDType {
        // No socket of its own (`reset_on_close` must not touch the connection's).
        -1
    }
}

impl Ssl for H2Client {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.ssl.clone()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        Some(ALPN::H2)
    }
}

impl GetTimingDigest for H2Client {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for H2Client {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for H2Client {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.socket.clone()
    }

    fn set_socket_digest(&mut self, _digest: SocketDigest) {}
}

#[async_trait]
impl Peek for H2Client {}
