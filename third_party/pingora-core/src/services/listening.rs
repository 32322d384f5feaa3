// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! The listening service
//!
//! A [Service] (listening service) responds to incoming requests on its endpoints.
//! Each [Service] can be configured with custom application logic (e.g. an `HTTPProxy`) and one or
//! more endpoints to listen to.

use crate::apps::ServerApp;
use crate::listeners::tls::TlsSettings;
#[cfg(feature = "connection_filter")]
use crate::listeners::AcceptAllFilter;
use crate::listeners::{
    ConnectionFilter, ListenerConfig, Listeners, ServerAddress, TcpSocketOptions, TransportStack,
    UninitializedStream,
};
use crate::protocols::Stream;
#[cfg(unix)]
use crate::server::ListenFds;
use crate::server::{RuntimeOpts, ShutdownWatch};
use crate::services::Service as ServiceTrait;

use async_trait::async_trait;
use log::{debug, error, info};
use pingora_error::Result;
use pingora_runtime::current_handle;
use pingora_timeout::timeout;
use std::fs::Permissions;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The worker threads serving a service's connections, each with its number of open
/// connections (vigil patch 8). Pingora spawns every accepted connection on a random
/// worker thread of its no-steal runtime, so that at two threads one of them often
/// serves several more connections than the other, and its requests wait behind
/// theirs; HAProxy hands each new connection to its least loaded thread. A connection
/// landing on a thread that has more open connections than another is moved there
/// before its handshake. Threads register themselves the first time a connection lands
/// on them.
#[derive(Default)]
struct Spread {
    threads: std::sync::RwLock<Vec<SpreadThread>>,
}

struct SpreadThread {
    id: std::thread::ThreadId,
    handle: tokio::runtime::Handle,
    open: Arc<AtomicUsize>,
}

/// A connection counted open on its thread until dropped.
struct OpenHere(Arc<AtomicUsize>);

impl Drop for OpenHere {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Spread {
    /// This thread's count of open connections, the thread registered if new.
    fn here(&self) -> Arc<AtomicUsize> {
        let id = std::thread::current().id();
        let find = |threads: &[SpreadThread]| {
            threads.iter().find(|t| t.id == id).map(|t| t.open.clone())
        };
        if let Some(open) = find(&self.threads.read().unwrap()) {
            return open;
        }
        let mut threads = self.threads.write().unwrap();
        if let Some(open) = find(&threads) {
            return open;
        }
        let open = Arc::new(AtomicUsize::new(0));
        threads.push(SpreadThread {
            id,
            handle: tokio::runtime::Handle::current(),
            open: open.clone(),
        });
        open
    }

    /// The runtime of the thread with the fewest open connections, if that is fewer
    /// than this thread's.
    fn less_loaded(&self) -> Option<tokio::runtime::Handle> {
        let mine = self.here().load(Ordering::Relaxed);
        let threads = self.threads.read().unwrap();
        let least = threads
            .iter()
            .min_by_key(|t| t.open.load(Ordering::Relaxed))?;
        (least.open.load(Ordering::Relaxed) < mine).then(|| least.handle.clone())
    }

    fn open_here(&self) -> OpenHere {
        let open = self.here();
        open.fetch_add(1, Ordering::Relaxed);
        OpenHere(open)
    }
}

/// Override the runtime options used to run a listening service.
pub type RuntimeOptsOverride = Arc<dyn Fn(&RuntimeOpts) -> Option<RuntimeOpts> + Send + Sync>;

/// The type of service that is associated with a list of listening endpoints and a particular application
pub struct Service<A> {
    name: String,
    listeners: Listeners,
    app_logic: Option<A>,
    /// The number of preferred threads. `None` to follow global setting.
    pub threads: Option<usize>,
    runtime_opts_override: Option<RuntimeOptsOverride>,
    #[cfg(feature = "connection_filter")]
    connection_filter: Arc<dyn ConnectionFilter>,
}

impl<A> Service<A> {
    /// Create a new [`Service`] with the given application (see [`crate::apps`]).
    pub fn new(name: String, app_logic: A) -> Self {
        Service {
            name,
            listeners: Listeners::new(),
            app_logic: Some(app_logic),
            threads: None,
            runtime_opts_override: None,
            #[cfg(feature = "connection_filter")]
            connection_filter: Arc::new(AcceptAllFilter),
        }
    }

    /// Create a new [`Service`] with the given application (see [`crate::apps`]) and the given
    /// [`Listeners`].
    pub fn with_listeners(name: String, listeners: Listeners, app_logic: A) -> Self {
        Service {
            name,
            listeners,
            app_logic: Some(app_logic),
            threads: None,
            runtime_opts_override: None,
            #[cfg(feature = "connection_filter")]
            connection_filter: Arc::new(AcceptAllFilter),
        }
    }

    /// Set a runtime options override for this service.
    ///
    /// Returning [`None`] from the override uses the global runtime options.
    pub fn set_runtime_opts_override(&mut self, override_fn: RuntimeOptsOverride) {
        self.runtime_opts_override = Some(override_fn);
    }

