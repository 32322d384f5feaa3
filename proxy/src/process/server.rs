//! Config → running process: the checker's runtime, the Pingora server with the proxy
//! and admin services, and the signals (SIGHUP reload, SIGUSR1 reopen, SIGTERM drain).
//!
//! The checker runs on its own single-threaded runtime, apart from Pingora's worker
//! threads, so a proxy saturated with requests does not starve health checks.

use crate::dataplane::pipeline::Pipeline;
use crate::dataplane::proxy::VigilProxy;
use crate::edge::listener::{client_buffers, ConnectionLimit, Slot};
use crate::process::admin::AdminApp;
use crate::process::app::App;
pub use crate::process::error::StartError;
use crate::process::upgrade::Handoff;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::server::{ListenFds, RunArgs, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::listening::Service;
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use vigil_conf::{Config, CpuAffinity};

pub struct RunOptions {
    pub config_path: Option<PathBuf>,
    pub watch: bool,
    /// Take over the listening sockets (and backend health) of the vigil running on
    /// this config's `upgrade_socket`.
    pub upgrade: bool,
}

/// Binds `addrs` before Pingora starts, so a taken port is a clear error (exit 1) at
/// start, and every listener accepts connections (into its backlog) from this moment
/// on: once the admin answers, the proxy port is open too.
fn bind(
    addrs: &[SocketAddr],
    mut inherited: Option<&mut Handoff>,
) -> Result<Vec<(String, OwnedFd)>, StartError> {
    addrs
        .iter()
        .map(|&addr| {
            if let Some(fd) = inherited.as_mut().and_then(|h| h.take(&addr)) {
                return Ok((addr.to_string(), fd));
            }
            let listen = |source| StartError::Listen { addr, source };
            let listener = std::net::TcpListener::bind(addr).map_err(listen)?;
            // Pingora's tokio listener requires a non-blocking socket.
            listener.set_nonblocking(true).map_err(listen)?;
            Ok((addr.to_string(), OwnedFd::from(listener)))
        })
        .collect()
}

/// A Pingora listening service whose sockets vigil has already bound: they are put in
/// Pingora's listen-fd table under the address the service was given, where Pingora
/// looks before binding (the path it uses for inherited sockets on upgrade).
struct PreBound<S> {
    inner: S,
    fds: Vec<(String, OwnedFd)>,
    /// Stops the service instead of Pingora's own shutdown signal, when set.
    stopped_by: Option<ShutdownWatch>,
    /// Pin this many worker threads one per CPU before serving (`cpu_affinity: auto`).
    pin_workers: Option<usize>,
}

impl<A: ServerApp + Send + Sync + 'static> PreBound<Service<A>> {
    /// The service listens on exactly the addresses of `fds`, under the same keys, with
    /// `buffers(i)` for the connections of the i-th.
    fn new(
        mut inner: Service<A>,
        fds: Vec<(String, OwnedFd)>,
        buffers: impl Fn(usize) -> L4BufferSettings,
    ) -> Self {
        for (i, (addr, _)) in fds.iter().enumerate() {
            inner.add_listener(ListenerConfig::tcp(addr.as_str()).l4_buffer(buffers(i)));
        }
        PreBound {
            inner,
            fds,
            stopped_by: None,
            pin_workers: None,
        }
    }

    /// Before it serves, the service's `threads` worker threads are pinned one per CPU
    /// if there are as many CPUs (see `affinity`).
    fn pinned(mut self, threads: usize) -> Self {
        self.pin_workers = Some(threads);
        self
    }

    /// The service stops accepting when `watch` turns true rather than when Pingora
    /// shuts down: the proxy's listeners close at the start of a drain, not its end.
    fn stopped_by(mut self, watch: ShutdownWatch) -> Self {
        self.stopped_by = Some(watch);
        self
    }
}

#[async_trait::async_trait]
impl<S: ServiceWithDependents> ServiceWithDependents for PreBound<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        if let Some(table) = &fds {
            let mut table = table.lock();
            for (addr, fd) in self.fds.drain(..) {
                // Ownership passes to Pingora, which builds its listener from the fd.
                table.add(addr, fd.into_raw_fd());
            }
        }
        let shutdown = self.stopped_by.clone().unwrap_or(shutdown);
        if let Some(threads) = self.pin_workers {
            pin_workers(self.inner.name(), threads).await;
        }
        self.inner
            .start_service(fds, shutdown, listeners_per_fd, ready_notifier)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

