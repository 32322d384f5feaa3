//! The `vigil` command line (defined in `process::cli`): `run`, `demo`, `validate`,
//! `backend`.

#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;
use vigil_proxy::observe::logging;
use vigil_proxy::process::cli::{Cli, Command};
use vigil_proxy::process::{demo, server};

// glibc malloc was a tenth of the proxy's CPU per request (bench/RESULTS.md); mimalloc,
// called as `vigil_alloc` says.
#[global_allocator]
static ALLOCATOR: vigil_alloc::Allocator = vigil_alloc::Allocator;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Backend {
            state,
            pool,
            address,
            config,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match vigil_proxy::process::admin::set_backend_state(&config, &pool, &address, &state) {
                Ok((200, body)) => {
                    println!("{body}");
                    ExitCode::SUCCESS
                }
                Ok((status, body)) => {
                    eprintln!("vigil: the admin API answered {status}: {body}");
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!(
                        "vigil: cannot reach the admin API at {}: {e}",
                        config.admin.address
                    );
                    ExitCode::from(1)
                }
            }
        }
        Command::Run {
            config,
            watch,
            upgrade,
        } => {
            let parsed = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            logging::init(cli.log_format);
            let opts = server::RunOptions {
                config_path: Some(config),
                watch,
                upgrade,
            };
            report(server::run(parsed, opts, |_| {}))
        }
        Command::Demo => {
            // The embedded file is tested; failing here is a build defect.
            let config = vigil_conf::from_str(demo::CONFIG, "<demo>")
                .expect("embedded demo config is valid");
            logging::init(cli.log_format);
            let backends: Vec<_> = config.pools[0]
                .backends
                .iter()
                .map(|b| b.socket_addr)
                .collect();
            println!(
                "{}",
                demo::banner(config.listeners[0].address, config.admin.address)
            );
            let opts = server::RunOptions {
                config_path: None,
                watch: false,
                upgrade: false,
            };
            let mut started = Ok(());
            let result = server::run(config, opts, |rt| {
                started = demo::start_backends(rt, &backends)
            });
            report(started.and(result))
        }
    }
}

fn report(result: Result<(), server::StartError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil: {e}");
            ExitCode::from(1)
        }
    }
}

/// Loads and validates a config file; on errors prints them all (`FILE:LINE:COL:
/// message`) and gives exit code 1.
fn load(file: &std::path::Path) -> Result<vigil_conf::Config, ExitCode> {
    vigil_conf::load(file).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(1)
    })
}

fn validate(file: &std::path::Path) -> ExitCode {
    match load(file) {
        Ok(config) => {
            // The files the config names are part of it: certificates, keys, CA files.
            if let Err(errors) = vigil_proxy::control::certs::check_files(&config) {
                eprintln!("{errors}");
                return ExitCode::from(1);
            }
            for warning in vigil_proxy::control::certs::warnings(&config) {
                eprintln!("warning: {warning}");
            }
            for p in &config.pools {
                let routes: Vec<String> = p
                    .routes
                    .iter()
                    .map(|r| format!("{}{}", host(&r.host), r.path_prefix))
                    .collect();
                let scheme = match (&p.tls, p.protocol) {
                    (None, _) => "http",
                    (Some(_), vigil_conf::Protocol::Http1) => "https",
                    (Some(_), vigil_conf::Protocol::H2) => "https (h2)",
                };
                println!(
                    "pool {}: {} {} backends, {}, routes {}, {} check every {:?}",
                    p.name,
                    p.backends.len(),
                    scheme,
                    p.balance.as_str(),
                    routes.join(" "),
                    p.health_check.kind.as_str(),
                    p.health_check.interval
                );
                if let Some(d) = &p.discovery {
                    println!(
                        "pool {}: backends from DNS: {} every {:?}",
                        p.name, d.name, d.refresh
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn host(h: &vigil_conf::HostPattern) -> String {
    match h {
        vigil_conf::HostPattern::Any => "*".into(),
        vigil_conf::HostPattern::Exact(e) => e.clone(),
        vigil_conf::HostPattern::Suffix(s) => format!("*{s}"),
    }
}
