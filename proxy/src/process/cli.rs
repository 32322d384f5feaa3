//! The `vigil` command line, defined once: `main.rs` parses it, and `vigil-docs` renders
//! the same definition as the `vigil(1)` man page and the shell completions
//! ([`super::manual`]), so `--help`, the man page and the completions cannot disagree.

use crate::observe::logging::LogFormat;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::LazyLock;

/// `VERSION (commit HASH, TLS PROVIDER)`: what `vigil --version` prints after `vigil `.
/// The commit comes from `build.rs` (`unknown` outside a git checkout), the TLS
/// provider from the one place that picks it, [`crate::edge::tls::PROVIDER_NAME`].
pub fn version() -> &'static str {
    static VERSION: LazyLock<String> = LazyLock::new(|| {
        format!(
            "{} (commit {}, TLS {})",
            env!("CARGO_PKG_VERSION"),
            env!("VIGIL_COMMIT"),
            crate::edge::tls::PROVIDER_NAME
        )
    });
    VERSION.as_str()
}

#[derive(Parser)]
#[command(
    name = "vigil",
    version = version(),
    about = "An edge reverse proxy that notices dead backends first"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Start the proxy on a YAML config.
    Run {
        /// The YAML config file.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Reload when the file changes (as well as on SIGHUP and POST /admin/reload).
        #[arg(long)]
        watch: bool,
        /// Take over from the vigil running on this config (its `upgrade_socket`): its
        /// listening sockets and backend health; it then drains and exits.
        #[arg(long)]
        upgrade: bool,
    },
    /// Start on the embedded example config plus three demo backends on loopback.
    Demo,
    /// Parse and validate a config file; print a summary per pool or every error.
    Validate {
        /// The YAML config file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Set a backend's admin state on the running vigil, through its admin API (address
    /// and token read from the config file).
    Backend {
        /// drain: no new requests, those in flight finish, still checked; maintenance:
        /// no requests, no checks; ready: back in service.
        #[arg(value_name = "STATE", value_parser = ["drain", "maintenance", "ready"])]
        state: String,
        /// The pool's name.
        #[arg(value_name = "POOL")]
        pool: String,
        /// The backend's address as the config or DNS names it (HOST:PORT).
        #[arg(value_name = "ADDRESS")]
        address: String,
        /// The YAML config file of the running vigil.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_version_names_commit_and_tls_provider() {
        let v = version();
        assert!(v.starts_with(env!("CARGO_PKG_VERSION")), "{v}");
        assert!(v.contains(" (commit "), "{v}");
        let tls = format!(", TLS {})", crate::edge::tls::PROVIDER_NAME);
        assert!(v.ends_with(&tls), "{v}");
    }
}
