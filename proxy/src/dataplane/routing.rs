//! The routing snapshot: every route, every pool with its members, which of them may
//! receive traffic, and the selector over those: one value behind one `ArcSwap`. The
//! request path does one `load()` and never locks.

use crate::dataplane::balance::Selector;
use crate::dataplane::budget::RetryBudget;
use crate::dataplane::path::host_of;
use crate::dataplane::queue::PoolQueue;
use crate::dataplane::upstream_tls::PoolTls;
use crate::observe::metrics::{PoolHandles, ProxyMetrics};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;
use vigil_conf::{HostPattern, PoolConfig};
use vigil_healthcheck::{Member, Membership};

pub struct PoolRoute {
    pub name: Arc<str>,
    pub config: Arc<PoolConfig>,
    /// HTTPS to the backends, when the pool has `tls`.
    pub tls: Option<Arc<PoolTls>>,
    /// Every configured backend the checker knows, in configuration order.
    pub members: Vec<Member>,
    /// Indexes of the members requests may go to: the routable ones, or all of them
    /// when the pool is in panic mode.
    pub candidates: Vec<usize>,
    /// Members a request goes to once no candidate is left untried, best first: those
    /// held out by live traffic alone (ejected or suspect, passing their checks), then,
    /// with `fail_open`, the other checked, ready ones (down). Each at most once, within
    /// the request's retries; when there is no candidate at all the first attempt
    /// starts here.
    pub fallback: Vec<usize>,
    /// Fewer than `panic_threshold` percent of the members are routable.
    pub panic: bool,
    pub selector: Selector,
    pub metrics: PoolHandles,
    /// Where requests wait when every routable member is at `max_requests`.
    pub queue: Arc<PoolQueue>,
    /// Its retries in flight.
    pub retry_budget: Arc<RetryBudget>,
}

impl PoolRoute {
    fn build(
        config: Arc<PoolConfig>,
        tls: Option<Arc<PoolTls>>,
        members: Vec<Member>,
        metrics: &ProxyMetrics,
    ) -> PoolRoute {
        let routable: Vec<usize> = (0..members.len())
            .filter(|&i| members[i].state.routable())
            .collect();
        let panic = config.panic_threshold > 0.0
            && !members.is_empty()
            && (routable.len() as f64) * 100.0 < config.panic_threshold * members.len() as f64;
        let candidates = if panic {
            (0..members.len()).collect()
        } else {
            routable
        };
        let fallback = fallback(&config, &members, &candidates);
        let selector = Selector::build(config.balance, config.load_report, &members, &candidates);
        let metrics = metrics.pool(&config.name, &members);
        let queue = PoolQueue::of(&config.name);
        PoolRoute {
            queue,
            retry_budget: RetryBudget::of(&config.name),
            name: config.name.as_str().into(),
            config,
            tls,
            members,
            candidates,
            fallback,
            panic,
            selector,
            metrics,
        }
    }
}

/// [`PoolRoute::fallback`]: held-out members, then (with `fail_open`) the last resort,
/// each group by fewest recent failures.
fn fallback(config: &PoolConfig, members: &[Member], candidates: &[usize]) -> Vec<usize> {
    // A flag per member, not a search of `candidates` per member: pools can hold
    // thousands of backends, and this runs on every rebuild of the snapshot.
    let mut candidate = vec![false; members.len()];
    for &i in candidates {
        candidate[i] = true;
    }
    let rest = || (0..members.len()).filter(|&i| !candidate[i]);
    let by_failures = |mut v: Vec<usize>| {
        v.sort_by_key(|&i| members[i].recent_failures);
        v
    };
    let mut out = by_failures(rest().filter(|&i| members[i].state.held_out()).collect());
    if config.fail_open {
        let resort =
            rest().filter(|&i| !members[i].state.held_out() && members[i].state.last_resort());
        out.extend(by_failures(resort.collect()));
    }
    out
}

/// Path prefixes of one host pattern, longest first, with the pool they go to.
type Prefixes = Vec<(String, usize)>;

#[derive(Default)]
struct Router {
    exact: HashMap<String, Prefixes>,
    /// Longest suffix first.
    suffix: Vec<(String, Prefixes)>,
    any: Prefixes,
}

impl Router {
    fn add(&mut self, host: &HostPattern, prefix: &str, pool: usize) {
        let list = match host {
            HostPattern::Any => &mut self.any,
            HostPattern::Exact(h) => self.exact.entry(h.clone()).or_default(),
            HostPattern::Suffix(s) => {
                if let Some(i) = self.suffix.iter().position(|(x, _)| x == s) {
                    &mut self.suffix[i].1
                } else {
                    self.suffix.push((s.clone(), Vec::new()));
                    &mut self.suffix.last_mut().unwrap().1 // just pushed
                }
            }
        };
        list.push((prefix.to_string(), pool));
    }

    fn finish(&mut self) {
        let by_len = |a: &(String, usize), b: &(String, usize)| b.0.len().cmp(&a.0.len());
        self.any.sort_by(by_len);
        for list in self.exact.values_mut() {
            list.sort_by(by_len);
        }
        for (_, list) in &mut self.suffix {
            list.sort_by(by_len);
        }
        self.suffix.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
    }

