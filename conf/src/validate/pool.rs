//! One pool: name, routes, balancing, retries and timeouts here; its backends and
//! discovery in `backends`, its health check and passive ejection in `health`.

use crate::schema::*;
use crate::types::*;
use crate::validate::Validator;
use std::time::Duration;

mod backends;
mod health;

impl Validator<'_> {
    pub(super) fn pool(&mut self, path: &str, raw: RawPool) -> PoolConfig {
        let name = raw.name.unwrap_or_default();
        self.pool_name(&format!("{path}.name"), &name);
        let routes = self.routes(path, raw.routes);
        let (balance, hash_key) =
            self.balancing(path, raw.balance.as_deref(), raw.hash_key.as_deref());
        let retries = self.int(&format!("{path}.retries"), raw.retries, 2, 0, 100) as u32;
        let retry_on_status = self.retry_on_status(path, raw.retry_on_status);
        let panic_threshold =
            self.percent(&format!("{path}.panic_threshold"), raw.panic_threshold, 0.0);
        let (connect_timeout, read_timeout) =
            self.timeouts(path, &raw.connect_timeout, &raw.read_timeout);
        let discovery = raw
            .discovery
            .and_then(|d| self.discovery(&format!("{path}.discovery"), d));
        let backends = self.backends(path, &name, raw.backends, discovery.is_some());
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
        let slow_start = self.slow_start(&format!("{path}.slow_start"), &raw.slow_start);
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

    fn pool_name(&mut self, path: &str, name: &str) {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            self.error(path, format!("pool name {name:?} must match [a-z0-9_-]+"));
        } else if name == "-" {
            // Metrics label requests answered before routing with pool="-".
            self.error(path, "pool name \"-\" is reserved");
        }
    }

    /// The pool's routes; none written: every host, every path.
    fn routes(&mut self, path: &str, raw: Option<Vec<RawRoute>>) -> Vec<RouteConfig> {
        match raw {
            None => vec![RouteConfig {
                host: HostPattern::Any,
                path_prefix: "/".into(),
            }],
            Some(list) => list
                .into_iter()
                .enumerate()
                .map(|(j, r)| self.route(&format!("{path}.routes.{j}"), r))
                .collect(),
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

    /// `balance`, and `hash_key`: wanted by `consistent_hash`, and by nothing else.
    fn balancing(
        &mut self,
        path: &str,
        balance: Option<&str>,
        hash_key: Option<&str>,
    ) -> (Balance, Option<HashKey>) {
        let balance = match balance {
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
        let key = hash_key.and_then(|k| self.hash_key(&format!("{path}.hash_key"), k));
        if balance == Balance::ConsistentHash && hash_key.is_none() {
            self.error(
                &format!("{path}.balance"),
                "consistent_hash needs a hash_key (header:NAME, client_ip or path)",
            );
        }
        if balance != Balance::ConsistentHash && hash_key.is_some() {
            self.error(
                &format!("{path}.hash_key"),
                "hash_key is only used with balance: consistent_hash",
            );
        }
        (balance, key)
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

    /// The statuses retried; an entry out of range is reported and left out.
    fn retry_on_status(&mut self, path: &str, raw: Option<Vec<i64>>) -> Vec<u16> {
        let Some(list) = raw else {
            return vec![502, 503, 504];
        };
        let mut out = Vec::new();
        for (j, s) in list.into_iter().enumerate() {
            let v = self.int(&format!("{path}.retry_on_status.{j}"), Some(s), 0, 100, 599);
            if v != 0 {
                out.push(v as u16);
            }
        }
        out
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

    /// `connect_timeout` and `read_timeout`, neither of them 0.
    fn timeouts(
        &mut self,
        path: &str,
        connect: &Option<String>,
        read: &Option<String>,
    ) -> (Duration, Duration) {
        let connect_timeout = self.duration(
            &format!("{path}.connect_timeout"),
            connect,
            Duration::from_secs(3),
        );
        let read_timeout = self.duration(
            &format!("{path}.read_timeout"),
            read,
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
        (connect_timeout, read_timeout)
    }

    fn slow_start(&mut self, path: &str, raw: &Option<String>) -> Duration {
        let slow_start = self.duration(path, raw, Duration::ZERO);
        if slow_start > Duration::from_secs(3600) {
            self.error(
                path,
                format!("slow_start must be at most 1h, got {slow_start:?}"),
            );
        }
        slow_start
    }
}

fn http_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
