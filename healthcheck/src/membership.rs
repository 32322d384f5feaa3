//! What the checker tells the proxy: for every pool, its backends with their weight
//! and whether they may receive traffic.
//!
//! An [`Endpoint`] is a backend as the request path sees it: where to connect, and the
//! few counters live traffic updates without a lock (in-flight requests for
//! `least_requests`, failures in a row for passive ejection). The checker and the
//! routing snapshot share one per backend.
//!
//! The attempts waiting on a backend, and cutting them when it is stuck, are in
//! `waiting`.

use crate::agent::AgentMode;
use crate::state::Health;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;
use waiting::Waiting;

mod waiting;

pub use waiting::{Cut, Repeat};

/// One backend of one pool as the request path sees it; shared with the checker.
#[derive(Debug)]
pub struct Endpoint {
    pub pool: Arc<str>,
    /// As configured: the backend's identity in state, logs and metrics.
    pub address: Arc<str>,
    pub socket_addr: SocketAddr,
    in_flight: AtomicU64,
    /// Of those, tunnels (answered 101): load, but no request waiting for an answer.
    tunnels: AtomicU64,
    /// Requests ever sent to it (the retry budget grows with them).
    started: AtomicU64,
    passive_failures: AtomicU32,
    /// Failures in a row that eject; 0 = passive ejection off. Updated on reload.
    passive_threshold: AtomicU32,
    /// The last sign of life, in [`clock_ms`]: an answer, or a first request after a
    /// time with none in flight. With requests in flight, now minus this is a lower bound
    /// of how long the oldest has waited.
    progress_ms: AtomicU64,
    /// When it last answered, in [`clock_ms`].
    answered_ms: AtomicU64,
    /// A decaying average of the time to an answer (response header), µs; 0 = none yet.
    latency_us: AtomicU64,
    /// Attempts waiting for their answer on pools with stall detection.
    waiting: std::sync::Mutex<Vec<Waiting>>,
    /// When a live request last failed, in [`clock_ms`] (`skip_while_serving`).
    failed_ms: AtomicU64,
    /// Slow start: when the backend last became routable again, in [`clock_ms`]
    /// (0 = not ramping), and the pool's `slow_start` in ms (0 = off).
    ramp_start_ms: AtomicU64,
    slow_start_ms: AtomicU64,
    /// Wakes the backend's task to consider an ejection.
    pub(crate) wake: Notify,
    /// The load it reports in its answers (`balance: load_report`).
    pub load: crate::load_report::LoadReports,
}

impl Endpoint {
    pub fn new(pool: &str, address: &str, socket_addr: SocketAddr, passive_threshold: u32) -> Self {
        Endpoint {
            pool: pool.into(),
            address: address.into(),
            socket_addr,
            in_flight: AtomicU64::new(0),
            tunnels: AtomicU64::new(0),
            started: AtomicU64::new(0),
            passive_failures: AtomicU32::new(0),
            passive_threshold: AtomicU32::new(passive_threshold),
            progress_ms: AtomicU64::new(clock_ms()),
            answered_ms: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            waiting: std::sync::Mutex::new(Vec::new()),
            failed_ms: AtomicU64::new(0),
            ramp_start_ms: AtomicU64::new(0),
            slow_start_ms: AtomicU64::new(0),
            wake: Notify::new(),
            load: crate::load_report::LoadReports::new(),
        }
    }

