//! One pool's discovery task: looks its name up again and again, keeps its status and
//! metrics, and hands a changed set of backends to the control task.

use super::dns::{lookup, resolver};
use super::{LookupStatus, EMPTY_ANSWERS_TO_EMPTY};
use crate::control::error::ApplyError;
use crate::control::Control;
use prometheus::{GaugeVec, IntCounterVec};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use vigil_conf::{BackendConfig, DiscoveryConfig, DnsConfig};

/// The shortest time between lookups when records' TTL is shorter than `refresh`
/// (Consul and dnsmasq answer with TTL 0).
const MIN_TTL_REFRESH: Duration = Duration::from_secs(1);

/// How long one lookup (every query it makes) may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// When to look again: `refresh`, or the records' TTL if shorter (not under a second).
pub fn next_lookup(refresh: Duration, ttl: Duration) -> Duration {
    refresh.min(ttl.max(MIN_TTL_REFRESH))
}

/// What one pool's discovery task works with.
pub(super) struct Task {
    pub(super) pool: String,
    pub(super) token: u64,
    pub(super) config: DiscoveryConfig,
    pub(super) dns: DnsConfig,
    pub(super) status: Arc<Mutex<LookupStatus>>,
    pub(super) lookups: IntCounterVec,
    pub(super) last_success: GaugeVec,
}

/// `kept`: what an earlier task for the same name found (a reload changed `refresh` or
/// the nameservers): the pool still has it, and empty answers must repeat as ever.
pub(super) async fn run(control: Control, task: Task, kept: Option<Vec<BackendConfig>>) {
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
}
