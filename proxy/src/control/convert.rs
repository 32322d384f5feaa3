//! The one place where configuration becomes the checker's specs.

use crate::dataplane::upstream_tls::PoolTls;
use std::collections::HashMap;
use std::sync::Arc;
use vigil_conf::{CheckKind, Config, PoolConfig};
use vigil_healthcheck::{
    BackendSpec, CheckPolicy, GrpcSpec, HttpSpec, PassivePolicy, ProbeSpec, Schedule, Thresholds,
};

pub fn check_policy(pool: &PoolConfig) -> CheckPolicy {
    let h = &pool.health_check;
    CheckPolicy {
        probe: match h.kind {
            CheckKind::Tcp => ProbeSpec::Tcp,
            CheckKind::Grpc => ProbeSpec::Grpc(GrpcSpec {
                service: h.grpc_service.clone(),
                tls: None,
            }),
            CheckKind::Http => ProbeSpec::Http(HttpSpec {
                path: h.path.clone(),
                host: h.host.clone(),
                expected_status: h.expected_status.clone(),
                expected_body: h.expected_body.clone(),
                reuse_connections: h.reuse_connections,
                max_connection_age: h.max_connection_age,
                tls: None,
            }),
        },
        thresholds: Thresholds::new(h.rise, h.fall),
        schedule: Schedule {
            interval: h.interval,
            fast_interval: h.fast_interval,
            down_interval: h.down_interval,
            backoff_multiplier: h.backoff_multiplier,
            max_down_interval: h.max_down_interval,
            jitter: h.jitter,
        },
        timeout: h.timeout,
        passive: PassivePolicy {
            consecutive_failures: pool.passive.consecutive_failures,
            ejection_time: pool.passive.ejection_time,
            max_ejection_time: pool.passive.max_ejection_time,
            max_ejected_percent: pool.passive.max_ejected_percent,
            stall_detection: pool.passive.stall_detection,
            stall_factor: pool.passive.stall_factor,
            stall_min: pool.passive.stall_min,
        },
        skip_while_serving: h.skip_while_serving,
        agent: h.agent,
    }
}

/// Every backend of every pool, in configuration order. Backends of an HTTPS pool are
/// checked over TLS, each verified under its own name unless the pool sets `sni`.
pub fn backend_specs(config: &Config, tls: &HashMap<String, Arc<PoolTls>>) -> Vec<BackendSpec> {
    let mut out = Vec::new();
    for pool in &config.pools {
        let policy = Arc::new(check_policy(pool));
        let pool_tls = tls.get(&pool.name);
        for b in &pool.backends {
            let probe = match (pool_tls, &policy.probe) {
                (Some(t), ProbeSpec::Http(h)) => Some(ProbeSpec::Http(HttpSpec {
                    tls: t.check_client(&b.address),
                    ..h.clone()
                })),
                (Some(t), ProbeSpec::Grpc(g)) => Some(ProbeSpec::Grpc(GrpcSpec {
                    tls: t.check_client(&b.address),
                    ..g.clone()
                })),
                _ => None,
            };
            let policy = match probe {
                Some(probe) => Arc::new(CheckPolicy {
                    probe,
                    ..(*policy).clone()
                }),
                None => policy.clone(),
            };
            out.push(BackendSpec {
                pool: pool.name.clone(),
                address: b.address.clone(),
                socket_addr: b.socket_addr,
                weight: b.weight,
                slow_start: pool.slow_start,
                policy,
            });
        }
    }
    out
}
