//! What is in force, and the one task that changes it.
//!
//! Reloads (the file, SIGHUP, `POST /admin/reload`, `--watch`), discovered backends,
//! fleet results and admin states reach the control task as [`Command`]s on one
//! channel, each answered on a oneshot; it applies them in order through the one apply
//! path ([`apply`]), so two changes never interleave. The request path only reads the
//! snapshots it stores ([`DataPlane`](crate::dataplane::DataPlane)); the admin page
//! and the fleet read the configuration in force without a lock ([`InForce::config`]).
//! Each reload is told to systemd (`RELOADING=1`, then `READY=1`) around its apply.

pub mod apply;
pub mod certs;
pub mod convert;
pub mod discovery;
pub mod error;
pub mod fleet;

use crate::dataplane::routing::RoutingTable;
use crate::dataplane::upstream_tls::PoolTls;
use crate::dataplane::DataPlane;
use crate::observe::metrics::ProxyMetrics;
use crate::observe::systemd::{Notifier, Summary};
use apply::{Changes, Controller};
use arc_swap::ArcSwap;
use error::ApplyError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use vigil_conf::{BackendConfig, Config};
use vigil_healthcheck::{AdminState, Health, Membership, Publish};

/// The configuration in force and the checker's last membership, and the routing
/// snapshot built from both, rebuilt whenever either changes: by the control task for
/// a new configuration, by the checker's publisher for a new membership. Only those
/// two take `sources`; the request path, the admin page and the fleet never do.
pub struct InForce {
    config: ArcSwap<Config>,
    sources: Mutex<Sources>,
    plane: Arc<DataPlane>,
    metrics: Arc<ProxyMetrics>,
}

/// What the routing snapshot is built from, besides the configuration in force.
struct Sources {
    /// Each pool's HTTPS settings, read from the files `config` names.
    tls: Arc<HashMap<String, Arc<PoolTls>>>,
    membership: Arc<Membership>,
}

impl InForce {
    pub fn new(config: Arc<Config>, plane: Arc<DataPlane>, metrics: Arc<ProxyMetrics>) -> Self {
        InForce {
            config: ArcSwap::new(config),
            sources: Mutex::new(Sources {
                tls: Arc::default(),
                membership: Arc::default(),
            }),
            plane,
            metrics,
        }
    }

    /// The configuration in force (with discovered backends merged in).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The routing snapshot in numbers, for systemd's `STATUS=` line.
    pub fn summary(&self) -> Summary {
        let table = self.plane.table();
        let mut s = Summary {
            pools: table.pools.len(),
            ..Summary::default()
        };
        for m in table.pools.iter().flat_map(|p| &p.members) {
            s.backends += 1;
            s.up += m.state.routable() as usize;
            // Backends in maintenance are not checked: they would never count as checked.
            s.unchecked += (m.state.health == Health::Unknown
                && m.state.admin != AdminState::Maintenance) as usize;
        }
        s
    }

    fn rebuild(&self, s: &Sources) {
        let config = self.config.load();
        let table = RoutingTable::build(&config.pools, &s.membership, &s.tls, &self.metrics);
        self.plane.set_table(table);
    }

    /// A new configuration: routes and pool settings now, with the membership we have.
    /// The control task's alone.
    fn set_config(&self, config: Arc<Config>, tls: Arc<HashMap<String, Arc<PoolTls>>>) {
        // Poisoning needs a panic while holding this lock; building a table does not panic.
        // Stored under the lock, so a membership published meanwhile builds with it.
        let mut sources = self.sources.lock().unwrap();
        self.config.store(config);
        sources.tls = tls;
        self.rebuild(&sources);
    }
}

impl Publish for InForce {
    fn publish(&self, membership: Arc<Membership>) {
        let mut sources = self.sources.lock().unwrap();
        sources.membership = membership;
        self.rebuild(&sources);
    }
}

