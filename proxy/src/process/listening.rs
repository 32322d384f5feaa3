//! The listening sockets: bound (or taken over from the old process) before Pingora
//! starts, so a taken port is a clear error at start, and handed to Pingora's services.

use crate::process::error::StartError;
use crate::process::upgrade::Handoff;
use pingora::apps::ServerApp;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::listening::Service;
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use vigil_conf::Config;

/// The proxy's and the admin's sockets, by address, and copies of them all for the
/// next upgrade.
pub(super) struct Sockets {
    pub proxy: Vec<(String, OwnedFd)>,
    pub admin: Vec<(String, OwnedFd)>,
    pub copies: Vec<(String, OwnedFd)>,
}

impl Sockets {
    /// Every listener's and the admin's socket: taken from `handoff` when the old
    /// process holds it, bound otherwise.
    pub fn bind(config: &Config, mut handoff: Option<&mut Handoff>) -> Result<Self, StartError> {
        let addresses: Vec<SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
        let proxy = bind(&addresses, handoff.as_deref_mut())?;
        let admin = bind(&[config.admin.address], handoff)?;
        // Copies for the next upgrade: the sockets Pingora will own are handed on from here.
        let copies = proxy
            .iter()
            .chain(&admin)
            .map(|(a, fd)| {
                let copy = fd.try_clone().map_err(|source| StartError::Listen {
                    addr: a.parse().unwrap_or(config.admin.address),
                    source,
                })?;
                Ok((a.clone(), copy))
            })
            .collect::<Result<Vec<_>, StartError>>()?;
        Ok(Sockets {
            proxy,
            admin,
            copies,
        })
    }
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
pub(super) struct PreBound<S> {
    inner: S,
    fds: Vec<(String, OwnedFd)>,
    /// Stops the service instead of Pingora's own shutdown signal, when set.
    stopped_by: Option<ShutdownWatch>,
    /// Pin this many worker threads one per CPU before serving (`cpu_affinity: auto`).
    pin_workers: Option<usize>,
    /// Told when Pingora starts the service on its sockets (readiness waits for it).
    started: Option<oneshot::Sender<()>>,
}

impl<A: ServerApp + Send + Sync + 'static> PreBound<Service<A>> {
    /// The service listens on exactly the addresses of `fds`, under the same keys, with
    /// `buffers(i)` for the connections of the i-th.
    pub fn new(
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
            started: None,
        }
    }

    /// Before it serves, the service's `threads` worker threads are pinned one per CPU
    /// if there are as many CPUs (see `affinity`).
    pub fn pinned(mut self, threads: usize) -> Self {
        self.pin_workers = Some(threads);
        self
    }

    /// The service stops accepting when `watch` turns true rather than when Pingora
    /// shuts down: the proxy's listeners close at the start of a drain, not its end.
    pub fn stopped_by(mut self, watch: ShutdownWatch) -> Self {
        self.stopped_by = Some(watch);
        self
    }

    /// `started` is told when Pingora starts the service.
    pub fn announces(mut self, started: oneshot::Sender<()>) -> Self {
        self.started = Some(started);
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
        // Pingora builds its listeners from the sockets now and accepts: a connection
        // that came before waits in the backlog.
        if let Some(started) = self.started.take() {
            let _ = started.send(());
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
