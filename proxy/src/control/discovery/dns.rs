//! One DNS lookup of a discovery name: the resolver and what its answer names.

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use vigil_conf::{BackendConfig, BackendSource, DiscoveryName, DnsConfig};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_socket_addresses() {
        assert_eq!(address("127.0.0.2:80".parse().unwrap()), "127.0.0.2:80");
        assert_eq!(address("[::1]:80".parse().unwrap()), "[::1]:80");
        assert_eq!(absolute("a.b"), "a.b.");
        assert_eq!(absolute("a.b."), "a.b.");
    }
}
