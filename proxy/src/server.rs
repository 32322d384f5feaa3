//! Config → running process: the checker's runtime, the Pingora server with the proxy
//! and admin services, and the signals (SIGHUP reload, SIGTERM drain).
//!
//! The checker runs on its own single-threaded runtime, apart from Pingora's worker
//! threads, so a proxy saturated with requests does not starve health checks.

use crate::admin::AdminApp;
use crate::app::App;
use crate::listener::{plain_buffers, ConnectionLimit, Slot};
use crate::proxy::VigilProxy;
use anyhow::Context;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::listening::Service;
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use vigil_conf::Config;

pub struct RunOptions {
    pub config_path: Option<PathBuf>,
    pub watch: bool,
}

/// Binds `addrs` before Pingora starts, so a taken port is a clear error (exit 1) at
/// start, and every listener accepts connections (into its backlog) from this moment
/// on: once the admin answers, the proxy port is open too.
fn bind(addrs: &[SocketAddr]) -> anyhow::Result<Vec<(String, OwnedFd)>> {
    addrs
        .iter()
        .map(|addr| {
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr}"))?;
            // Pingora's tokio listener requires a non-blocking socket.
            listener
                .set_nonblocking(true)
                .with_context(|| format!("cannot listen on {addr}"))?;
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
}

impl<A: ServerApp + Send + Sync + 'static> PreBound<Service<A>> {
    /// The service listens on exactly the addresses of `fds`, under the same keys, with
    /// `buffers` for each connection.
    fn new(mut inner: Service<A>, fds: Vec<(String, OwnedFd)>, buffers: L4BufferSettings) -> Self {
        for (addr, _) in &fds {
            inner.add_listener(ListenerConfig::tcp(addr.as_str()).l4_buffer(buffers));
        }
        PreBound { inner, fds }
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

/// Runs until a signal ends the process; never returns on success.
pub fn run(
    config: Config,
    opts: RunOptions,
    before_start: impl FnOnce(&tokio::runtime::Handle),
) -> anyhow::Result<()> {
    let addresses: Vec<SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
    let proxy_fds = bind(&addresses)?;
    let admin_fds = bind(&[config.admin.address])?;
    vigil_healthcheck::raise_fd_limit();
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("vigil-checker")
        .enable_all()
        .build()
        .context("cannot start the checker runtime")?;
    before_start(control.handle());

    let app = App::start(
        config.clone(),
        opts.config_path.clone(),
        control.handle().clone(),
    )?;
    install_signal_handlers(&control, &app, config.grace_period)?;
    if opts.watch {
        spawn_watcher(&control, &app);
    }
    tracing::info!(
        listeners = ?addresses,
        admin = %config.admin.address,
        pools = config.pools.len(),
        backends = config.pools.iter().map(|p| p.backends.len()).sum::<usize>(),
        "vigil started"
    );

    let conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(config.grace_period.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        // Pingora counts attempts; our per-pool `retries` (at most 100) is the real limit.
        max_retries: 101,
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy =
        pingora::proxy::http_proxy(&server.configuration, VigilProxy { app: app.clone() });
    let mut options = HttpServerOptions::default();
    options.head_limits = Some(app.edge.clone());
    proxy.server_options = Some(options);
    let slots = config
        .listeners
        .iter()
        .map(|l| {
            let (open, refused) = app.metrics.listener(&l.address.to_string());
            Slot::new(l.address, l.max_connections, open, refused)
        })
        .collect();
    let proxy = Service::new(
        "vigil proxy".to_string(),
        ConnectionLimit::new(proxy, slots),
    );
    let mut admin = Service::new("vigil admin".to_string(), AdminApp { app: app.clone() });
    admin.threads = Some(1);
    server.add_service(PreBound::new(proxy, proxy_fds, plain_buffers()));
    server.add_service(PreBound::new(admin, admin_fds, L4BufferSettings::default()));
    // The checker runtime must outlive the server; run_forever exits the process.
    std::mem::forget(control);
    server.run_forever();
}

fn install_signal_handlers(
    rt: &tokio::runtime::Runtime,
    app: &Arc<App>,
    grace: Duration,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let _enter = rt.enter();
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    let a = app.clone();
    rt.spawn(async move {
        while usr1.recv().await.is_some() {
            a.access_log.reopen();
        }
    });
    let a = app.clone();
    rt.spawn(async move {
        while hup.recv().await.is_some() {
            let _ = a.reload_off_thread().await;
        }
    });
    let a = app.clone();
    rt.spawn(async move {
        if term.recv().await.is_none() {
            return;
        }
        drain(a, grace).await;
    });
    Ok(())
}

/// Pingora stops accepting on SIGTERM and then waits the whole grace period. We exit
/// as soon as no request is in flight (or the grace period is over), so a deploy
/// does not wait for nothing.
async fn drain(app: Arc<App>, grace: Duration) {
    app.draining.store(true, Ordering::SeqCst);
    tracing::info!(in_flight = app.in_flight.load(Ordering::SeqCst), grace_period = ?grace, "SIGTERM: draining");
    let deadline = Instant::now() + grace;
    // A connection accepted just before the listeners closed may still be reading
    // its request head: zero must hold for a little while before it counts.
    let settle = Duration::from_millis(250);
    let mut idle_since: Option<Instant> = None;
    while Instant::now() < deadline {
        if app.in_flight.load(Ordering::SeqCst) == 0 {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= settle {
                tracing::info!("drained: every request finished; exiting");
                std::process::exit(0);
            }
        } else {
            idle_since = None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(
        in_flight = app.in_flight.load(Ordering::SeqCst),
        "grace period over; exiting with requests in flight"
    );
    std::process::exit(0);
}

/// `--watch`: reload when the file's modification time or size changes.
fn spawn_watcher(rt: &tokio::runtime::Runtime, app: &Arc<App>) {
    let Some(path) = app.config_path.clone() else {
        return;
    };
    let app = app.clone();
    rt.spawn(async move {
        let stamp = |p: &PathBuf| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let mut last = stamp(&path);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = stamp(&path);
            if now != last && now.is_some() {
                last = now;
                let _ = app.reload_off_thread().await;
            }
        }
    });
}
