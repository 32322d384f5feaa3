//! What vigil shows of itself: Prometheus metrics, the access log, process logs, and
//! what it tells systemd.

mod access_line;
pub mod access_log;
pub mod logging;
pub mod metrics;
pub mod systemd;
