//! One session with etcd: joined (a lease, the member key and a first heartbeat on it,
//! every key read, then watched), it lasts until an etcd request fails or times out,
//! the lease is lost, or the watch ends.

use super::view::Handover;
use super::{freshness_bound, heartbeat_period, request_timeout, Fleet, Reach};
use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
    Txn, TxnOp, WatchOptions, WatchResponse, WatchStream,
};
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{interval, Interval, MissedTickBehavior};
use vigil_healthcheck::{Health, HealthEvent};

/// etcd's default limit on operations in one transaction.
const TXN_OPS: usize = 128;

/// How often the member looks at its view (members gone stale, a reload's intervals,
/// a drain) between watch events.
const LOOK: Duration = Duration::from_millis(100);

/// A joined session: the member's keys live on `lease`; every etcd request gets `limit`.
struct Session<'a> {
    app: &'a Reach,
    fleet: &'a Fleet,
    client: Client,
    lease: i64,
    limit: Duration,
    keeper: LeaseKeeper,
    alive: LeaseKeepAliveStream,
    round: u64,
}

/// One session, from joining to its end: `Ok` when the process drains (the lease
/// revoked, so the others take over at once), an error otherwise.
pub(super) async fn session(app: &Arc<Reach>, fleet: &Arc<Fleet>) -> Result<(), String> {
    let mut s = Session::join(app, fleet).await?;
    let mut watch = s.read_all().await?;
    let mut transitions = app.checker.transitions();
    s.share().await?;
    s.serve(&mut watch, &mut transitions).await
}

