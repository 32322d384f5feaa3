//! Config → running process, step by step: the sockets (see `listening`), the checker's
//! runtime and the [`App`], the upgrade socket and the signals (SIGHUP reload, SIGUSR1
//! reopen, SIGUSR2 binary upgrade: see `relaunch`), the Pingora server with the proxy
//! and admin services, readiness (see `ready`: systemd's `READY=1`, and the handover of
//! an upgrade), then the drain (see `drain`) that SIGTERM starts.
//!
//! The checker runs on its own single-threaded runtime, apart from Pingora's worker
//! threads, so a proxy saturated with requests does not starve health checks.

use crate::dataplane::pipeline::Pipeline;
use crate::dataplane::proxy::VigilProxy;
use crate::edge::listener::{client_buffers, ConnectionLimit, Slot};
use crate::observe::systemd::Notifier;
use crate::process::admin::AdminApp;
use crate::process::app::App;
use crate::process::drain::Drain;
pub use crate::process::error::StartError;
use crate::process::listening::{PreBound, Sockets};
use crate::process::relaunch::Relaunch;
use pingora::apps::http_app::HttpServer;
use pingora::apps::HttpServerOptions;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::listening::Service;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, watch};
use vigil_conf::{Config, CpuAffinity};

pub struct RunOptions {
    pub config_path: Option<PathBuf>,
    pub watch: bool,
    /// Take over the listening sockets (and backend health) of the vigil running on
    /// this config's `upgrade_socket`.
    pub upgrade: bool,
}

/// Runs until a signal ends the process: SIGTERM (or SIGQUIT) drains, SIGINT stops at
/// once. Returns after Pingora's runtimes and the checker's have stopped.
pub fn run(
    config: Config,
    opts: RunOptions,
    before_start: impl FnOnce(&tokio::runtime::Handle),
) -> Result<(), StartError> {
    let notifier = Notifier::from_env(opts.upgrade);
    let mut handoff = match opts.upgrade {
        true => Some(crate::process::upgrade::take_over(&config.upgrade_socket)?),
        false => None,
    };
    let sockets = Sockets::bind(&config, handoff.as_mut())?;
    vigil_healthcheck::raise_fd_limit();
    let control = checker_runtime()?;
    before_start(control.handle());
    let app = App::start(
        config.clone(),
        opts.config_path.clone(),
        control.handle().clone(),
        handoff
            .as_mut()
            .map(|h| std::mem::take(&mut h.backends))
            .unwrap_or_default(),
        notifier,
    )?;
    let (upgraded, stop_watching) =
        spawn_reload_and_upgrade_tasks(&control, &config, &app, sockets.copies, &opts)?;
    if let Some(h) = handoff {
        // systemd follows this process from now on; then the old one drains at once, as
        // it did before systemd was told anything: connections wait in the sockets'
        // backlog until Pingora accepts them here, and no connection is accepted by the
        // old process only to be told to go away (a client's HTTP/2 streams with it).
        app.notifier.main_pid();
        crate::process::ready::confirm_take_over(h);
    }
    announce_start(&config, &app);

    let mut server = pingora_server(&config);
    let (stop_accepting, accepting) = watch::channel(false);
    let (proxy_started, proxy_serves) = oneshot::channel();
    add_proxy(
        &mut server,
        &config,
        &app,
        sockets.proxy,
        accepting,
        proxy_started,
    );
    let (stop_admin, admin_accepting) = watch::channel(false);
    let (admin_started, admin_serves) = oneshot::channel();
    add_admin(
        &mut server,
        &app,
        sockets.admin,
        admin_accepting,
        admin_started,
    );
    let within = crate::process::ready::first_checks_within(&config);
    let serves = vec![proxy_serves, admin_serves];
    crate::process::ready::spawn(&control, app.clone(), serves, within);
    let access_log = app.plane.access_log.clone();
    let drain = Drain {
        app,
        upgraded,
        stop_admin,
        grace: config.grace_period,
        stop_accepting,
        stop_watching,
    };
    server.run(RunArgs {
        shutdown_signal: Box::new(drain),
    });
    // Pingora's runtimes are down; the checker's tasks already ended in the drain.
    control.shutdown_timeout(Duration::from_secs(1));
    // The lines of the last requests, not yet written by the log's writer.
    access_log.flush();
    Ok(())
}

/// The checker's runtime: one thread of its own, apart from Pingora's workers.
fn checker_runtime() -> Result<Runtime, StartError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("vigil-checker")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)
}

