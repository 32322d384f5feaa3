//! Support for vigil's end-to-end tests: fake backends on loopback, the real `vigil`
//! binary in a child process, a small HTTP client, and polling with a deadline.

#![forbid(unsafe_code)]

mod backend;
pub mod certs;
pub mod checking;
mod client;
pub mod config;
pub mod dns;
pub mod etcd;
pub mod grpc;
pub mod h2raw;
pub mod notify;
mod process;
pub mod raw;
pub mod stream;
pub mod tls;

pub use backend::{Control, FakeBackend, Mode, Request, Stats};
pub use client::{get, request, Response};
pub use process::{free_port, free_ports, Vigil};

use std::time::Duration;
use tokio::time::Instant;

/// Starts `vigil` on `pools` (built with [`config::pool`]) and waits until ready.
pub async fn start_vigil(top: &str, pools: &[String]) -> Vigil {
    let (listen, admin) = free_ports();
    let mut v = Vigil::start(&config::config(listen, admin, top, pools), listen, admin);
    v.wait_ready().await;
    v
}

/// vigil with one TLS listener serving `leaves` in front of `pools`, once ready.
pub async fn start_tls_vigil(leaves: &[&certs::Leaf], pools: &[String]) -> Vigil {
    let (listen, admin) = free_ports();
    let yaml = config::tls_config(listen, admin, leaves, "", pools);
    let mut v = Vigil::start(&yaml, listen, admin);
    v.wait_ready().await;
    v
}

/// [`start_vigil`] with its listener speaking h2c as well (`http2: true`).
pub async fn start_h2c_vigil(pools: &[String]) -> Vigil {
    let (listen, admin) = free_ports();
    let yaml = config::config(listen, admin, "", pools).replacen(
        &format!("  - address: {listen}\n"),
        &format!("  - address: {listen}\n    http2: true\n"),
        1,
    );
    let mut v = Vigil::start(&yaml, listen, admin);
    v.wait_ready().await;
    v
}

/// Traffic (not health checks) a backend received.
/// Raises this process's open-file limit (which vigil inherits) towards `want`, up to
/// the hard limit: the limit set.
pub fn raise_fd_limit(want: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let want = want.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, want, hard).unwrap();
    want
}

pub fn traffic(b: &FakeBackend) -> u64 {
    b.stats.requests() - b.stats.health_requests()
}

/// Polls `cond` every few milliseconds until it holds; panics with `what` after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    wait_for_async(what, limit, || std::future::ready(cond())).await
}

/// [`wait_for`] for conditions that need I/O.
pub async fn wait_for_async<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