/// A change for the control task, answered on its oneshot.
pub enum Command {
    /// Read the config file again and apply it.
    Reload(oneshot::Sender<Result<Changes, ApplyError>>),
    /// A pool's discovery found these backends (all of them); `token` names the
    /// discovery task (one a reload has replaced changes nothing: false).
    Discovered {
        pool: String,
        token: u64,
        backends: Vec<BackendConfig>,
        done: oneshot::Sender<Result<bool, ApplyError>>,
    },
    /// An operator's admin state for a backend; answered with the state before, None
    /// if there is no such backend.
    SetAdmin {
        pool: String,
        address: String,
        state: AdminState,
        done: oneshot::Sender<Option<AdminState>>,
    },
    /// A fleet member's result for a backend this process does not probe.
    SharedHealth {
        pool: String,
        address: String,
        health: Health,
        reason: String,
    },
    /// Answered at once: the watchdog's proof that the task still turns.
    Alive(oneshot::Sender<()>),
    /// The process is ending: the task returns.
    Stop,
}

/// The sending side of the control task's channel: what every other part holds to
/// change what is in force.
#[derive(Clone)]
pub struct Control {
    tx: mpsc::UnboundedSender<Command>,
}

impl Control {
    /// A control handle and the receiving end [`start`] runs on.
    pub fn channel() -> (Control, mpsc::UnboundedReceiver<Command>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Control { tx }, rx)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (done, answer) = oneshot::channel();
        self.tx.send(make(done)).ok()?;
        answer.await.ok()
    }

    /// Reloads the config file; counted and logged either way.
    pub async fn reload(&self) -> Result<Changes, ApplyError> {
        self.ask(Command::Reload)
            .await
            .unwrap_or(Err(ApplyError::Stopped))
    }

    pub async fn discovered(
        &self,
        pool: String,
        token: u64,
        backends: Vec<BackendConfig>,
    ) -> Result<bool, ApplyError> {
        self.ask(|done| Command::Discovered {
            pool,
            token,
            backends,
            done,
        })
        .await
        .unwrap_or(Err(ApplyError::Stopped))
    }

    /// Sets a backend's admin state: the state before, None if there is no such
    /// backend (or vigil is stopping).
    pub async fn set_admin(
        &self,
        pool: String,
        address: String,
        state: AdminState,
    ) -> Option<AdminState> {
        self.ask(|done| Command::SetAdmin {
            pool,
            address,
            state,
            done,
        })
        .await
        .flatten()
    }

    pub fn shared_health(&self, pool: &str, address: &str, health: Health, reason: String) {
        let _ = self.tx.send(Command::SharedHealth {
            pool: pool.to_string(),
            address: address.to_string(),
            health,
            reason,
        });
    }

    /// Whether the control task answers (it waits while a command before is applied).
    pub async fn alive(&self) -> bool {
        self.ask(Command::Alive).await.is_some()
    }

    /// True once the control task has ended: tasks that feed it end too.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Ends the control task after the commands already sent.
    pub fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
    }
}

/// Runs the control task on a thread of its own: applying reads files and may resolve
/// names, which must not stall an event loop. `notifier` hears of every reload.
pub fn start(
    mut controller: Controller,
    mut commands: mpsc::UnboundedReceiver<Command>,
    notifier: Notifier,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("vigil-control".into())
        .spawn(move || {
            while let Some(command) = commands.blocking_recv() {
                match command {
                    Command::Reload(done) => {
                        notifier.reloading();
                        let result = controller.reload();
                        let summary = controller.in_force.summary();
                        notifier.reloaded(&reload_status(&result, summary));
                        let _ = done.send(result);
                    }
                    Command::Discovered {
                        pool,
                        token,
                        backends,
                        done,
                    } => {
                        let _ = done.send(controller.apply_discovered(&pool, token, backends));
                    }
                    Command::SetAdmin {
                        pool,
                        address,
                        state,
                        done,
                    } => {
                        let _ = done.send(controller.checker().set_admin(&pool, &address, state));
                    }
                    Command::SharedHealth {
                        pool,
                        address,
                        health,
                        reason,
                    } => {
                        controller
                            .checker()
                            .set_shared_health(&pool, &address, health, &reason);
                    }
                    Command::Alive(done) => {
                        let _ = done.send(());
                    }
                    Command::Stop => return,
                }
            }
        })
}

/// The status line after a reload: what is in force, and why a refused one was.
fn reload_status(result: &Result<Changes, ApplyError>, summary: Summary) -> String {
    match result {
        Ok(_) => summary.to_string(),
        Err(e) => {
            let lines = e.lines();
            let why = lines.first().map_or("", String::as_str);
            format!("reload refused ({why}); {summary}")
        }
    }
}
