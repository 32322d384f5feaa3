//! One pool: name, backends, routes, balancing, health check and passive ejection.

use super::Validator;
use crate::schema::*;
use crate::types::*;
use std::collections::HashSet;
use std::time::Duration;

impl Validator<'_> {
    pub(super) fn pool(&mut self, path: &str, raw: RawPool) -> PoolConfig {
        let name = raw.name.unwrap_or_default();
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid_name {
            self.error(
                &format!("{path}.name"),
                format!("pool name {name:?} must match [a-z0-9_-]+"),
            );
        } else if name == "-" {
            // Metrics label requests answered before routing with pool="-".
            self.error(&format!("{path}.name"), "pool name \"-\" is reserved");
        }

        let routes = match raw.routes {
            None => vec![RouteConfig {
                host: HostPattern::Any,
                path_prefix: "/".into(),
            }],
            Some(list) => list
                .into_iter()
                .enumerate()
                .map(|(j, r)| self.route(&format!("{path}.routes.{j}"), r))
                .collect(),
        };

        let balance = match raw.balance.as_deref() {
            None | Some("round_robin") => Balance::RoundRobin,
            Some("weighted_round_robin") => Balance::WeightedRoundRobin,
            Some("least_requests") => Balance::LeastRequests,
            Some("peak_ewma") => Balance::PeakEwma,
            Some("consistent_hash") => Balance::ConsistentHash,
            Some(other) => {
                self.error(&format!("{path}.balance"), format!("unknown balance {other:?}: use round_robin, weighted_round_robin, least_requests, peak_ewma or consistent_hash"));
                Balance::RoundRobin
            }
        };
        let hash_key = raw
            .hash_key
            .as_deref()
            .and_then(|k| self.hash_key(&format!("{path}.hash_key"), k));
        if balance == Balance::ConsistentHash && raw.hash_key.is_none() {
            self.error(
                &format!("{path}.balance"),
                "consistent_hash needs a hash_key (header:NAME, client_ip or path)",
            );
        }
        if balance != Balance::ConsistentHash && raw.hash_key.is_some() {
            self.error(
                &format!("{path}.hash_key"),
                "hash_key is only used with balance: consistent_hash",
            );
        }

        let retries = self.int(&format!("{path}.retries"), raw.retries, 2, 0, 100) as u32;
        let retry_on_status = match raw.retry_on_status {
            None => vec![502, 503, 504],
            Some(list) => {
                let mut out = Vec::new();
                for (j, s) in list.into_iter().enumerate() {
                    let v = self.int(&format!("{path}.retry_on_status.{j}"), Some(s), 0, 100, 599);
                    if v != 0 {
                        out.push(v as u16);
                    }
                }
                out
            }
        };
        let panic_threshold =
            self.percent(&format!("{path}.panic_threshold"), raw.panic_threshold, 0.0);
        let connect_timeout = self.duration(
            &format!("{path}.connect_timeout"),
            &raw.connect_timeout,
            Duration::from_secs(3),
        );
        let read_timeout = self.duration(
            &format!("{path}.read_timeout"),
            &raw.read_timeout,
            Duration::from_secs(30),
        );
        for (key, v) in [
            ("connect_timeout", connect_timeout),
            ("read_timeout", read_timeout),
        ] {
            if v.is_zero() {
                self.error(
                    &format!("{path}.{key}"),
                    format!("{key} must be greater than 0"),
                );
            }
        }

        let mut backends = Vec::new();
        let mut seen = HashSet::new();
        let discovery = raw
            .discovery
            .and_then(|d| self.discovery(&format!("{path}.discovery"), d));
        match raw.backends {
            None if discovery.is_some() => {}
            Some(list) if list.is_empty() && discovery.is_some() => {}
            None => self.error(
                path,
                format!("pool {name:?} needs `backends` (or `discovery`)"),
            ),
            Some(list) if list.is_empty() => self.error(
                &format!("{path}.backends"),
                format!("pool {name:?} has no backends"),
            ),
            Some(list) => {
                for (j, b) in list.into_iter().enumerate() {
                    let bpath = format!("{path}.backends.{j}");
                    let weight =
                        self.int(&format!("{bpath}.weight"), b.weight, 1, 1, 1_000_000) as u32;
                    let Some(address) = b.address else {
                        self.error(&bpath, "backend needs an `address`");
                        continue;
                    };
                    if !seen.insert(address.clone()) {
                        self.error(
                            &format!("{bpath}.address"),
                            format!("backend {address} is listed twice in pool {name:?}"),
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
            }
        }

        let health_check = self.health_check(
            &format!("{path}.health_check"),
            raw.health_check.unwrap_or_default(),
        );
        let passive = self.passive(&format!("{path}.passive"), raw.passive.unwrap_or_default());
        let tls = raw
            .tls
            .map(|t| self.upstream_tls(&format!("{path}.tls"), t));
        let protocol = self.protocol(
            path,
            raw.protocol.as_deref(),
            tls.is_some(),
            health_check.kind,
        );
        let slow_start = self.duration(
            &format!("{path}.slow_start"),
            &raw.slow_start,
            Duration::ZERO,
        );
        if slow_start > Duration::from_secs(3600) {
            self.error(
                &format!("{path}.slow_start"),
                format!("slow_start must be at most 1h, got {slow_start:?}"),
            );
        }
        PoolConfig {
            discovery,
            slow_start,
            name,
            routes,
            balance,
            hash_key,
            retries,
            retry_on_status,
            panic_threshold,
            fail_open: raw.fail_open.unwrap_or(true),
            forward_original_path: raw.forward_original_path.unwrap_or(false),
            connect_timeout,
            read_timeout,
            backends,
            health_check,
            passive,
            tls,
            protocol,
        }
    }

    /// `discovery`: exactly one of `srv` and `a` (`host:port`), and `refresh`.
    fn discovery(&mut self, path: &str, raw: RawDiscovery) -> Option<DiscoveryConfig> {
        let refresh = self.duration(
            &format!("{path}.refresh"),
            &raw.refresh,
            Duration::from_secs(5),
        );
        if refresh < Duration::from_millis(100) || refresh > Duration::from_secs(3600) {
            self.error(
                &format!("{path}.refresh"),
                format!("refresh must be between 100ms and 1h, got {refresh:?}"),
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

    fn percent(&mut self, path: &str, raw: Option<f64>, default: f64) -> f64 {
        match raw {
            None => default,
            Some(v) if !(0.0..=100.0).contains(&v) => {
                self.error(
                    path,
                    format!("must be a percentage between 0 and 100, got {v}"),
                );
                default
            }
            Some(v) => v,
        }
    }

    fn route(&mut self, path: &str, raw: RawRoute) -> RouteConfig {
        let host_text = raw.host.unwrap_or_else(|| "*".into()).to_ascii_lowercase();
        let host = if host_text == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host_text.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                self.error(
                    &format!("{path}.host"),
                    format!("host {host_text:?}: use exact, \"*.suffix\" or \"*\""),
                );
            }
            HostPattern::Suffix(format!(".{suffix}"))
        } else {
            if host_text.is_empty() || host_text.contains('*') {
                self.error(
                    &format!("{path}.host"),
                    format!("host {host_text:?}: use exact, \"*.suffix\" or \"*\""),
                );
            }
            HostPattern::Exact(host_text)
        };
        let path_prefix = raw.path_prefix.unwrap_or_else(|| "/".into());
        if !path_prefix.starts_with('/') {
            self.error(
                &format!("{path}.path_prefix"),
                format!("path_prefix {path_prefix:?} must start with '/'"),
            );
        }
        RouteConfig { host, path_prefix }
    }

    fn hash_key(&mut self, path: &str, text: &str) -> Option<HashKey> {
        match text {
            "client_ip" => Some(HashKey::ClientIp),
            "path" => Some(HashKey::Path),
            t => match t.strip_prefix("header:") {
                Some(name) if !name.is_empty() && http_token(name) => {
                    Some(HashKey::Header(name.to_ascii_lowercase()))
                }
                _ => {
                    self.error(
                        path,
                        format!("hash_key {t:?}: use header:NAME, client_ip or path"),
                    );
                    None
                }
            },
        }
    }

    fn health_check(&mut self, path: &str, raw: RawHealthCheck) -> HealthCheckConfig {
        let d = HealthCheckConfig::default();
        let p = |k: &str| format!("{path}.{k}");
        let kind = match raw.kind.as_deref() {
            None | Some("http") => CheckKind::Http,
            Some("tcp") => CheckKind::Tcp,
            Some("grpc") => CheckKind::Grpc,
            Some(other) => {
                self.error(
                    &p("type"),
                    format!("unknown health check type {other:?}: use http, tcp or grpc"),
                );
                CheckKind::Http
            }
        };
        let check_path = raw.path.unwrap_or(d.path.clone());
        if !check_path.starts_with('/') || check_path.bytes().any(|b| b <= b' ') {
            self.error(
                &p("path"),
                format!("health check path {check_path:?} must start with '/' and have no spaces"),
            );
        }
        if let Some(h) = &raw.host {
            if h.is_empty() || h.bytes().any(|b| b <= b' ') {
                self.error(
                    &p("host"),
                    format!("health check host {h:?} is not a valid Host header"),
                );
            }
        }
        let expected_status = match raw.expected_status {
            None => d.expected_status.clone(),
            Some(list) if list.is_empty() => {
                self.error(
                    &p("expected_status"),
                    "expected_status needs at least one code or range",
                );
                d.expected_status.clone()
            }
            Some(list) => list
                .into_iter()
                .enumerate()
                .filter_map(|(j, s)| self.status_range(&format!("{path}.expected_status.{j}"), s))
                .collect(),
        };
        let interval = self.duration(&p("interval"), &raw.interval, d.interval);
        let fast_interval = self.duration(&p("fast_interval"), &raw.fast_interval, d.fast_interval);
        let down_interval = self.duration(&p("down_interval"), &raw.down_interval, interval);
        let max_down_interval = self.duration(
            &p("max_down_interval"),
            &raw.max_down_interval,
            d.max_down_interval,
        );
        // Like HAProxy's check timeout, which defaults to `inter`: a pool that only
        // shortens its interval must not be refused for a timeout it never wrote.
        let timeout = self.duration(&p("timeout"), &raw.timeout, d.timeout.min(interval));
        let max_connection_age = self.duration(
            &p("max_connection_age"),
            &raw.max_connection_age,
            d.max_connection_age,
        );
        for (key, v) in [
            ("interval", interval),
            ("fast_interval", fast_interval),
            ("down_interval", down_interval),
            ("timeout", timeout),
        ] {
            if v.is_zero() {
                self.error(&p(key), format!("{key} must be greater than 0"));
            }
        }
        if timeout > interval {
            self.error(
                &p("timeout"),
                format!("timeout ({timeout:?}) must not exceed interval ({interval:?})"),
            );
        }
        if raw.max_down_interval.is_some() && max_down_interval < down_interval {
            self.error(&p("max_down_interval"), format!("max_down_interval ({max_down_interval:?}) is below down_interval ({down_interval:?})"));
        }
        let max_down_interval = max_down_interval.max(down_interval);
        let backoff_multiplier = raw.backoff_multiplier.unwrap_or(d.backoff_multiplier);
        if !(1.0..=100.0).contains(&backoff_multiplier) {
            self.error(
                &p("backoff_multiplier"),
                format!("backoff_multiplier must be between 1 and 100, got {backoff_multiplier}"),
            );
        }
        let jitter = raw.jitter.unwrap_or(d.jitter);
        if !(0.0..1.0).contains(&jitter) {
            self.error(
                &p("jitter"),
                format!("jitter must be at least 0 and below 1, got {jitter}"),
            );
        }
        let rise = self.int(&p("rise"), raw.rise, 2, 1, 1000) as u32;
        let fall = self.int(&p("fall"), raw.fall, 3, 1, 1000) as u32;
        HealthCheckConfig {
            kind,
            path: check_path,
            host: raw.host,
            expected_status,
            expected_body: raw.expected_body,
            interval,
            fast_interval,
            down_interval,
            backoff_multiplier,
            max_down_interval,
            jitter,
            timeout,
            rise,
            fall,
            reuse_connections: raw.reuse_connections.unwrap_or(true),
            max_connection_age,
            grpc_service: raw.grpc_service.unwrap_or_default(),
            skip_while_serving: raw.skip_while_serving.unwrap_or(false),
        }
    }

    fn status_range(&mut self, path: &str, raw: RawStatus) -> Option<(u16, u16)> {
        let range = match &raw {
            RawStatus::Code(c) => Some((*c, *c)),
            RawStatus::Text(t) => match t.split_once('-') {
                Some((a, b)) => a.trim().parse().ok().zip(b.trim().parse().ok()),
                None => t.trim().parse().ok().map(|c| (c, c)),
            },
        };
        match range {
            Some((lo, hi))
                if (100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi =>
            {
                Some((lo as u16, hi as u16))
            }
            _ => {
                self.error(path, format!("expected_status entry {raw:?} must be a code or range like \"200-399\" within 100-599"));
                None
            }
        }
    }

    fn passive(&mut self, path: &str, raw: RawPassive) -> PassiveConfig {
        let d = PassiveConfig::default();
        let p = |k: &str| format!("{path}.{k}");
        let consecutive_failures = self.int(
            &p("consecutive_failures"),
            raw.consecutive_failures,
            5,
            0,
            1_000_000,
        ) as u32;
        let ejection_time = self.duration(&p("ejection_time"), &raw.ejection_time, d.ejection_time);
        let max_ejection_time = self.duration(
            &p("max_ejection_time"),
            &raw.max_ejection_time,
            d.max_ejection_time,
        );
        if ejection_time.is_zero() {
            self.error(&p("ejection_time"), "ejection_time must be greater than 0");
        }
        if max_ejection_time < ejection_time {
            self.error(&p("max_ejection_time"), format!("max_ejection_time ({max_ejection_time:?}) is below ejection_time ({ejection_time:?})"));
        }
        let max_ejected_percent = self.percent(
            &p("max_ejected_percent"),
            raw.max_ejected_percent,
            d.max_ejected_percent,
        );
        let stall_factor = raw.stall_factor.unwrap_or(d.stall_factor);
        if !(2.0..=1000.0).contains(&stall_factor) {
            self.error(
                &p("stall_factor"),
                format!("stall_factor must be between 2 and 1000, got {stall_factor}"),
            );
        }
        let stall_min = self.duration(&p("stall_min"), &raw.stall_min, d.stall_min);
        if stall_min < Duration::from_millis(50) {
            self.error(&p("stall_min"), "stall_min must be at least 50ms");
        }
        PassiveConfig {
            consecutive_failures,
            ejection_time,
            max_ejection_time: max_ejection_time.max(ejection_time),
            max_ejected_percent,
            stall_detection: raw.stall_detection.unwrap_or(d.stall_detection),
            stall_factor,
            stall_min,
        }
    }
}

fn http_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
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
