//! Why vigil could not start. Each message names what failed and where; `main` prints
//! it and exits 1.

use crate::control::error::ApplyError;
use std::io;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("demo backend cannot listen on {addr}: {source}")]
    DemoBackend { addr: SocketAddr, source: io::Error },
    #[error("cannot start the checker runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot handle {signal}: {source}")]
    Signal {
        signal: &'static str,
        source: io::Error,
    },
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the access log: {0}")]
    AccessLog(io::Error),
    #[error("{0}")]
    Config(ApplyError),
    #[error("{0}")]
    Upgrade(#[from] crate::process::upgrade::UpgradeError),
}
