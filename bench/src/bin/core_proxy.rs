//! `core_proxy LISTEN FILE`: an experiment — a minimal HTTP/1 proxy on pingora-core alone
//! (its listener, parser, connector and connection pool; no pingora-proxy), to measure how
//! much of the per-request CPU is Pingora's proxy layer.
//!
//! `--own-pool` keeps idle upstream connections in a plain list instead of Pingora's pool
//! (which spawns a watcher task per released connection). Not a product: no timeouts,
//! no retries, no error responses; it only measures floors for bench/RESULTS.md.

#![forbid(unsafe_code)]

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ReusedHttpStream};
use pingora::connectors::http::v1::Connector;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct App {
    peers: Vec<SocketAddr>,
    next: AtomicUsize,
    connector: Connector,
    /// With `--own-pool`: idle upstream streams per peer, with no idle watcher task.
    own_pool: Option<Vec<std::sync::Mutex<Vec<pingora::protocols::Stream>>>>,
}

#[async_trait]
impl HttpServerApp for App {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            _ => return None,
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.peers.len();
        let peer = HttpPeer::new(self.peers[i], false, String::new());
        let pooled = self
            .own_pool
            .as_ref()
            .and_then(|p| p[i].lock().unwrap().pop());
        let mut up = match pooled {
            Some(stream) => pingora::protocols::http::v1::client::HttpSession::new(stream),
            None => self.connector.get_http_session(&peer).await.ok()?.0,
        };
        let req = Box::new(session.req_header().clone());
        up.write_request_header(req).await.ok()?;
        while let Some(b) = session.read_request_body().await.ok()? {
            up.write_body(&b).await.ok()?;
        }
        up.finish_body().await.ok()?;
        up.read_response().await.ok()?;
        let resp = Box::new(up.resp_header()?.clone());
        session.write_response_header(resp).await.ok()?;
        while let Some(b) = up.read_body_bytes().await.ok()? {
            session.write_response_body(b, false).await.ok()?;
        }
        up.respect_keepalive();
        match &self.own_pool {
            Some(p) => {
                if let Some(stream) = up.reuse().await {
                    p[i].lock().unwrap().push(stream);
                }
            }
            None => self.connector.release_http_session(up, &peer, None).await,
        }
        let reusable = session.finish().await.ok()??;
        Some(ReusedHttpStream::new(reusable.into_parts().0, None))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = args.get(1).expect("LISTEN").clone();
    let peers: Vec<SocketAddr> = std::fs::read_to_string(args.get(2).expect("FILE"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let own_pool = args
        .iter()
        .any(|a| a == "--own-pool")
        .then(|| peers.iter().map(|_| Default::default()).collect());
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let app = App {
        peers,
        next: AtomicUsize::new(0),
        connector: Connector::new(None),
        own_pool,
    };
    let mut svc = pingora::services::listening::Service::new("core".to_string(), app);
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.run_forever();
}