/// Runs until a signal ends the process: SIGTERM (or SIGQUIT) drains, SIGINT stops at
/// once. Returns after Pingora's runtimes and the checker's have stopped.
pub fn run(
    config: Config,
    opts: RunOptions,
    before_start: impl FnOnce(&tokio::runtime::Handle),
) -> Result<(), StartError> {
    let addresses: Vec<SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
    let mut handoff = match opts.upgrade {
        true => Some(crate::process::upgrade::take_over(&config.upgrade_socket)?),
        false => None,
    };
    let proxy_fds = bind(&addresses, handoff.as_mut())?;
    let admin_fds = bind(&[config.admin.address], handoff.as_mut())?;
    // Copies for the next upgrade: the sockets Pingora will own are handed on from here.
    let copies = proxy_fds
        .iter()
        .chain(&admin_fds)
        .map(|(a, fd)| {
            let copy = fd.try_clone().map_err(|source| StartError::Listen {
                addr: a.parse().unwrap_or(config.admin.address),
                source,
            })?;
            Ok((a.clone(), copy))
        })
        .collect::<Result<Vec<_>, StartError>>()?;
    vigil_healthcheck::raise_fd_limit();
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("vigil-checker")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    before_start(control.handle());

    let app = App::start(
        config.clone(),
        opts.config_path.clone(),
        control.handle().clone(),
        handoff
            .as_mut()
            .map(|h| std::mem::take(&mut h.backends))
            .unwrap_or_default(),
    )?;
    let (handed_over, upgraded) = watch::channel(false);
    crate::process::upgrade::serve(
        &control,
        &config.upgrade_socket,
        app.checker.clone(),
        copies,
        handed_over,
    );
    let (stop_watching, watching) = watch::channel(false);
    install_signal_handlers(&control, &app, watching.clone())?;
    if opts.watch {
        spawn_watcher(&control, &app, watching);
    }
    if let Some(h) = handoff {
        let from = h.from_pid;
        // The sockets are ours as well now: connections wait in their backlog until
        // Pingora accepts them, however the old process's last accepts and ours interleave.
        if let Err(e) = h.ready() {
            tracing::warn!(error = %e, "could not tell the old process we are ready; it keeps serving too");
        } else {
            tracing::info!(
                from_pid = from,
                "took over the listening sockets and backend health"
            );
        }
    }
    let backends = config.pools.iter().map(|p| p.backends.len()).sum::<usize>();
    tracing::info!(
        listeners = ?addresses,
        admin = %config.admin.address,
        pools = config.pools.len(),
        backends,
        "vigil started"
    );
    // Clients never take the descriptors the checks and the admin listener need.
    let max_connections = config.listeners.iter().map(|l| l.max_connections).sum();
    crate::edge::descriptors::set_budget(backends, max_connections);
    pingora::services::listening::set_accept_errors(Box::new(
        crate::edge::descriptors::AcceptErrors::new(app.metrics.accept_errors.clone()),
    ));

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
    // HTTP/1 takes vigil's own loop; HTTP/2 Pingora's proxy (see `fast`).
    let proxy_app = |h2c: bool| {
        let mut proxy = pingora::proxy::http_proxy(
            &server.configuration,
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
        Pipeline::new(app.plane.clone(), proxy, &server.configuration, listeners)
    };
    let proxy = proxy_app(false);
    // Plain listeners with `http2: true` hand connections that open with HTTP/2's
    // preface to a second instance set for h2c (see `ConnectionLimit::sniff_h2c`).
    let h2c = config
        .listeners
        .iter()
        .any(|l| l.http2 && l.tls.is_none())
        .then(|| proxy_app(true));
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
    // Admin heads are bounded as the proxy's are (`AdminHeadLimits`).
    let mut admin_http =
        pingora::apps::http_app::HttpServer::new_app(AdminApp { app: app.clone() });
    let mut admin_options = HttpServerOptions::default();
    admin_options.head_limits = Some(Arc::new(crate::process::admin::AdminHeadLimits));
    admin_http.server_options = Some(admin_options);
    let mut admin = Service::new("vigil admin".to_string(), admin_http);
    admin.threads = Some(1);
    let (stop_accepting, accepting) = watch::channel(false);
    // No L4 buffers on any listener: rustls reads records into its own buffer, and a
    // 64 KiB L4 read buffer was most of what an idle TLS client cost (bench/RESULTS.md).
    let buffers = |_: usize| client_buffers();
    let proxy = PreBound::new(proxy, proxy_fds, buffers).stopped_by(accepting);
    let proxy = match config.cpu_affinity {
        CpuAffinity::Auto => proxy.pinned(config.threads),
        CpuAffinity::Off => proxy,
    };
    server.add_service(proxy);
    let (stop_admin, admin_accepting) = watch::channel(false);
    server.add_service(
        PreBound::new(admin, admin_fds, |_| L4BufferSettings::default())
            .stopped_by(admin_accepting),
    );
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

/// The HTTP/2 server settings of `http2` (h2 and h2c alike).
fn h2_options(http2: &vigil_conf::Http2Config) -> pingora::protocols::http::v2::server::H2Options {
    let mut b = pingora::protocols::http::v2::server::default_h2_options();
    b.max_concurrent_streams(http2.max_concurrent_streams)
        .max_header_list_size(http2.max_header_list_bytes)
        .initial_window_size(http2.initial_stream_window)
        .initial_connection_window_size(http2.initial_connection_window)
        .max_pending_accept_reset_streams(http2.max_pending_resets)
        .max_local_error_reset_streams(Some(http2.max_error_resets))
        // Our patch on the h2 crate (third_party/README.md).
        .max_control_frames_per_second(
            http2.max_pings_per_second,
            http2.max_settings_per_second,
            http2.max_resets_per_second,
        );
    b
}

/// Pins the worker threads called `name` (see `affinity`). Pingora has created them
/// by the time a service starts, but a new thread names itself once it runs, so they
/// are looked for again for up to a second.
async fn pin_workers(name: &str, threads: usize) {
    use crate::process::affinity::Pinning;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match crate::process::affinity::pin_workers(name, threads) {
            Ok(Pinning::Pinned(cpus)) => {
                tracing::info!(
                    ?cpus,
                    "proxy worker threads pinned one per CPU (cpu_affinity: auto)"
                );
                return;
            }
            Ok(Pinning::Mismatch { threads, cpus }) => {
                tracing::debug!(threads, cpus, "proxy worker threads left to the kernel");
                return;
            }
            Ok(Pinning::NotFound { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(Pinning::NotFound { found }) => {
                tracing::warn!(
                    found,
                    threads,
                    "proxy worker threads left unpinned: not all of them were found"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "proxy worker threads left unpinned");
                return;
            }
        }
    }
}

fn install_signal_handlers(
    rt: &tokio::runtime::Runtime,
    app: &Arc<App>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let _enter = rt.enter();
    let failed = |signal| move |source| StartError::Signal { signal, source };
    let mut hup = signal(SignalKind::hangup()).map_err(failed("SIGHUP"))?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(failed("SIGUSR1"))?;
    let a = app.clone();
    rt.spawn(async move {
        loop {
            tokio::select! {
                Some(()) = usr1.recv() => a.plane.access_log.reopen(),
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

/// The shutdown Pingora waits for. SIGTERM (and SIGQUIT, until upgrades land) drain:
/// the proxy listeners close and keep-alive connections end after their request,
/// in-flight requests and tunnels are awaited (at most `grace_period`), the checker's
/// tasks and the file watcher end; only then does Pingora stop its runtimes. SIGINT
/// stops at once.
struct Drain {
    app: Arc<App>,
    /// Turns true when a new process took over the sockets (`vigil run --upgrade`).
    upgraded: watch::Receiver<bool>,
    /// Stops the admin listener: only after an upgrade, whose new process answers now.
    stop_admin: watch::Sender<bool>,
    grace: Duration,
    stop_accepting: watch::Sender<bool>,
    stop_watching: watch::Sender<bool>,
}

#[async_trait::async_trait]
impl ShutdownSignalWatch for Drain {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot handle SIGTERM/SIGQUIT/SIGINT; stopping");
            return ShutdownSignal::FastShutdown;
        };
        let mut upgraded = self.upgraded.clone();
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = quit.recv() => "SIGQUIT",
            _ = handed_over(&mut upgraded) => {
                let _ = self.stop_admin.send(true);
                "upgrade"
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now");
                let _ = self.stop_watching.send(true);
                self.stop_listeners();
                return ShutdownSignal::FastShutdown;
            }
        };
        let app = &self.app;
        app.plane.draining.start();
        tracing::info!(signal = name, in_flight = app.plane.in_flight.get(), grace_period = ?self.grace, "draining");
        let _ = self.stop_accepting.send(true);
        let _ = self.stop_watching.send(true);
        let deadline = Instant::now() + self.grace;
        let drained = tokio::select! {
            _ = settled(app) => true,
            _ = sleep_until(deadline) => false,
            _ = int.recv() => false,
        };
        if drained {
            tracing::info!("drained: every request finished; exiting");
        } else {
            tracing::warn!(
                in_flight = app.plane.in_flight.get(),
                "grace period over; exiting with requests in flight"
            );
        }
        if !app.checker.shutdown(Duration::from_secs(1)).await {
            tracing::warn!(
                tasks = app.checker.tasks_alive(),
                "health check tasks did not end within 1s"
            );
        }
        self.stop_listeners();
        ShutdownSignal::GracefulTerminate
    }
}

impl Drain {
    /// Tells every listener to stop, so none sees its signal's channel simply close
    /// (Pingora logs that as an error) when this is dropped.
    fn stop_listeners(&self) {
        let _ = self.stop_accepting.send(true);
        let _ = self.stop_admin.send(true);
    }
}

/// Returns when a new process has taken over the sockets; never if none does.
async fn handed_over(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|u| *u).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Returns once no request has been in flight for a little while: a connection
/// accepted just before the listeners closed may still be reading its request head.
async fn settled(app: &App) {
    const SETTLE: Duration = Duration::from_millis(250);
    loop {
        app.plane.in_flight.idle().await;
        tokio::time::sleep(SETTLE).await;
        if app.plane.in_flight.get() == 0 {
            return;
        }
    }
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
