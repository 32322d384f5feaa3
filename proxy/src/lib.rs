//! The `vigil` proxy: configuration wired to a running Pingora server.
//!
//! - [`app`]: shared state; the routing snapshot is one `ArcSwap<RoutingTable>`.
//! - [`routing`] and [`balance`]: Host/path routing and lock-free backend selection.
//! - [`proxy`]: the `ProxyHttp` implementation (retries, 404/503, forwarded headers).
//! - [`edge`] and [`access_log`]: limits on client requests; one log line per request.
//! - [`admin`]: `/metrics`, `/health/*`, `POST /admin/reload`.
//! - [`apply`]: the one path from a configuration to the running state (start, reload,
//!   discovery); [`discovery`]: pools' backends from DNS.
//! - [`server`]: process wiring, signals, drain; [`upgrade`]: `vigil run --upgrade`;
//!   [`demo`]: `vigil demo`.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod affinity;
pub mod app;
pub mod apply;
pub mod balance;
pub mod convert;
pub mod demo;
pub mod descriptors;
pub mod discovery;
pub mod edge;
pub mod error;
pub mod fast;
pub mod fleet;
pub mod idle;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod request;
pub mod rewound;
pub mod routing;
pub mod server;
pub mod tls;
pub mod upgrade;
pub mod upstream_tls;