    /// Set a custom connection filter for this service.
    ///
    /// The connection filter will be applied to all incoming connections
    /// on all endpoints of this service. Connections that don't pass the
    /// filter will be dropped immediately at the TCP level, before TLS
    /// handshake or any HTTP processing.
    ///
    /// # Feature Flag
    ///
    /// This method requires the `connection_filter` feature to be enabled.
    /// When the feature is disabled, this method is a no-op.
    ///
    /// # Example
    ///
    /// ```rust,no_run
    /// # use std::sync::Arc;
    /// # use pingora_core::listeners::{ConnectionFilter, AcceptAllFilter};
    /// # struct MyService;
    /// # impl MyService {
    /// #   fn new() -> Self { MyService }
    /// # }
    /// let mut service = MyService::new();
    /// let filter = Arc::new(AcceptAllFilter);
    /// service.set_connection_filter(filter);
    /// ```
    #[cfg(feature = "connection_filter")]
    pub fn set_connection_filter(&mut self, filter: Arc<dyn ConnectionFilter>) {
        self.connection_filter = filter.clone();
        self.listeners.set_connection_filter(filter);
    }

    #[cfg(not(feature = "connection_filter"))]
    pub fn set_connection_filter(&mut self, _filter: Arc<dyn ConnectionFilter>) {}

    /// Get the [`Listeners`], mostly to add more endpoints.
    pub fn endpoints(&mut self) -> &mut Listeners {
        &mut self.listeners
    }

    // the follow add* function has no effect if the server is already started

    /// Add a TCP listening endpoint with the given address (e.g., `127.0.0.1:8000`).
    pub fn add_tcp(&mut self, addr: &str) {
        self.listeners.add_tcp(addr);
    }

    /// Add a listening endpoint configured by a [`ListenerConfig`].
    pub fn add_listener(&mut self, endpoint: ListenerConfig) {
        self.listeners.add_listener(endpoint);
    }

    /// Add a TCP listening endpoint with the given [`TcpSocketOptions`].
    pub fn add_tcp_with_settings(&mut self, addr: &str, sock_opt: TcpSocketOptions) {
        self.listeners.add_tcp_with_settings(addr, sock_opt);
    }

    /// Add a Unix domain socket listening endpoint with the given path.
    ///
    /// Optionally take a permission of the socket file. The default is read and write access for
    /// everyone (0o666).
    #[cfg(unix)]
    pub fn add_uds(&mut self, addr: &str, perm: Option<Permissions>) {
        self.listeners.add_uds(addr, perm);
    }

    /// Add a TLS listening endpoint with the given certificate and key paths.
    pub fn add_tls(&mut self, addr: &str, cert_path: &str, key_path: &str) -> Result<()> {
        self.listeners.add_tls(addr, cert_path, key_path)
    }

    /// Add a TLS listening endpoint with the given [`TlsSettings`] and [`TcpSocketOptions`].
    pub fn add_tls_with_settings(
        &mut self,
        addr: &str,
        sock_opt: Option<TcpSocketOptions>,
        settings: TlsSettings,
    ) {
        self.listeners
            .add_tls_with_settings(addr, sock_opt, settings)
    }

    /// Add an endpoint according to the given [`ServerAddress`]
    pub fn add_address(&mut self, addr: ServerAddress) {
        self.listeners.add_address(addr);
    }

    /// Get a reference to the application inside this service
    pub fn app_logic(&self) -> Option<&A> {
        self.app_logic.as_ref()
    }

    /// Get a mutable reference to the application inside this service
    pub fn app_logic_mut(&mut self) -> Option<&mut A> {
        self.app_logic.as_mut()
    }
}

/// What the accept loop does with a failed `accept()` (vigil patch 14): without a hook
/// set, an ERROR line per failure, as upstream.
pub trait AcceptErrors: Send + Sync {
    /// `accept()` on `listener` failed with `e`.
    fn failed(&self, listener: &str, e: &std::io::Error);
    /// `accept()` on `listener` succeeded after failing: true when the episode is over
    /// (the loop asks again at each success until it is).
    fn recovered(&self, listener: &str) -> bool;
}

static ACCEPT_ERRORS: std::sync::OnceLock<Box<dyn AcceptErrors>> = std::sync::OnceLock::new();

/// Sets the process's [`AcceptErrors`] hook (once; later calls are ignored).
pub fn set_accept_errors(hook: Box<dyn AcceptErrors>) {
    let _ = ACCEPT_ERRORS.set(hook);
}

impl<A: ServerApp + Send + Sync + 'static> Service<A> {
    pub async fn handle_event(event: Stream, app_logic: Arc<A>, shutdown: ShutdownWatch) {
        debug!("new event!");
        let mut reuse_event = app_logic.process_new(event, &shutdown).await;
        while let Some(event) = reuse_event {
            // TODO: with no steal runtime, consider spawn() the next event on
            // another thread for more evenly load balancing
            debug!("new reusable event!");
            reuse_event = app_logic.process_new(event, &shutdown).await;
        }
    }

