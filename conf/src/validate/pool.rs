//! One pool: name, routes, balancing, retries and timeouts here; its backends and
//! discovery in `backends`, its health check and passive ejection in `health`.

use crate::bounds::{self, FloatRange};
use crate::choice::one_of;
use crate::duration::format_duration;
use crate::schema::*;
use crate::types::*;
use crate::validate::Validator;
use std::time::Duration;

mod backends;
mod health;
mod load;

impl Validator<'_> {
    pub(super) fn pool(&mut self, path: &str, raw: RawPool) -> PoolConfig {
        let name = raw.name.unwrap_or_default();
        self.pool_name(&format!("{path}.name"), &name);
        let routes = self.routes(path, raw.routes);
        let (balance, hash_key) =
            self.balancing(path, raw.balance.as_deref(), raw.hash_key.as_deref());
        let retries = self.int(
            &format!("{path}.retries"),
            raw.retries,
            PoolConfig::DEFAULT_RETRIES.into(),
            bounds::RETRIES,
        ) as u32;
        let retry_on_status = self.retry_on_status(path, raw.retry_on_status);
        let panic_threshold = self.percent(
            &format!("{path}.panic_threshold"),
            raw.panic_threshold,
            PoolConfig::DEFAULT_PANIC_THRESHOLD,
        );
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
        let max_requests = self.int(
            &format!("{path}.max_requests"),
            raw.max_requests,
            PoolConfig::DEFAULT_MAX_REQUESTS.into(),
            bounds::MAX_REQUESTS,
        ) as u32;
        let queue = self.queue(&format!("{path}.queue"), raw.queue.unwrap_or_default());
        let retry_budget = self.retry_budget(
            &format!("{path}.retry_budget"),
            raw.retry_budget.unwrap_or_default(),
        );
        let load_report = self.load_report(
            &format!("{path}.load_report"),
            raw.load_report.unwrap_or_default(),
        );
        PoolConfig {
            retry_budget,
            load_report,
            max_requests,
            queue,
            discovery,
            slow_start,
            name,
            routes,
            balance,
            hash_key,
            retries,
            retry_on_status,
            panic_threshold,
            fail_open: raw.fail_open.unwrap_or(PoolConfig::DEFAULT_FAIL_OPEN),
            forward_original_path: (raw.forward_original_path)
                .unwrap_or(PoolConfig::DEFAULT_FORWARD_ORIGINAL_PATH),
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
            self.error(
                path,
                format!("pool name {name:?} must match {}", bounds::POOL_NAME),
            );
        } else if name == "-" {
            // Metrics label requests answered before routing with pool="-".
            self.error(path, "pool name \"-\" is reserved");
        }
    }

    /// The pool's routes; none written: every host, every path.
    fn routes(&mut self, path: &str, raw: Option<Vec<RawRoute>>) -> Vec<RouteConfig> {
        match raw {
            None => vec![self.route(path, RawRoute::default())],
            Some(list) => list
                .into_iter()
                .enumerate()
                .map(|(j, r)| self.route(&format!("{path}.routes.{j}"), r))
                .collect(),
        }
    }

    fn route(&mut self, path: &str, raw: RawRoute) -> RouteConfig {
        let host_text = (raw.host)
            .unwrap_or_else(|| RouteConfig::DEFAULT_HOST.into())
            .to_ascii_lowercase();
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
        let path_prefix =
            (raw.path_prefix).unwrap_or_else(|| RouteConfig::DEFAULT_PATH_PREFIX.into());
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
        let words = one_of::<Balance>(str::to_string);
        let balance: Balance = (self.choice(&format!("{path}.balance"), balance, |other| {
            format!("unknown balance {other:?}: use {words}")
        }))
        .unwrap_or_default();
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
            return PoolConfig::DEFAULT_RETRY_ON_STATUS.to_vec();
        };
        let mut out = Vec::new();
        for (j, s) in list.into_iter().enumerate() {
            let at = format!("{path}.retry_on_status.{j}");
            let v = self.int(&at, Some(s), 0, bounds::STATUS);
            if v != 0 {
                out.push(v as u16);
            }
        }
        out
    }

    fn percent(&mut self, path: &str, raw: Option<f64>, default: f64) -> f64 {
        let FloatRange { min, max, .. } = bounds::PERCENT;
        match raw {
            None => default,
            Some(v) if !bounds::PERCENT.contains(v) => {
                self.error(
                    path,
                    format!("must be a percentage between {min} and {max}, got {v}"),
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
            PoolConfig::DEFAULT_CONNECT_TIMEOUT,
        );
        let read_timeout = self.duration(
            &format!("{path}.read_timeout"),
            read,
            PoolConfig::DEFAULT_READ_TIMEOUT,
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

    /// `queue`: its size and how long a request waits in it.
    fn queue(&mut self, path: &str, raw: RawQueue) -> QueueConfig {
        let size = self.int(
            &format!("{path}.size"),
            raw.size,
            QueueConfig::DEFAULT_SIZE.into(),
            bounds::QUEUE_SIZE,
        ) as u32;
        let timeout = self.duration(
            &format!("{path}.timeout"),
            &raw.timeout,
            QueueConfig::DEFAULT_TIMEOUT,
        );
        if !bounds::QUEUE_TIMEOUT.contains(timeout) {
            let (min, max) = (bounds::QUEUE_TIMEOUT.min, bounds::QUEUE_TIMEOUT.max);
            self.error(
                &format!("{path}.timeout"),
                format!(
                    "timeout must be between {} and {}, got {timeout:?}",
                    format_duration(min),
                    format_duration(max)
                ),
            );
        }
        QueueConfig { size, timeout }
    }

    fn slow_start(&mut self, path: &str, raw: &Option<String>) -> Duration {
        let slow_start = self.duration(path, raw, PoolConfig::DEFAULT_SLOW_START);
        if slow_start > bounds::SLOW_START_MAX {
            let max = format_duration(bounds::SLOW_START_MAX);
            self.error(
                path,
                format!("slow_start must be at most {max}, got {slow_start:?}"),
            );
        }
        slow_start
    }
}

fn http_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
