//! YAML builders for test configs: fast checks, loopback everything.

use crate::FakeBackend;
use std::net::SocketAddr;

/// Health check settings that make tests quick: 50 ms spacing, 1 s timeout.
pub const FAST_CHECKS: &str = "    health_check:
      interval: 1s
      fast_interval: 50ms
      down_interval: 50ms
      max_down_interval: 100ms
      timeout: 1s
      jitter: 0
      rise: 1
      fall: 1
";

/// One pool; `extra` is indented pool-level YAML (4 spaces), e.g. `    balance: x\n`.
pub fn pool(name: &str, backends: &[(&FakeBackend, u32)], extra: &str) -> String {
    let mut s = format!("  - name: {name}\n    backends:\n");
    for (b, w) in backends {
        s += &format!("      - address: {}\n        weight: {w}\n", b.addr);
    }
    s += extra;
    s
}

/// A whole config; `top` is extra top-level YAML.
pub fn config(listen: SocketAddr, admin: SocketAddr, top: &str, pools: &[String]) -> String {
    format!(
        "threads: 1\ngrace_period: 5s\nlisteners:\n  - address: {listen}\nadmin:\n  address: {admin}\n{top}pools:\n{}",
        pools.concat()
    )
}

/// `config` with TLS on its listener: `certs` in order (the first is the default);
/// `listener_extra` is more listener-level YAML (4 spaces), e.g. `    http2: false\n`.
pub fn tls_config(
    listen: SocketAddr,
    admin: SocketAddr,
    certs: &[&crate::certs::Leaf],
    listener_extra: &str,
    pools: &[String],
) -> String {
    let mut tls = String::from("    tls:\n      certificates:\n");
    for c in certs {
        tls += &format!(
            "        - cert: {}\n          key: {}\n",
            c.cert.display(),
            c.key.display()
        );
    }
    config(listen, admin, "", pools).replacen(
        &format!("  - address: {listen}\n"),
        &format!("  - address: {listen}\n{tls}{listener_extra}"),
        1,
    )
}
