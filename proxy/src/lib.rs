//! The `vigil` proxy: configuration wired to a running Pingora server.
//!
//! Four layers, each using only the ones below it:
//! - [`process`]: the running process — start, signals, drain, upgrade, CPU affinity,
//!   the admin listener, and [`process::app::App`], which wires the layers together.
//! - [`control`]: what is in force and the one task that changes it — reload, apply,
//!   discovery from DNS, the fleet on etcd.
//! - [`dataplane`]: the request path — one pipeline (HTTP/1 and HTTP/2 codecs), the
//!   shared request policy, routing snapshots and balancing, upstream connections, and
//!   Pingora's proxy for what the pipeline hands on. It reads snapshots only.
//! - [`edge`]: listeners, client TLS, client limits, descriptor budget.
//! - [`observe`]: metrics, the access log, process logs.
//!
//! A request: `edge::listener` → `dataplane::pipeline` (head, policy, route, attempts)
//! → backend → answer → `observe::access_log`. A health change: the checker
//! (`vigil-healthcheck`) → `control::InForce` rebuilds the routing table → the next
//! request's snapshot.

#![forbid(unsafe_code)]

pub mod control;
pub mod dataplane;
pub mod edge;
pub mod observe;
pub mod process;