    /// Requests currently sent to this backend and not finished.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn request_started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
        if self.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            self.progress_ms.store(clock_ms(), Ordering::Relaxed);
        }
    }

    /// As `request_started`, only while fewer than `max` requests are in flight: false
    /// (nothing counted) when the backend is full. Two requests racing for the last
    /// place cannot both have it.
    pub fn try_request_started(&self, max: u64) -> bool {
        let taken = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            });
        match taken {
            Ok(before) => {
                self.started.fetch_add(1, Ordering::Relaxed);
                if before == 0 {
                    self.progress_ms.store(clock_ms(), Ordering::Relaxed);
                }
                true
            }
            Err(_) => false,
        }
    }

    /// The backend answered (a response header) `latency` after it was asked; `ok`
    /// false for a 5xx, which counts at least `FAILURE_PENALTY` in its usual time.
    pub fn answered(&self, latency: std::time::Duration, ok: bool) {
        let now = clock_ms();
        self.progress_ms.store(now, Ordering::Relaxed);
        self.answered_ms.store(now, Ordering::Relaxed);
        if ok {
            self.update_latency(latency);
        } else {
            self.failed(latency);
        }
    }

    /// The backend failed a request without answering (a refused connection, a
    /// timeout) `latency` after it was asked: its usual time is pushed up as if it had
    /// taken at least `FAILURE_PENALTY`, so a backend that fails fast does not look fast.
    pub fn failed(&self, latency: std::time::Duration) {
        self.update_latency(latency.max(FAILURE_PENALTY));
    }

    fn update_latency(&self, latency: std::time::Duration) {
        let x = latency.as_micros().min(u64::MAX as u128) as u64;
        let old = self.latency_us.load(Ordering::Relaxed);
        // Weight 1/8: a few answers move it, one outlier does not.
        let new = if old == 0 {
            x.max(1)
        } else {
            (old * 7 + x) / 8
        };
        self.latency_us.store(new.max(1), Ordering::Relaxed);
    }

    /// One of its requests became a tunnel (a `101`): still load, as long as it is
    /// open, but nothing waits for an answer on it: its silence is no stall.
    pub fn tunnel_opened(&self) {
        self.tunnels.fetch_add(1, Ordering::Relaxed);
    }

    /// Tunnels open to it now.
    pub fn tunnels(&self) -> u64 {
        self.tunnels.load(Ordering::Relaxed)
    }

    /// A tunnel of [`Self::tunnel_opened`] ended (before its `request_finished`).
    pub fn tunnel_closed(&self) {
        self.tunnels.fetch_sub(1, Ordering::Relaxed);
    }

    /// How long requests to it have waited without any answer, if any are in flight
    /// (tunnels aside).
    pub fn stalled_for(&self, now_ms: u64) -> Option<std::time::Duration> {
        (self.in_flight() > self.tunnels.load(Ordering::Relaxed)).then(|| {
            let since = self.progress_ms.load(Ordering::Relaxed);
            std::time::Duration::from_millis(now_ms.saturating_sub(since))
        })
    }

    pub(crate) fn answered_ms(&self) -> u64 {
        self.answered_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Its usual time to answer, once it has answered.
    pub fn latency(&self) -> Option<std::time::Duration> {
        match self.latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(std::time::Duration::from_micros(us)),
        }
    }

    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A live request got a good answer.
    pub fn report_success(&self) {
        // Read first: in the common case nothing is written and the line stays shared.
        if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A live request failed to connect or got a 5xx.
    pub fn report_failure(&self) {
        self.failed_ms.store(clock_ms(), Ordering::Relaxed);
        let threshold = self.passive_threshold.load(Ordering::Relaxed);
        let n = self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold > 0 && n == threshold {
            self.wake.notify_one();
        }
    }

    pub(crate) fn passive_failures(&self) -> u32 {
        self.passive_failures.load(Ordering::Relaxed)
    }

    pub(crate) fn clear_passive_failures(&self) {
        self.passive_failures.store(0, Ordering::Relaxed);
    }

    pub(crate) fn set_passive_threshold(&self, n: u32) {
        self.passive_threshold.store(n, Ordering::Relaxed);
    }

    /// Live requests got answers after `mark_ms` (in [`clock_ms`]) and none failed
    /// from then on.
    pub(crate) fn served_well_since(&self, mark_ms: u64) -> bool {
        self.answered_ms.load(Ordering::Relaxed) > mark_ms
            && self.failed_ms.load(Ordering::Relaxed) < mark_ms
    }

    pub(crate) fn set_slow_start(&self, d: std::time::Duration) {
        self.slow_start_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// The backend became routable again: its weight ramps up from now.
    pub(crate) fn start_ramp(&self) {
        if self.slow_start_ms.load(Ordering::Relaxed) > 0 {
            self.ramp_start_ms.store(clock_ms(), Ordering::Relaxed);
        }
    }

    /// The share of its weight the backend gets now: from `RAMP_FLOOR` right after it
    /// became routable again to 1 at the end of `slow_start`, linearly.
    pub fn ramp(&self) -> f64 {
        let start = self.ramp_start_ms.load(Ordering::Relaxed);
        if start == 0 {
            return 1.0;
        }
        let window = self.slow_start_ms.load(Ordering::Relaxed);
        let elapsed = clock_ms().saturating_sub(start);
        if window == 0 || elapsed >= window {
            self.ramp_start_ms.store(0, Ordering::Relaxed);
            return 1.0;
        }
        ramp_share(elapsed, window)
    }
}

/// Where slow start begins: a twentieth of the backend's weight.
const RAMP_FLOOR: f64 = 0.05;

/// The weight share `elapsed` ms into a slow start of `window` ms (`window` > 0).
fn ramp_share(elapsed: u64, window: u64) -> f64 {
    let t = (elapsed as f64 / window as f64).min(1.0);
    RAMP_FLOOR + (1.0 - RAMP_FLOOR) * t
}

/// What the operator said about a backend (`POST /admin/backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AdminState {
    /// Normal: routed when healthy.
    #[default]
    Ready,
    /// No new requests; those in flight (and tunnels) finish; still checked.
    Drain,
    /// No requests and no checks; its check connection is closed.
    Maintenance,
}

