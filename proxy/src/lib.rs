//! placeholder
pub use arc_swap;
pub use clap;
pub use dashmap;
pub use pingora;
pub use pingora_ketama;
pub use prometheus;
pub use tracing_subscriber;
