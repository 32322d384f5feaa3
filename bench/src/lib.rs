//! Benchmark tools for vigil: `fleet` (many loopback HTTP backends), `lb_peer`
//! (Pingora's own load balancer health checks, the peer for the checker benchmark)
//! and the criterion benches in `benches/`. Results live in `RESULTS.md`.

#![forbid(unsafe_code)]

pub use vigil_healthcheck::raise_fd_limit;