impl AdminState {
    pub const ALL: [AdminState; 3] = [
        AdminState::Ready,
        AdminState::Drain,
        AdminState::Maintenance,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maintenance => "maintenance",
        }
    }

    pub fn parse(s: &str) -> Option<AdminState> {
        AdminState::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// A pool's usual answer time: the median of its backends' decaying averages, among
/// those that have answered.
pub fn median_latency<'a>(
    endpoints: impl Iterator<Item = &'a Endpoint>,
) -> Option<std::time::Duration> {
    let mut l: Vec<std::time::Duration> = endpoints.filter_map(Endpoint::latency).collect();
    l.sort_unstable();
    l.get(l.len() / 2).copied()
}

/// What a failed request counts as in a backend's usual answer time (`peak_ewma`).
pub const FAILURE_PENALTY: std::time::Duration = std::time::Duration::from_secs(1);

/// Milliseconds on the process's monotonic (tokio) clock, for atomics.
pub fn clock_ms() -> u64 {
    static BASE: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(tokio::time::Instant::now);
    tokio::time::Instant::now()
        .saturating_duration_since(base)
        .as_millis() as u64
        + 1
}

/// A backend's state as routing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberState {
    pub health: Health,
    pub ejected: bool,
    /// Requests to it are stuck: no new ones until it answers again.
    pub suspect: bool,
    pub admin: AdminState,
    /// What its agent keeps away (`health_check.agent`, see
    /// [`AgentState::hold`](crate::agent::AgentState::hold)): `drain` and `maint` count
    /// as the operator's drain; `Ready` without an agent.
    pub agent: AgentMode,
    /// Held out (ejected or suspect) but routed all the same: nothing else in its pool
    /// is routable (see [`route_held_out`]).
    pub rescued: bool,
}

impl MemberState {
    /// Only `up` backends, neither ejected nor suspect, and ready, receive traffic;
    /// and held-out ones while they are all their pool has.
    pub fn routable(&self) -> bool {
        self.rescued
            || (self.health == Health::Up && !self.ejected && !self.suspect && self.ready())
    }

    /// Ready by the operator's word and by its agent's: either one's drain or
    /// maintenance keeps new requests away.
    pub fn ready(&self) -> bool {
        self.admin == AdminState::Ready && self.agent == AgentMode::Ready
    }

    /// Passing its checks and ready, but held out by live traffic alone: ejected or
    /// suspect.
    pub fn held_out(&self) -> bool {
        self.health == Health::Up && (self.ejected || self.suspect) && self.ready()
    }

    /// Not routable by its own state, but worth a try when nothing better is left
    /// (failing open): ready, and checked at least once.
    pub fn last_resort(&self) -> bool {
        self.ready() && self.health != Health::Unknown
    }

    /// The `state` label: ejection wins, then suspicion, then health.
    pub fn label(&self) -> &'static str {
        if self.ejected {
            "ejected"
        } else if self.suspect {
            "suspect"
        } else {
            self.health.as_str()
        }
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    pub endpoint: Arc<Endpoint>,
    /// The weight to balance by: the configured one, scaled by its agent's `NN%`.
    pub weight: u32,
    pub state: MemberState,
    /// Its recent failures: checks failed in a row, ejections on record and live
    /// failures in a row. Orders the backends tried when none is routable.
    pub recent_failures: u32,
}

impl Member {
    /// A member up, ready and not held out, for tests and benches that build a routing
    /// table without a checker.
    pub fn up(endpoint: Arc<Endpoint>, weight: u32) -> Member {
        Member {
            endpoint,
            weight,
            state: MemberState {
                health: Health::Up,
                ejected: false,
                suspect: false,
                admin: AdminState::default(),
                agent: AgentMode::Ready,
                rescued: false,
            },
            recent_failures: 0,
        }
    }
}

/// When no member of a pool is routable, the held-out ones (ejected or suspect, but up
/// by their checks) are routed again, so that an ejection or a suspicion never leaves a
/// pool without a backend that answers its checks. Their ejections and suspicions go on;
/// this lasts while nothing else is routable. Returns whether it routes them.
pub fn route_held_out(members: &mut [Member]) -> bool {
    if members.iter().any(|m| m.state.routable()) {
        return false;
    }
    let mut any = false;
    for m in members.iter_mut().filter(|m| m.state.held_out()) {
        m.state.rescued = true;
        any = true;
    }
    any
}

/// Every pool's backends, in configuration order.
#[derive(Debug, Clone, Default)]
pub struct Membership {
    pub pools: BTreeMap<Arc<str>, Vec<Member>>,
}

impl Membership {
    pub fn pool(&self, name: &str) -> Option<&[Member]> {
        self.pools.get(name).map(Vec::as_slice)
    }
}

/// Receives a new membership whenever a backend's routing state or the set of backends
/// changed (never for checks that changed nothing). Implemented by the proxy, which
/// turns it into its routing snapshot.
pub trait Publish: Send + Sync + 'static {
    fn publish(&self, membership: Arc<Membership>);
}
