//! Backends from DNS: one task per pool with `discovery`, looking its name up at
//! `refresh` (or sooner when the records' TTL is shorter) and handing what it found to
//! the control task whenever it changed, which merges it with the file's backends and applies
//! the result like a reload (kept backends keep their state, added ones are checked at
//! once, removed ones finish their requests).
//!
//! A failed lookup keeps the last good set (one warning per outage, one line when it
//! ends). A successful but empty answer empties the pool only after
//! [`EMPTY_ANSWERS_TO_EMPTY`] of them in a row: a single flake never does.
//!
//! Here: the tasks' bookkeeping ([`Discovery`]) and the merge into the file's pools;
//! one lookup is in `dns`, a pool's task in `task`.

mod dns;
mod task;

use super::Control;
use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use task::{run, Task};
use vigil_conf::{BackendConfig, DiscoveryConfig, DnsConfig};

pub use dns::{lookup, resolver, Answer};
pub use task::next_lookup;

/// Empty answers in a row after which a pool's discovered backends are dropped.
pub const EMPTY_ANSWERS_TO_EMPTY: u32 = 3;

pub const LOOKUPS: &str = "vigil_discovery_lookups_total";
pub const LAST_SUCCESS: &str = "vigil_discovery_last_success_timestamp_seconds";

/// What `/health/detailed` shows of a pool's discovery.
#[derive(Debug, Clone, Default)]
pub struct LookupStatus {
    pub last_lookup: Option<SystemTime>,
    pub last_success: Option<SystemTime>,
    /// The last lookup's error, or None if it succeeded.
    pub last_error: Option<String>,
    /// Backends the last good answer named.
    pub found: usize,
    /// Empty answers in a row.
    pub empty_answers: u32,
}