impl<'a> Session<'a> {
    /// Connects, takes a lease and keeps it alive, and puts the member key and a first
    /// heartbeat on it.
    async fn join(app: &'a Reach, fleet: &'a Fleet) -> Result<Session<'a>, String> {
        let cfg = &fleet.config;
        let limit = request_timeout(cfg.lease_ttl);
        let options = ConnectOptions::new()
            .with_connect_timeout(limit)
            .with_keep_alive(limit, limit);
        let mut client = timed(limit, "connect", Client::connect(&cfg.etcd, Some(options))).await?;
        let ttl = cfg.lease_ttl.as_secs() as i64;
        let lease = timed(limit, "lease grant", client.lease_grant(ttl, None))
            .await?
            .id();
        let (keeper, alive) =
            timed(limit, "lease keep-alive", client.lease_keep_alive(lease)).await?;
        let mut s = Session {
            app,
            fleet,
            client,
            lease,
            limit,
            keeper,
            alive,
            round: 0,
        };
        let member = fleet.member_value(app);
        s.put(&format!("members/{}", cfg.node), member).await?;
        s.heartbeat(fleet.period()).await?;
        Ok(s)
    }

    /// Everything there is under the fleet's prefix, absorbed into a fresh view, then a
    /// watch of every change after it.
    async fn read_all(&mut self) -> Result<WatchStream, String> {
        let (fleet, limit) = (self.fleet, self.limit);
        let all = timed(
            limit,
            "get",
            self.client
                .get(fleet.key(""), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = all.header().map_or(0, |h| h.revision());
        {
            let mut view = fleet.view.lock().unwrap();
            view.members.clear();
            view.sets.clear();
            view.published.clear();
            view.live.clear();
            // Everything this member owns in the new session is published afresh: its
            // keys went with the previous lease.
            view.owned.clear();
        }
        for kv in all.kvs() {
            if let (Ok(k), Ok(v)) = (kv.key_str(), kv.value_str()) {
                fleet.absorb(self.app, k, Some(v), kv.mod_revision());
            }
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let watch = self.client.watch(fleet.key(""), Some(options));
        timed(limit, "watch", watch).await
    }

    /// Shares health from now on: the first ownership computed and handed over.
    async fn share(&mut self) -> Result<(), String> {
        let fleet = self.fleet;
        fleet.view.lock().unwrap().shared = true;
        fleet.mode.set(1);
        let handover = fleet.recompute(self.app, true);
        let members = fleet.view.lock().unwrap().live.clone();
        let cfg = &fleet.config;
        tracing::info!(node = %cfg.node, members = ?members, lease_ttl = ?cfg.lease_ttl, copies = cfg.copies, "joined the fleet; sharing health through etcd");
        self.hand_over(handover).await
    }

    /// Watch events, the lease's keep-alive, heartbeats, looks at the view and this
    /// member's own transitions, until one of them fails.
    async fn serve(
        &mut self,
        watch: &mut WatchStream,
        transitions: &mut UnboundedReceiver<HealthEvent>,
    ) -> Result<(), String> {
        let ticker = |period| {
            let mut t = interval(period);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        };
        let mut keep = ticker(self.fleet.config.lease_ttl / 3);
        let mut beat_period = self.fleet.period();
        let mut beat = ticker(beat_period);
        let mut look = ticker(LOOK);
        loop {
            tokio::select! {
                // Watch events first: a tick that has waited must not judge members on
                // heartbeats still queued. (Events come in bursts at handovers; a stream
                // busy for a whole lease_ttl/3, which would delay the keep-alive, would
                // need thousands of writes a second.)
                biased;
                msg = watch.message() => {
                    let resp = msg.map_err(|e| format!("watch: {e}"))?.ok_or("watch ended")?;
                    self.events(resp).await?;
                }
                _ = keep.tick() => self.keep_alive().await?,
                _ = beat.tick() => {
                    self.round += 1;
                    self.heartbeat(beat_period).await?;
                }
                _ = look.tick() => {
                    if self.app.draining.get() {
                        // Hand the backends to the others at once rather than after the lease.
                        let revoke = self.client.lease_revoke(self.lease);
                        let _ = timed(self.limit, "lease revoke", revoke).await;
                        return Ok(());
                    }
                    self.look(&mut beat_period, &mut beat, ticker).await?;
                }
                Some(ev) = transitions.recv() => self.publish(ev).await?,
            }
        }
    }

    /// Changes to the fleet's keys: absorbed, and the ownership recomputed.
    async fn events(&mut self, resp: WatchResponse) -> Result<(), String> {
        if resp.canceled() {
            return Err(format!("watch canceled: {}", resp.cancel_reason()));
        }
        let mut changed = false;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            let value = match ev.event_type() {
                EventType::Put => kv.value_str().ok(),
                EventType::Delete => None,
            };
            changed |= self.fleet.absorb(self.app, key, value, kv.mod_revision());
        }
        let handover = self.fleet.recompute(self.app, changed);
        self.hand_over(handover).await
    }

    async fn keep_alive(&mut self) -> Result<(), String> {
        timed(self.limit, "lease keep-alive", self.keeper.keep_alive()).await?;
        match timed(self.limit, "lease keep-alive", self.alive.message()).await? {
            Some(r) if r.ttl() > 0 => Ok(()),
            _ => Err("the lease expired".into()),
        }
    }

    /// A look at the view between events: a reload may have changed the pools'
    /// intervals (and so the heartbeat), and members may have gone stale.
    async fn look(
        &mut self,
        beat_period: &mut Duration,
        beat: &mut Interval,
        ticker: impl Fn(Duration) -> Interval,
    ) -> Result<(), String> {
        let period = heartbeat_period(&self.app.config(), self.fleet.config.lease_ttl);
        if period != *beat_period {
            *beat_period = period;
            *self.fleet.period.lock().unwrap() = (period, freshness_bound(period));
            *beat = ticker(period);
        }
        let handover = self.fleet.recompute(self.app, false);
        self.hand_over(handover).await
    }

    /// One of this member's health transitions, published if it owns the backend.
    async fn publish(&mut self, ev: HealthEvent) -> Result<(), String> {
        let backend = (ev.pool.clone(), ev.address.clone());
        let mine = self.fleet.view.lock().unwrap().owned.contains(&backend);
        if let (true, Some(value)) = (mine, health_value(ev.health, &ev.reason)) {
            let node = &self.fleet.config.node;
            self.put(&format!("health/{}/{}/{node}", ev.pool, ev.address), value)
                .await?;
        }
        Ok(())
    }

    /// A heartbeat: this round, and the period it is sent at (others judge this
    /// member's freshness by it).
    async fn heartbeat(&mut self, period: Duration) -> Result<(), String> {
        let value = json!({"round": self.round, "period_ms": period.as_millis() as u64});
        let node = &self.fleet.config.node;
        self.put(&format!("rounds/{node}"), value.to_string()).await
    }

    /// Puts `value` at the fleet's key `rest`, on the lease.
    async fn put(&mut self, rest: &str, value: String) -> Result<(), String> {
        let options = PutOptions::new().with_lease(self.lease);
        let put = self.client.put(self.fleet.key(rest), value, Some(options));
        timed(self.limit, "put", put).await.map(|_| ())
    }

    /// Writes the current state of backends just taken over (if known) and deletes
    /// what this member had published about backends it no longer owns (so a stale
    /// word never comes back if they return to it), in transactions of up to
    /// [`TXN_OPS`].
    async fn hand_over(&mut self, handover: Handover) -> Result<(), String> {
        let (fleet, app) = (self.fleet, self.app);
        if handover.announce {
            let value = fleet.member_value(app);
            self.put(&format!("members/{}", fleet.config.node), value)
                .await?;
        }
        let key = |p: &str, a: &str| fleet.key(&format!("health/{p}/{a}/{}", fleet.config.node));
        let mut ops: Vec<TxnOp> = handover
            .released
            .iter()
            .map(|(p, a)| TxnOp::delete(key(p, a), None))
            .collect();
        if !handover.taken.is_empty() {
            let taken: HashSet<_> = handover.taken.into_iter().collect();
            for s in app.checker.status() {
                if !taken.contains(&(s.pool.clone(), s.address.clone())) {
                    continue;
                }
                let reason = s.last_error.clone().unwrap_or_else(|| "taken over".into());
                if let Some(value) = health_value(s.health, &reason) {
                    let options = PutOptions::new().with_lease(self.lease);
                    ops.push(TxnOp::put(key(&s.pool, &s.address), value, Some(options)));
                }
            }
        }
        while !ops.is_empty() {
            let batch: Vec<TxnOp> = ops.drain(..ops.len().min(TXN_OPS)).collect();
            let txn = self.client.txn(Txn::new().and_then(batch));
            timed(self.limit, "txn", txn).await?;
        }
        Ok(())
    }
}

async fn timed<T, E: std::fmt::Display>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {limit:?}")),
    }
}

fn health_value(health: Health, reason: &str) -> Option<String> {
    let word = match health {
        Health::Up => "up",
        Health::Down => "down",
        _ => return None,
    };
    Some(json!({"health": word, "reason": reason}).to_string())
}
