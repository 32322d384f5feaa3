//! Why vigil could not start, or could not apply a configuration. Each message names
//! what failed and where; `main` prints a start error and exits 1.

use std::io;
use std::net::SocketAddr;
use vigil_conf::ConfigErrors;

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
    Upgrade(#[from] crate::upgrade::UpgradeError),
}

#[derive(Debug)]
pub enum ApplyError {
    /// The file has errors; nothing changed.
    Invalid(ConfigErrors),
    /// The file changes settings that only a restart applies; nothing changed.
    NeedsRestart(Vec<String>),
    /// The new access log file cannot be opened; nothing changed.
    AccessLog(String),
    /// Running from the embedded demo config: there is no file to reload.
    NoFile,
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

impl std::error::Error for ApplyError {}

impl ApplyError {
    /// One line per problem, `FILE:LINE:COL: message` where there is a position.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ApplyError::Invalid(errs) => errs.iter().map(|e| e.to_string()).collect(),
            ApplyError::NeedsRestart(what) => what
                .iter()
                .map(|w| format!("{w} changed: restart vigil to apply it; nothing was reloaded"))
                .collect(),
            ApplyError::AccessLog(e) => vec![e.clone()],
            ApplyError::NoFile => {
                vec!["no configuration file to reload (embedded demo config)".into()]
            }
        }
    }
}