struct Running {
    config: DiscoveryConfig,
    dns: DnsConfig,
    /// Which task this is: what an ended task still hands over is ignored.
    token: u64,
    task: tokio::task::JoinHandle<()>,
    status: Arc<Mutex<LookupStatus>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every pool's discovery task and what it found last.
pub struct Discovery {
    running: Mutex<HashMap<String, Running>>,
    /// Backends found, by pool: what the control task merges into the file's pools.
    found: Mutex<HashMap<String, Vec<BackendConfig>>>,
    lookups: IntCounterVec,
    last_success: GaugeVec,
    runtime: tokio::runtime::Handle,
    next_token: std::sync::atomic::AtomicU64,
}

impl Discovery {
    pub fn new(registry: &Registry, runtime: tokio::runtime::Handle) -> prometheus::Result<Self> {
        let lookups = IntCounterVec::new(
            Opts::new(
                LOOKUPS,
                "DNS lookups of pools' discovery names, by result (ok, empty, error).",
            ),
            &["pool", "result"],
        )?;
        let last_success = GaugeVec::new(
            Opts::new(
                LAST_SUCCESS,
                "When each pool's discovery name last resolved (an answer, empty or not).",
            ),
            &["pool"],
        )?;
        registry.register(Box::new(lookups.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        Ok(Discovery {
            running: Mutex::new(HashMap::new()),
            found: Mutex::new(HashMap::new()),
            lookups,
            last_success,
            runtime,
            next_token: Default::default(),
        })
    }

    /// Whether `token` is the pool's running task (an ended one may still be applying).
    pub(crate) fn is_current(&self, pool: &str, token: u64) -> bool {
        self.running
            .lock()
            .unwrap()
            .get(pool)
            .is_some_and(|r| r.token == token)
    }

    /// Records what a pool's lookup found; returns what it had before.
    pub(crate) fn set_found(
        &self,
        pool: &str,
        backends: Vec<BackendConfig>,
    ) -> Option<Vec<BackendConfig>> {
        self.found
            .lock()
            .unwrap()
            .insert(pool.to_string(), backends)
    }

    pub(crate) fn restore_found(&self, pool: &str, before: Option<Vec<BackendConfig>>) {
        let mut found = self.found.lock().unwrap();
        match before {
            Some(b) => found.insert(pool.to_string(), b),
            None => found.remove(pool),
        };
    }

    /// What was found for the pools of `config` whose lookup (name and nameservers)
    /// stays the same: a reload keeps those backends, and their state.
    pub(crate) fn found_for(
        &self,
        config: &vigil_conf::Config,
    ) -> HashMap<String, Vec<BackendConfig>> {
        let running = self.running.lock().unwrap();
        let found = self.found.lock().unwrap();
        config
            .pools
            .iter()
            .filter_map(|p| {
                let d = p.discovery.as_ref()?;
                let r = running.get(&p.name)?;
                if r.config.name != d.name {
                    return None;
                }
                Some((p.name.clone(), found.get(&p.name)?.clone()))
            })
            .collect()
    }

    /// Each discovered pool's lookup status.
    pub fn status(&self) -> HashMap<String, (DiscoveryConfig, LookupStatus)> {
        self.running
            .lock()
            .unwrap()
            .iter()
            .map(|(pool, r)| {
                (
                    pool.clone(),
                    (r.config.clone(), r.status.lock().unwrap().clone()),
                )
            })
            .collect()
    }

    /// Runs one task per pool of `pools` with discovery: keeps the ones whose name,
    /// refresh and nameservers are unchanged, (re)starts the others, ends the rest and
    /// forgets what they found.
    pub(crate) fn sync(
        &self,
        control: &Control,
        dns: &DnsConfig,
        pools: &[Arc<vigil_conf::PoolConfig>],
    ) {
        let mut running = self.running.lock().unwrap();
        let wanted: HashMap<&str, &DiscoveryConfig> = pools
            .iter()
            .filter_map(|p| p.discovery.as_ref().map(|d| (p.name.as_str(), d)))
            .collect();
        running.retain(|pool, r| {
            let want = wanted.get(pool.as_str());
            let keep = want.is_some_and(|d| same(d, &r.config) && r.dns == *dns);
            // New refresh or nameservers restart the task but keep what it found.
            if !want.is_some_and(|d| d.name == r.config.name) {
                self.found.lock().unwrap().remove(pool);
                if !wanted.contains_key(pool.as_str()) {
                    let _ = self.last_success.remove_label_values(&[pool]);
                    for result in ["ok", "empty", "error"] {
                        let _ = self.lookups.remove_label_values(&[pool, result]);
                    }
                }
            }
            keep
        });
        for (pool, config) in wanted {
            if running.contains_key(pool) {
                continue;
            }
            let status = Arc::new(Mutex::new(LookupStatus::default()));
            let token = self
                .next_token
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Every result starts at zero, as the contract's families do.
            for result in ["ok", "empty", "error"] {
                self.lookups.with_label_values(&[pool, result]);
            }
            let kept = self.found.lock().unwrap().get(pool).cloned();
            let task = self.runtime.spawn(run(
                control.clone(),
                Task {
                    pool: pool.to_string(),
                    token,
                    config: config.clone(),
                    dns: dns.clone(),
                    status: status.clone(),
                    lookups: self.lookups.clone(),
                    last_success: self.last_success.clone(),
                },
                kept,
            ));
            running.insert(
                pool.to_string(),
                Running {
                    config: config.clone(),
                    dns: dns.clone(),
                    token,
                    task,
                    status,
                },
            );
        }
    }
}

/// The same lookup (where it is written does not matter).
fn same(a: &DiscoveryConfig, b: &DiscoveryConfig) -> bool {
    a.name == b.name && a.refresh == b.refresh
}

/// `file` with each discovered pool's backends added after its own (an address the
/// file names already is the file's).
pub fn merge(
    file: &vigil_conf::Config,
    found: &HashMap<String, Vec<BackendConfig>>,
) -> vigil_conf::Config {
    let mut merged = file.clone();
    for pool in merged.pools.iter_mut() {
        let Some(list) = found.get(&pool.name).filter(|l| !l.is_empty()) else {
            continue;
        };
        let p = Arc::make_mut(pool);
        for b in list {
            if !p.backends.iter().any(|x| x.address == b.address) {
                p.backends.push(b.clone());
            }
        }
    }
    merged
}
