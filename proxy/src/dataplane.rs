//! The request path: the pipeline every request goes through (HTTP/1 and HTTP/2
//! codecs in front of one policy, routing, attempts and logging), the routing snapshot
//! and balancing, upstream connections, and Pingora's proxy for what the pipeline hands
//! on. It reads what is in force through [`DataPlane`]'s snapshots, never a lock.

pub mod admit;
pub mod balance;
pub mod budget;
pub mod context;
pub mod idle;
pub mod kept;
pub mod path;
pub mod pipeline;
pub mod proxy;
pub mod queue;
pub mod reports;
pub mod request;
pub mod retry;
pub mod rewound;
pub mod routing;
pub mod upstream_tls;

use crate::dataplane::routing::RoutingTable;
use crate::edge::limits::EdgeLimits;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::ProxyMetrics;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// What the request path reads: the routing snapshot, the client limits, the access
/// log, the metrics, and the count of requests in flight that the drain waits on.
/// The control task stores new snapshots; nothing here is behind a lock.
pub struct DataPlane {
    routes: ArcSwap<RoutingTable>,
    pub edge: Arc<EdgeLimits>,
    pub access_log: Arc<AccessLog>,
    pub metrics: Arc<ProxyMetrics>,
    pub in_flight: InFlight,
    pub draining: Draining,
}

impl DataPlane {
    /// No routes yet: the first apply stores the first real table.
    pub fn new(
        edge: Arc<EdgeLimits>,
        access_log: Arc<AccessLog>,
        metrics: Arc<ProxyMetrics>,
    ) -> Self {
        DataPlane {
            routes: ArcSwap::from_pointee(RoutingTable::empty()),
            edge,
            access_log,
            metrics,
            in_flight: InFlight::default(),
            draining: Draining::default(),
        }
    }

    /// The routing snapshot in force.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.routes.load_full()
    }

    /// Makes `table` the snapshot every request from now on routes with.
    pub fn set_table(&self, table: RoutingTable) {
        self.routes.store(Arc::new(table));
    }

    /// SIGTERM or an upgrade has begun: the listeners are closed and requests in flight
    /// finish; every answer from now on closes its connection.
    pub fn draining(&self) -> bool {
        self.draining.get()
    }
}

/// Whether the process is draining, shared by the request path, the fleet and the
/// process that sets it.
#[derive(Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Requests in flight, each held by a [`Flight`]; the drain waits for zero.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Counter>);

#[derive(Default)]
struct Counter {
    count: AtomicUsize,
    idle: Notify,
}

/// One request in flight: counted until dropped, however its future ends (answered,
/// the client gone, a cancelled task).
pub struct Flight(Arc<Counter>);

impl InFlight {
    pub fn start(&self) -> Flight {
        self.0.count.fetch_add(1, Ordering::SeqCst);
        Flight(self.0.clone())
    }

    pub fn get(&self) -> usize {
        self.0.count.load(Ordering::SeqCst)
    }

    /// Returns when no request is in flight.
    pub async fn idle(&self) {
        loop {
            let idle = self.0.idle.notified();
            if self.get() == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::context::Ctx;
    use std::time::Duration;
    use vigil_healthcheck::{Endpoint, Member, Membership};

    fn table() -> Arc<RoutingTable> {
        let yaml = "listeners:\n  - address: 127.0.0.1:1\nadmin:\n  address: 127.0.0.1:2\npools:\n  - name: web\n    backends:\n      - address: 127.0.0.1:3\n";
        let config = vigil_conf::from_str(yaml, "counts.yaml").expect("config");
        let metrics = ProxyMetrics::new(&prometheus::Registry::new(), false).unwrap();
        let pool = &config.pools[0];
        let backend = &pool.backends[0];
        let endpoint = Endpoint::new(&pool.name, &backend.address, backend.socket_addr, 5);
        let up = Member::up(Arc::new(endpoint), 1);
        let mut membership = Membership::default();
        membership.pools.insert(pool.name.as_str().into(), vec![up]);
        Arc::new(RoutingTable::build(
            &config.pools,
            &membership,
            &Default::default(),
            &metrics,
        ))
    }

    /// A request whose future is dropped mid-way (a cancelled task, a connection torn
    /// down) gives back everything it counted: its place in the drain's count, its
    /// backend's in-flight count (which `least_requests` and `peak_ewma` read) and, once
    /// it became a tunnel, the backend's tunnel count.
    #[tokio::test]
    async fn a_request_dropped_mid_way_leaves_no_count_behind() {
        let in_flight = InFlight::default();
        let table = table();
        let endpoint = table.pools[0].members[0].endpoint.clone();
        for tunnel in [false, true] {
            let mut request = Box::pin(async {
                let mut ctx = Ctx::new();
                ctx.flight = Some(in_flight.start());
                ctx.routed_with_key(table.clone(), 0, Vec::new());
                ctx.next_member().expect("the pool's one member");
                if tunnel {
                    ctx.answered(101, false);
                }
                // Waits for an answer that never comes.
                std::future::pending::<()>().await;
            });
            // Polled once: it has taken its counts and waits.
            let polled = tokio::time::timeout(Duration::ZERO, request.as_mut()).await;
            assert!(polled.is_err(), "the request waits");
            assert_eq!(in_flight.get(), 1);
            assert_eq!(endpoint.in_flight(), 1);
            assert_eq!(endpoint.tunnels(), u64::from(tunnel));
            drop(request);
            assert_eq!(in_flight.get(), 0, "the drain's count (tunnel: {tunnel})");
            assert_eq!(endpoint.in_flight(), 0, "the backend's in-flight count");
            assert_eq!(endpoint.tunnels(), 0, "the backend's tunnel count");
        }
        // The drain, waiting for zero, is not left waiting.
        tokio::time::timeout(Duration::from_secs(5), in_flight.idle())
            .await
            .expect("idle once every request is gone");
    }
}
