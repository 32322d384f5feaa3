//! `lb_peer FILE... [--reuse]`: Pingora's own `pingora-load-balancing` HTTP health
//! check over the backends listed in FILEs, configured as its users would: parallel
//! checks, a 1 s frequency, `GET /health`. The peer for the checker benchmark.

#![forbid(unsafe_code)]

use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::services::background::BackgroundService;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reuse = args.iter().any(|a| a == "--reuse");
    let mut addrs = Vec::new();
    for f in args.iter().filter(|a| !a.starts_with("--")) {
        addrs.extend(
            std::fs::read_to_string(f)
                .expect("read fleet file")
                .lines()
                .map(str::to_string),
        );
    }
    vigil_bench::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(addrs.iter().map(String::as_str))
            .expect("addresses");
        let mut hc = HttpHealthCheck::new("localhost", false);
        hc.reuse_connection = reuse;
        hc.req.set_uri("/health".parse().unwrap());
        lb.set_health_check(Box::new(hc));
        lb.health_check_frequency = Some(Duration::from_secs(1));
        lb.parallel_health_check = true;
        let (_tx, rx) = tokio::sync::watch::channel(false);
        eprintln!(
            "lb_peer: checking {} backends every 1s (reuse_connection={reuse})",
            addrs.len()
        );
        lb.start(rx).await;
    });
}
