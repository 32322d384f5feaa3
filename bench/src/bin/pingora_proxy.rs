//! `pingora_proxy LISTEN FILE`: Pingora's own load balancer as a proxy peer, as its
//! README example builds it: `LoadBalancer<RoundRobin>`, `upstream_peer` selects,
//! one worker thread, no health check (nothing to compare on that side here).

#![forbid(unsafe_code)]

use async_trait::async_trait;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use std::sync::Arc;

// The same allocator as vigil, so the comparison is of the proxy code alone.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Lb(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Lb {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        let upstream = self
            .0
            .select(b"", 256)
            .ok_or_else(|| Error::explain(HTTPStatus(503), "no upstream"))?;
        Ok(Box::new(HttpPeer::new(upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = args.get(1).expect("LISTEN").clone();
    let addrs: Vec<String> = std::fs::read_to_string(args.get(2).expect("FILE"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let lb = Arc::new(LoadBalancer::try_from_iter(addrs.iter().map(String::as_str)).unwrap());
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Lb(lb));
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