    /// Host first (exact, then longest `*.suffix`, then `*`); within the most specific
    /// host that has a matching prefix, the longest prefix.
    fn route(&self, host: &str, path: &str) -> Option<usize> {
        let longest = |list: &Prefixes| {
            list.iter()
                .find(|(p, _)| path.starts_with(p.as_str()))
                .map(|(_, i)| *i)
        };
        if let Some(i) = self.exact.get(host).and_then(longest) {
            return Some(i);
        }
        for (suffix, list) in &self.suffix {
            if host.ends_with(suffix.as_str()) {
                if let Some(i) = longest(list) {
                    return Some(i);
                }
            }
        }
        longest(&self.any)
    }
}

pub struct RoutingTable {
    router: Router,
    pub pools: Vec<PoolRoute>,
}

impl RoutingTable {
    /// Each pool's usual answer time, from its members; pools with no answer yet are
    /// left out.
    pub fn median_latencies(&self) -> Vec<(&str, std::time::Duration)> {
        self.pools
            .iter()
            .filter_map(|pool| {
                let members = pool.members.iter().map(|m| &*m.endpoint);
                Some((&*pool.name, vigil_healthcheck::median_latency(members)?))
            })
            .collect()
    }

    /// Each backend's reported utilization and the weight it is balanced by now:
    /// `(pool, backend, utilization, weight)`; 0 for one that is not a candidate.
    pub fn backend_load(&self) -> Vec<(&str, &str, Option<f64>, f64)> {
        let mut rows = Vec::new();
        let now = Instant::now();
        for pool in &self.pools {
            let expiry = pool.config.load_report.expiry;
            let order = match &pool.selector {
                Selector::LoadReport { order, .. } => {
                    Some(order.current(&pool.members, &pool.candidates))
                }
                _ => None,
            };
            for (i, m) in pool.members.iter().enumerate() {
                let (utilization, weight) = match &order {
                    Some(order) => (m.endpoint.load.utilization(now, expiry), order.weights[i]),
                    None if pool.candidates.contains(&i) => (None, f64::from(m.weight)),
                    None => (None, 0.0),
                };
                rows.push((&*pool.name, &*m.endpoint.address, utilization, weight));
            }
        }
        rows
    }

    pub fn empty() -> RoutingTable {
        RoutingTable {
            router: Router::default(),
            pools: Vec::new(),
        }
    }

    pub fn build(
        pools: &[Arc<PoolConfig>],
        membership: &Membership,
        tls: &HashMap<String, Arc<PoolTls>>,
        metrics: &ProxyMetrics,
    ) -> RoutingTable {
        let mut router = Router::default();
        let mut routes = Vec::with_capacity(pools.len());
        for (i, p) in pools.iter().enumerate() {
            for r in &p.routes {
                router.add(&r.host, &r.path_prefix, i);
            }
            // Members in configuration order; a backend the checker does not know yet
            // (reload in progress) is simply absent until it does.
            let known: HashMap<&str, &Member> = membership
                .pool(&p.name)
                .unwrap_or(&[])
                .iter()
                .map(|m| (&*m.endpoint.address, m))
                .collect();
            let members = p
                .backends
                .iter()
                .filter_map(|b| known.get(b.address.as_str()).map(|m| (*m).clone()))
                .collect();
            routes.push(PoolRoute::build(
                p.clone(),
                tls.get(&p.name).cloned(),
                members,
                metrics,
            ));
        }
        router.finish();
        RoutingTable {
            router,
            pools: routes,
        }
    }

    /// The pool for a request, by Host (lower-case, without port) and path, as an
    /// index into `pools`.
    pub fn route_index(&self, host: &str, path: &str) -> Option<usize> {
        self.router.route(host, path)
    }

    pub fn pool(&self, name: &str) -> Option<&PoolRoute> {
        self.pools.iter().find(|p| &*p.name == name)
    }
}

/// `Host` header value → lower-case host without port (copied only when it has an
/// upper-case letter).
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let host = host_of(raw.trim()).trim_end_matches('.');
    match host.bytes().any(|b| b.is_ascii_uppercase()) {
        true => host.to_ascii_lowercase().into(),
        false => host.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(HostPattern, &str, usize)]) -> Router {
        let mut r = Router::default();
        for (h, p, i) in routes {
            r.add(h, p, *i);
        }
        r.finish();
        r
    }

    #[test]
    fn host_before_path_and_longest_prefix() {
        let r = router(&[
            (HostPattern::Any, "/", 0),
            (HostPattern::Any, "/api", 1),
            (HostPattern::Suffix(".example.com".into()), "/", 2),
            (HostPattern::Suffix(".b.example.com".into()), "/", 3),
            (HostPattern::Exact("a.example.com".into()), "/admin", 4),
        ]);
        assert_eq!(r.route("other", "/x"), Some(0));
        assert_eq!(r.route("other", "/api/v1"), Some(1));
        assert_eq!(
            r.route("x.example.com", "/api"),
            Some(2),
            "host wins over a longer path"
        );
        assert_eq!(
            r.route("x.b.example.com", "/"),
            Some(3),
            "longest suffix wins"
        );
        assert_eq!(r.route("a.example.com", "/admin/users"), Some(4));
        assert_eq!(
            r.route("a.example.com", "/other"),
            Some(2),
            "falls back to the next host pattern"
        );
        assert_eq!(
            r.route("example.com", "/"),
            Some(0),
            "*.example.com does not match the apex"
        );
    }

    #[test]
    fn no_route() {
        let r = router(&[(HostPattern::Exact("a".into()), "/", 0)]);
        assert_eq!(r.route("b", "/"), None);
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("localhost"), "localhost");
    }
}
