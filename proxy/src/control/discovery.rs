//! Backends from DNS: one task per pool with `discovery`, looking its name up at
//! `refresh` (or sooner when the records' TTL is shorter) and handing what it found to
//! the control task whenever it changed, which merges it with the file's backends and applies
//! the result like a reload (kept backends keep their state, added ones are checked at
//! once, removed ones finish their requests).
//!
//! A failed lookup keeps the last good set (one warning per outage, one line when it
//! ends). A successful but empty answer empties the pool only after
//! [`EMPTY_ANSWERS_TO_EMPTY`] of them in a row: a single flake never does.

use super::error::ApplyError;
use super::Control;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use vigil_conf::{BackendConfig, BackendSource, DiscoveryConfig, DiscoveryName, DnsConfig};

/// Empty answers in a row after which a pool's discovered backends are dropped.
pub const EMPTY_ANSWERS_TO_EMPTY: u32 = 3;

/// The shortest time between lookups when records' TTL is shorter than `refresh`
/// (Consul and dnsmasq answer with TTL 0).
const MIN_TTL_REFRESH: Duration = Duration::from_secs(1);

/// How long one lookup (every query it makes) may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

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

/// A resolver for `dns`: its nameservers, or the system's. Nothing is cached between
/// lookups (each one asks), so `refresh` means what it says.
pub fn resolver(dns: &DnsConfig) -> Result<TokioResolver, String> {
    let mut builder = if dns.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("system DNS configuration: {e}"))?
    } else {
        let servers = dns
            .nameservers
            .iter()
            .map(|a| {
                let mut s = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut s.connections {
                    c.port = a.port();
                }
                s
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts = builder.options_mut();
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(1);
    opts.attempts = 2;
    builder.build().map_err(|e| e.to_string())
}

/// One lookup's answer.
#[derive(Debug)]
pub struct Answer {
    /// Sorted by address; empty for NXDOMAIN or no records.
    pub backends: Vec<BackendConfig>,
    /// When the shortest-lived record it used expires.
    pub ttl: Duration,
}

/// Looks `name` up once: SRV records of the lowest priority (each target's addresses,
/// with the record's port and weight), or a name's A and AAAA records with the port.
// hickory gives records' expiry as a std Instant; nothing here is paused-time tested.
#[allow(clippy::disallowed_types)]
pub async fn lookup(resolver: &TokioResolver, name: &DiscoveryName) -> Result<Answer, String> {
    resolver.clear_cache();
    let mut found: Vec<(SocketAddr, u32)> = Vec::new();
    let now = std::time::Instant::now();
    let mut expires = now + Duration::from_secs(3600);
    match name {
        DiscoveryName::A { host, port } => match resolver.lookup_ip(absolute(host)).await {
            Ok(ips) => {
                expires = expires.min(ips.valid_until());
                found.extend(ips.iter().map(|ip| (SocketAddr::new(ip, *port), 1)));
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {}
            Err(e) => return Err(e.to_string()),
        },
        DiscoveryName::Srv(srv) => {
            let records = match resolver.srv_lookup(absolute(srv)).await {
                Ok(l) => {
                    expires = expires.min(l.valid_until());
                    l.answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::SRV(s) => {
                                Some((s.priority, s.weight, s.port, s.target.to_string()))
                            }
                            _ => None,
                        })
                        .collect::<Vec<_>>()
                }
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => Vec::new(),
                Err(e) => return Err(e.to_string()),
            };
            let best = records.iter().map(|r| r.0).min();
            for (_, weight, port, target) in records.iter().filter(|r| Some(r.0) == best) {
                match resolver.lookup_ip(target.as_str()).await {
                    Ok(ips) => {
                        expires = expires.min(ips.valid_until());
                        let w = u32::from(*weight).max(1);
                        found.extend(ips.iter().map(|ip| (SocketAddr::new(ip, *port), w)));
                    }
                    // A target that no longer exists names no backend.
                    Err(e) if e.is_no_records_found() || e.is_nx_domain() => {}
                    Err(e) => return Err(format!("{target}: {e}")),
                }
            }
        }
    }
    found.sort();
    found.dedup_by_key(|(a, _)| *a);
    let backends = found
        .into_iter()
        .map(|(socket_addr, weight)| BackendConfig {
            address: address(socket_addr),
            socket_addr,
            weight,
            source: BackendSource::Dns,
        })
        .collect();
    Ok(Answer {
        backends,
        ttl: expires.saturating_duration_since(now),
    })
}

/// `127.0.0.2:8080`, `[::1]:8080`: the backend's identity in state, logs and metrics.
fn address(a: SocketAddr) -> String {
    match a.ip() {
        IpAddr::V4(_) => a.to_string(),
        IpAddr::V6(_) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// Names are looked up as written, never under the search domains.
fn absolute(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// When to look again: `refresh`, or the records' TTL if shorter (not under a second).
pub fn next_lookup(refresh: Duration, ttl: Duration) -> Duration {
    refresh.min(ttl.max(MIN_TTL_REFRESH))
}

/// What one pool's discovery task works with.
struct Task {
    pool: String,
    token: u64,
    config: DiscoveryConfig,
    dns: DnsConfig,
    status: Arc<Mutex<LookupStatus>>,
    lookups: IntCounterVec,
    last_success: GaugeVec,
}

/// `kept`: what an earlier task for the same name found (a reload changed `refresh` or
/// the nameservers): the pool still has it, and empty answers must repeat as ever.
async fn run(control: Control, task: Task, kept: Option<Vec<BackendConfig>>) {
    let Task {
        pool,
        token,
        config,
        dns,
        status,
        lookups,
        last_success,
    } = task;
    let resolver = match resolver(&dns) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(pool = %pool, name = %config.name, error = %e, "discovery cannot start: no DNS resolver");
            status.lock().unwrap().last_error = Some(e);
            return;
        }
    };
    let mut current: Option<Vec<BackendConfig>> = kept;
    let mut outage = false;
    loop {
        let answer = tokio::time::timeout(LOOKUP_TIMEOUT, lookup(&resolver, &config.name))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {LOOKUP_TIMEOUT:?}")));
        let now = SystemTime::now();
        let mut wait = config.refresh;
        let mut publish = None;
        {
            let mut st = status.lock().unwrap();
            st.last_lookup = Some(now);
            match answer {
                Err(e) => {
                    lookups.with_label_values(&[&pool, "error"]).inc();
                    if !outage {
                        tracing::warn!(pool = %pool, name = %config.name, error = %e, "discovery lookup failed; the last good backends keep serving");
                    }
                    outage = true;
                    st.last_error = Some(e);
                }
                Ok(a) => {
                    if outage {
                        tracing::info!(pool = %pool, name = %config.name, "discovery lookups succeed again");
                        outage = false;
                    }
                    st.last_error = None;
                    st.last_success = Some(now);
                    last_success
                        .with_label_values(&[&pool])
                        .set(crate::observe::metrics::unix_seconds(now));
                    wait = next_lookup(config.refresh, a.ttl);
                    if a.backends.is_empty() {
                        lookups.with_label_values(&[&pool, "empty"]).inc();
                        st.empty_answers += 1;
                        let had = current.as_ref().is_some_and(|c| !c.is_empty());
                        if st.empty_answers == 1 && had {
                            tracing::warn!(pool = %pool, name = %config.name, "discovery name has no records; the pool keeps its backends unless this repeats");
                        }
                        if st.empty_answers >= EMPTY_ANSWERS_TO_EMPTY || current.is_none() {
                            publish = Some(Vec::new());
                        }
                    } else {
                        lookups.with_label_values(&[&pool, "ok"]).inc();
                        st.empty_answers = 0;
                        publish = Some(a.backends);
                    }
                    if let Some(p) = &publish {
                        st.found = p.len();
                    }
                }
            }
        }
        if let Some(backends) = publish.filter(|b| current.as_ref() != Some(b)) {
            let old = current.replace(backends.clone());
            match control.discovered(pool.clone(), token, backends).await {
                Ok(false) | Err(ApplyError::Stopped) => return, // replaced meanwhile, or vigil stops
                Ok(true) => {
                    let before = old.map_or(0, |o| o.len());
                    let after = current.as_ref().map_or(0, |c| c.len());
                    tracing::info!(pool = %pool, name = %config.name, before, after, "discovered backends changed");
                }
                Err(e) => {
                    // Nothing changed; the next lookup tries again.
                    current = old;
                    tracing::error!(pool = %pool, error = %e, "discovered backends not applied");
                }
            }
        }
        tokio::time::sleep(wait).await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_lookup_is_at_refresh_or_a_shorter_ttl_but_not_under_a_second() {
        let s = Duration::from_secs;
        assert_eq!(next_lookup(s(5), s(300)), s(5));
        assert_eq!(next_lookup(s(5), s(2)), s(2));
        assert_eq!(next_lookup(s(5), s(0)), s(1));
        assert_eq!(
            next_lookup(Duration::from_millis(200), s(0)),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn addresses_are_written_as_socket_addresses() {
        assert_eq!(address("127.0.0.2:80".parse().unwrap()), "127.0.0.2:80");
        assert_eq!(address("[::1]:80".parse().unwrap()), "[::1]:80");
        assert_eq!(absolute("a.b"), "a.b.");
        assert_eq!(absolute("a.b."), "a.b.");
    }
}