    /// An accepted connection, on the thread that serves it: its handshake, then its
    /// requests; counted open on this thread meanwhile.
    async fn serve_accepted(
        io: Box<UninitializedStream>,
        app: Arc<A>,
        shutdown: ShutdownWatch,
        spread: Arc<Spread>,
    ) {
        let _open = spread.open_here();
        // Boxed, in a statement of its own, so that the connection's task, kept while
        // it is open, keeps no room for the handshake's state (vigil patch 8).
        let handshake = Box::pin(Self::handshake_accepted(io));
        if let Some(io) = handshake.await {
            Self::handle_event(io, app, shutdown).await
        }
    }

    async fn handshake_accepted(io: Box<UninitializedStream>) -> Option<Stream> {
        let peer_addr = io.peer_addr();
        match timeout(Duration::from_secs(60), io.handshake()).await {
            Ok(Ok(io)) => Some(io),
            Ok(Err(e)) => {
                // TODO: Maybe IOApp trait needs a fn to handle/filter out this error
                if let Some(addr) = peer_addr {
                    error!("Downstream handshake error from {}: {e}", addr);
                } else {
                    error!("Downstream handshake error: {e}");
                }
                None
            }
            Err(_) => {
                error!("Downstream handshake timeout");
                None
            }
        }
    }

    async fn run_endpoint(
        app_logic: Arc<A>,
        mut stack: TransportStack,
        mut shutdown: ShutdownWatch,
        spread: Arc<Spread>,
    ) {
        // The last accept() failed (vigil patch 14).
        let mut failing = false;
        // the accept loop, until the system is shutting down
        loop {
            let new_io = tokio::select! { // TODO: consider biased for perf reason?
                new_io = stack.accept() => new_io,
                shutdown_signal = shutdown.changed() => {
                    match shutdown_signal {
                        Ok(()) => {
                            if !*shutdown.borrow() {
                                // happen in the initial read
                                continue;
                            }
                            info!("Shutting down {}", stack.as_str());
                            break;
                        }
                        Err(e) => {
                            error!("shutdown_signal error {e}");
                            break;
                        }
                    }
                }
            };
            match new_io {
                Ok(io) => {
                    if failing {
                        failing = !ACCEPT_ERRORS
                            .get()
                            .is_none_or(|hook| hook.recovered(stack.as_str()));
                    }
                    // Boxed: the task of a connection keeps what it captured for as long
                    // as the connection is open (vigil patch 8).
                    let io = Box::new(io);
                    let app = app_logic.clone();
                    let shutdown = shutdown.clone();
                    let spread = spread.clone();
                    current_handle().spawn(async move {
                        // Served by the thread with the fewest open connections
                        // (vigil patch 8): moved there when this one has more.
                        match spread.less_loaded() {
                            Some(there) => {
                                there.spawn(Self::serve_accepted(io, app, shutdown, spread));
                            }
                            None => Self::serve_accepted(io, app, shutdown, spread).await,
                        }
                    });
                }
                Err(e) => {
                    let io_error = e.root_cause().downcast_ref::<std::io::Error>();
                    // vigil patch 14: handed to the hook (counted, one line per
                    // episode) instead of an ERROR line per failed accept().
                    match (ACCEPT_ERRORS.get(), io_error) {
                        (Some(hook), Some(io_error)) => hook.failed(stack.as_str(), io_error),
                        _ => error!("Accept() failed {e}"),
                    }
                    failing = true;
                    // Out of descriptors (EMFILE, ENFILE) or memory (ENOBUFS, ENOMEM):
                    // accept() fails again at once until something is freed, so wait a
                    // moment instead of spinning (vigil patch 14: 100 ms, not 1 s, and
                    // for all four).
                    if matches!(
                        io_error.and_then(|e| e.raw_os_error()),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        }

        stack.cleanup();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServiceTrait for Service<A> {
    async fn start_service(
        &mut self,
        #[cfg(unix)] fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let runtime = current_handle();
        let endpoints = self
            .listeners
            .build(
                #[cfg(unix)]
                fds,
            )
            .await
            .expect("Failed to build listeners");

        let app_logic = self
            .app_logic
            .take()
            .expect("can only start_service() once");
        let app_logic = Arc::new(app_logic);

        let mut handlers = Vec::new();
        let spread = Arc::new(Spread::default());

        endpoints.into_iter().for_each(|endpoint| {
            for _ in 0..listeners_per_fd {
                let shutdown = shutdown.clone();
                let my_app_logic = app_logic.clone();
                let endpoint = endpoint.clone();
                let spread = spread.clone();

                let jh = runtime.spawn(async move {
                    Self::run_endpoint(my_app_logic, endpoint, shutdown, spread).await;
                });

                handlers.push(jh);
            }
        });

        futures::future::join_all(handlers).await;
        self.listeners.cleanup();
        app_logic.cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        self.threads
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.runtime_opts_override
            .as_ref()
            .and_then(|override_fn| override_fn(global))
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.listeners.addresses())
    }
}