/// On the checker's runtime: the upgrade socket (a later process takes over from here),
/// SIGHUP, SIGUSR1 and SIGUSR2, `--watch`, and the watchdog. Returns what turns true
/// once a new process took over, and what ends the signal and watch tasks.
fn spawn_reload_and_upgrade_tasks(
    control: &Runtime,
    config: &Config,
    app: &Arc<App>,
    copies: Vec<(String, OwnedFd)>,
    opts: &RunOptions,
) -> Result<(watch::Receiver<bool>, watch::Sender<bool>), StartError> {
    let (handed_over, upgraded) = watch::channel(false);
    crate::process::upgrade::serve(
        control,
        &config.upgrade_socket,
        app.checker.clone(),
        copies,
        handed_over,
    );
    let (stop_watching, watching) = watch::channel(false);
    // `vigil demo` has no file a new process could start from.
    let relaunch = Relaunch::new(opts.config_path.is_some(), upgraded.clone());
    install_signal_handlers(control, app, relaunch, watching.clone())?;
    if opts.watch {
        spawn_watcher(control, app, watching);
    }
    let notifier = app.notifier.clone();
    crate::process::ready::spawn_watchdog(control, notifier, app.control.clone());
    Ok((upgraded, stop_watching))
}

/// Logs the start and sets the descriptor budget: clients never take the descriptors
/// the checks and the admin listener need.
fn announce_start(config: &Config, app: &App) {
    let backends = config.pools.iter().map(|p| p.backends.len()).sum::<usize>();
    tracing::info!(
        listeners = ?config.listeners.iter().map(|l| l.address).collect::<Vec<_>>(),
        admin = %config.admin.address,
        pools = config.pools.len(),
        backends,
        "vigil started"
    );
    let max_connections = config.listeners.iter().map(|l| l.max_connections).sum();
    crate::edge::descriptors::set_budget(backends, max_connections);
    pingora::services::listening::set_accept_errors(Box::new(
        crate::edge::descriptors::AcceptErrors::new(app.metrics.accept_errors.clone()),
    ));
}

