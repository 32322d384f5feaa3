//! What vigil shows of itself: Prometheus metrics, the access log, process logs.

pub mod access_log;
pub mod logging;
pub mod metrics;
