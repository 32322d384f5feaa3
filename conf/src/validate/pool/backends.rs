//! A pool's backends: those the file lists, and where discovery finds more.

use crate::bounds;
use crate::duration::format_duration;
use crate::schema::*;
use crate::types::*;
use crate::validate::Validator;
use std::collections::HashSet;

impl Validator<'_> {
    /// The backends the file lists, each once, at an address that resolves. A pool
    /// lists at least one unless `discovery` finds them.
    pub(super) fn backends(
        &mut self,
        path: &str,
        pool: &str,
        raw: Option<Vec<RawBackend>>,
        discovered: bool,
    ) -> Vec<BackendConfig> {
        let list = match raw {
            Some(list) if !list.is_empty() => list,
            _ if discovered => return Vec::new(),
            None => {
                self.error(
                    path,
                    format!("pool {pool:?} needs `backends` (or `discovery`)"),
                );
                return Vec::new();
            }
            Some(_) => {
                self.error(
                    &format!("{path}.backends"),
                    format!("pool {pool:?} has no backends"),
                );
                return Vec::new();
            }
        };
        let mut backends = Vec::new();
        let mut seen = HashSet::new();
        for (j, b) in list.into_iter().enumerate() {
            let bpath = format!("{path}.backends.{j}");
            let weight = self.int(
                &format!("{bpath}.weight"),
                b.weight,
                BackendConfig::DEFAULT_WEIGHT.into(),
                bounds::WEIGHT,
            ) as u32;
            let Some(address) = b.address else {
                self.error(&bpath, "backend needs an `address`");
                continue;
            };
            if !seen.insert(address.clone()) {
                self.error(
                    &format!("{bpath}.address"),
                    format!("backend {address} is listed twice in pool {pool:?}"),
                );
                continue;
            }
            if let Some(socket_addr) = self.socket(&format!("{bpath}.address"), &address) {
                backends.push(BackendConfig {
                    address,
                    socket_addr,
                    weight,
                    source: BackendSource::File,
                });
            }
        }
        backends
    }

    /// `discovery`: exactly one of `srv` and `a` (`host:port`), and `refresh`.
    pub(super) fn discovery(&mut self, path: &str, raw: RawDiscovery) -> Option<DiscoveryConfig> {
        let refresh = self.duration(
            &format!("{path}.refresh"),
            &raw.refresh,
            DiscoveryConfig::DEFAULT_REFRESH,
        );
        if !bounds::DISCOVERY_REFRESH.contains(refresh) {
            let (min, max) = (bounds::DISCOVERY_REFRESH.min, bounds::DISCOVERY_REFRESH.max);
            self.error(
                &format!("{path}.refresh"),
                format!(
                    "refresh must be between {} and {}, got {refresh:?}",
                    format_duration(min),
                    format_duration(max)
                ),
            );
        }
        let (key, name) = match (raw.srv, raw.a) {
            (Some(_), Some(_)) => {
                self.error(path, "discovery takes one of `srv` and `a`, not both");
                return None;
            }
            (None, None) => {
                self.error(
                    path,
                    "discovery needs `srv` (an SRV name) or `a` (host:port)",
                );
                return None;
            }
            (Some(srv), None) => (
                "srv",
                dns_name(&srv).map(|n| DiscoveryName::Srv(n.to_string())),
            ),
            (None, Some(a)) => (
                "a",
                a.rsplit_once(':').and_then(|(host, port)| {
                    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
                    let host = dns_name(host)?;
                    Some(DiscoveryName::A {
                        host: host.to_string(),
                        port,
                    })
                }),
            ),
        };
        let at = self.place(&format!("{path}.{key}"));
        match name {
            Some(name) => Some(DiscoveryConfig { name, refresh, at }),
            None => {
                let want = if key == "srv" {
                    "an SRV name such as _http._tcp.api.internal"
                } else {
                    "host:port, such as api.internal:8080"
                };
                self.error(&format!("{path}.{key}"), format!("`{key}` needs {want}"));
                None
            }
        }
    }
}

/// A DNS name as written (a trailing dot allowed), or None if it cannot be one.
fn dns_name(text: &str) -> Option<&str> {
    let name = text.strip_suffix('.').unwrap_or(text);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(name)
}