/// Pingora's server, bootstrapped, with no service yet.
fn pingora_server(config: &Config) -> Server {
    let conf = ServerConf {
        threads: config.threads,
        // vigil drains before it hands shutdown to Pingora (see `Drain`): nothing is
        // left to wait for by then but the connections' own close.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        // Pingora counts attempts; our per-pool `retries` (at most 100) is the real limit.
        max_retries: 101,
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server
}

/// The proxy service on the listeners' sockets; it stops accepting when `accepting`
/// turns true (the start of a drain), and tells `started` when Pingora starts it.
fn add_proxy(
    server: &mut Server,
    config: &Config,
    app: &App,
    fds: Vec<(String, OwnedFd)>,
    accepting: ShutdownWatch,
    started: oneshot::Sender<()>,
) {
    let conf = &server.configuration;
    let proxy = pipeline(conf, config, app, false);
    // Plain listeners with `http2: true` hand connections that open with HTTP/2's
    // preface to a second instance set for h2c (see `ConnectionLimit::sniff_h2c`).
    let h2c = config
        .listeners
        .iter()
        .any(|l| l.http2 && l.tls.is_none())
        .then(|| pipeline(conf, config, app, true));
    let slots = config
        .listeners
        .iter()
        .map(|l| {
            let (open, refused) = app.metrics.listener(&l.address.to_string());
            let tls = app
                .tls
                .iter()
                .find(|(a, _)| *a == l.address)
                .map(|(_, t)| t.clone());
            Slot::new(l.address, l.max_connections, tls, l.http2, open, refused)
        })
        .collect();
    let proxy = Service::new(
        "vigil proxy".to_string(),
        ConnectionLimit::new(proxy, h2c, slots, app.plane.edge.clone()),
    );
    // No L4 buffers on any listener: rustls reads records into its own buffer, and a
    // 64 KiB L4 read buffer was most of what an idle TLS client cost (bench/RESULTS.md).
    let buffers = |_: usize| client_buffers();
    let proxy = PreBound::new(proxy, fds, buffers)
        .stopped_by(accepting)
        .announces(started);
    let proxy = match config.cpu_affinity {
        CpuAffinity::Auto => proxy.pinned(config.threads),
        CpuAffinity::Off => proxy,
    };
    server.add_service(proxy);
}

/// One instance of the proxy app: HTTP/1 takes vigil's own loop; HTTP/2 Pingora's
/// proxy (see `dataplane::pipeline`). `h2c`: the instance for plain connections that open with HTTP/2.
fn pipeline(conf: &Arc<ServerConf>, config: &Config, app: &App, h2c: bool) -> Pipeline {
    let mut proxy = pingora::proxy::http_proxy(
        conf,
        VigilProxy {
            plane: app.plane.clone(),
        },
    );
    let mut options = HttpServerOptions::default();
    options.head_limits = Some(app.plane.edge.clone());
    options.h2c = h2c;
    options.h2_idle_timeout = Some(config.http2.idle_timeout);
    proxy.server_options = Some(options);
    proxy.h2_options = Some(h2_options(&config.http2));
    let listeners = config.listeners.iter().map(|l| l.address).collect();
    Pipeline::new(app.plane.clone(), proxy, conf, listeners)
}

/// The admin service on its socket, one thread; it stops accepting when `accepting`
/// turns true (only after an upgrade, whose new process answers now), and tells
/// `started` when Pingora starts it.
fn add_admin(
    server: &mut Server,
    app: &Arc<App>,
    fds: Vec<(String, OwnedFd)>,
    accepting: ShutdownWatch,
    started: oneshot::Sender<()>,
) {
    // Admin heads are bounded as the proxy's are (`AdminHeadLimits`).
    let mut admin_http = HttpServer::new_app(AdminApp { app: app.clone() });
    let mut admin_options = HttpServerOptions::default();
    admin_options.head_limits = Some(Arc::new(crate::process::admin::AdminHeadLimits));
    admin_http.server_options = Some(admin_options);
    let mut admin = Service::new("vigil admin".to_string(), admin_http);
    admin.threads = Some(1);
    server.add_service(
        PreBound::new(admin, fds, |_| L4BufferSettings::default())
            .stopped_by(accepting)
            .announces(started),
    );
}

/// The HTTP/2 server settings of `http2` (h2 and h2c alike).
fn h2_options(http2: &vigil_conf::Http2Config) -> pingora::protocols::http::v2::server::H2Options {
    let mut b = pingora::protocols::http::v2::server::default_h2_options();
    b.max_concurrent_streams(http2.max_concurrent_streams)
        .max_header_list_size(http2.max_header_list_bytes)
        .initial_window_size(http2.initial_stream_window)
        .initial_connection_window_size(http2.initial_connection_window)
        .max_pending_accept_reset_streams(http2.max_pending_resets)
        .max_local_error_reset_streams(Some(http2.max_error_resets))
        // WebSockets over HTTP/2 (RFC 8441), carried to HTTP/1.1 backends as upgrades.
        .enable_connect_protocol()
        // Our patch on the h2 crate (third_party/README.md).
        .max_control_frames_per_second(
            http2.max_pings_per_second,
            http2.max_settings_per_second,
            http2.max_resets_per_second,
        );
    b
}

/// SIGHUP reloads, SIGUSR1 reopens the access log, SIGUSR2 starts the binary on disk to
/// take over, until `stopped` changes.
fn install_signal_handlers(
    rt: &tokio::runtime::Runtime,
    app: &Arc<App>,
    mut relaunch: Relaunch,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let _enter = rt.enter();
    let failed = |signal| move |source| StartError::Signal { signal, source };
    let mut hup = signal(SignalKind::hangup()).map_err(failed("SIGHUP"))?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(failed("SIGUSR1"))?;
    let mut usr2 = signal(SignalKind::user_defined2()).map_err(failed("SIGUSR2"))?;
    let a = app.clone();
    rt.spawn(async move {
        loop {
            tokio::select! {
                Some(()) = usr1.recv() => a.plane.access_log.reopen(),
                Some(()) = usr2.recv() => relaunch.start(),
                Some(()) = hup.recv() => {
                    let _ = a.control.reload().await;
                }
                _ = stopped.changed() => return,
                else => return,
            }
        }
    });
    Ok(())
}

/// `--watch`: reload when the config file, or a certificate, key or CA file it names,
/// changes (modification time or size).
fn spawn_watcher(rt: &tokio::runtime::Runtime, app: &Arc<App>, mut stopped: watch::Receiver<bool>) {
    let Some(path) = app.config_path.clone() else {
        return;
    };
    let app = app.clone();
    rt.spawn(async move {
        let stamp = |app: &App| {
            let mut files = vec![path.clone()];
            files.extend(crate::control::certs::files(&app.config()));
            files
                .iter()
                .map(|p| {
                    std::fs::metadata(p)
                        .ok()
                        .map(|m| (m.modified().ok(), m.len()))
                })
                .collect::<Vec<_>>()
        };
        let mut last = stamp(&app);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stopped.changed() => return,
            }
            let now = stamp(&app);
            // A file caught half-written (or gone) waits for the next look.
            if now != last && now[0].is_some() {
                let _ = app.control.reload().await;
                last = stamp(&app);
            }
        }
    });
}
