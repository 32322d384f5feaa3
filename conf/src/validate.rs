//! Raw schema → typed `Config`. Every check runs, every error is kept, each pointing
//! at the value it is about.

use crate::bounds::{self, IntRange};
use crate::choice::{one_of, Choice};
use crate::duration::{format_duration, parse_duration};
use crate::error::{ConfigError, ConfigErrors};
use crate::marks::Marks;
use crate::schema::*;
use crate::types::*;
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod pool;
mod tls;

pub(crate) struct Validator<'a> {
    file: &'a str,
    marks: &'a Marks,
    errors: Vec<ConfigError>,
}

impl<'a> Validator<'a> {
    pub(crate) fn new(file: &'a str, marks: &'a Marks) -> Self {
        Validator {
            file,
            marks,
            errors: Vec::new(),
        }
    }

    pub(crate) fn error_at_key(&mut self, path: &str, message: String) {
        let pos = self.marks.key(path);
        self.push(pos.line, pos.col, message);
    }

    pub(crate) fn error(&mut self, path: &str, message: impl Into<String>) {
        let pos = self.marks.value(path);
        self.push(pos.line, pos.col, message.into());
    }

    fn push(&mut self, line: usize, col: usize, message: String) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            col,
            message,
        });
    }

    pub(crate) fn finish(mut self, config: Config) -> Result<Config, ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(config);
        }
        self.errors.sort_by_key(|e| (e.line, e.col));
        self.errors.dedup();
        Err(ConfigErrors(self.errors))
    }

    pub(crate) fn duration(
        &mut self,
        path: &str,
        raw: &Option<String>,
        default: Duration,
    ) -> Duration {
        match raw {
            None => default,
            Some(text) => parse_duration(text).unwrap_or_else(|e| {
                let key = path.rsplit('.').next().unwrap_or(path);
                self.error(path, format!("{key}: {e}"));
                default
            }),
        }
    }

    pub(crate) fn int(
        &mut self,
        path: &str,
        raw: Option<i64>,
        default: i64,
        IntRange { min, max }: IntRange,
    ) -> i64 {
        match raw {
            None => default,
            Some(v) if v < min || v > max => {
                let key = path.rsplit('.').next().unwrap_or(path);
                self.error(
                    path,
                    format!("{key} must be between {min} and {max}, got {v}"),
                );
                default
            }
            Some(v) => v,
        }
    }

    /// One of `T`'s words, `T::default()` when omitted; None for a word `T` does not
    /// have, reported as `message(word)`.
    pub(crate) fn choice<T: Choice>(
        &mut self,
        path: &str,
        raw: Option<&str>,
        message: impl FnOnce(&str) -> String,
    ) -> Option<T> {
        let Some(word) = raw else {
            return Some(T::default());
        };
        let parsed = T::parse(word);
        if parsed.is_none() {
            self.error(path, message(word));
        }
        parsed
    }

    fn socket(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Some(addr);
        }
        if !text.contains(':') {
            self.error(path, format!("address {text:?} needs a port (host:port)"));
            return None;
        }
        match text.to_socket_addrs() {
            // Prefer IPv4: loopback names resolve to both and backends usually bind v4.
            Ok(addrs) => {
                let addrs: Vec<_> = addrs.collect();
                let pick = addrs
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or(addrs.first())
                    .copied();
                if pick.is_none() {
                    self.error(path, format!("address {text:?} resolves to nothing"));
                }
                pick
            }
            Err(e) => {
                self.error(
                    path,
                    format!("address {text:?} does not parse or resolve: {e}"),
                );
                None
            }
        }
    }

    pub(crate) fn config(&mut self, raw: RawConfig) -> Config {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as i64;
        let threads = self.int("threads", raw.threads, cores, bounds::THREADS) as usize;
        let cpu_affinity = self.cpu_affinity(raw.cpu_affinity.as_deref());
        let grace_period = self.duration(
            "grace_period",
            &raw.grace_period,
            Config::DEFAULT_GRACE_PERIOD,
        );
        let listeners = self.listeners(raw.listeners);
        let admin = self.admin(raw.admin.unwrap_or_default(), &listeners);
        let max_concurrent_checks = self.int(
            "checker.max_concurrent_checks",
            raw.checker.unwrap_or_default().max_concurrent_checks,
            CheckerConfig::default().max_concurrent_checks as i64,
            bounds::MAX_CONCURRENT_CHECKS,
        ) as usize;
        let metrics = MetricsConfig {
            per_backend: (raw.metrics.and_then(|m| m.per_backend))
                .unwrap_or(MetricsConfig::default().per_backend),
        };
        let pools = self.pools(raw.pools);
        self.cross_pool(&pools);
        let limits = self.limits(raw.limits.unwrap_or_default());
        let http2 = self.http2(raw.http2.unwrap_or_default());
        let access_log = self.access_log(raw.access_log.unwrap_or_default());
        let upgrade_socket = self.upgrade_socket(raw.upgrade_socket, &admin);
        let dns = self.dns(raw.dns.unwrap_or_default());
        let fleet = raw.fleet.map(|f| self.fleet(f));
        Config {
            fleet,
            dns,
            upgrade_socket,
            threads,
            cpu_affinity,
            grace_period,
            listeners,
            admin,
            checker: CheckerConfig {
                max_concurrent_checks,
            },
            metrics,
            limits,
            http2,
            access_log,
            pools: pools.into_iter().map(Arc::new).collect(),
        }
    }

    fn cpu_affinity(&mut self, raw: Option<&str>) -> CpuAffinity {
        let words = one_of::<CpuAffinity>(str::to_string);
        self.choice("cpu_affinity", raw, |other| {
            format!("cpu_affinity must be {words}, got {other:?}")
        })
        .unwrap_or_default()
    }

    fn listeners(&mut self, raw: Option<Vec<RawListener>>) -> Vec<ListenerConfig> {
        match raw {
            None => {
                self.error(
                    "",
                    "`listeners` is required: at least one address to accept requests on",
                );
                Vec::new()
            }
            Some(list) if list.is_empty() => {
                self.error("listeners", "`listeners` needs at least one address");
                Vec::new()
            }
            Some(list) => list
                .into_iter()
                .enumerate()
                .filter_map(|(i, l)| self.listener(&format!("listeners.{i}"), l))
                .collect(),
        }
    }

    fn listener(&mut self, path: &str, raw: RawListener) -> Option<ListenerConfig> {
        let Some(a) = &raw.address else {
            self.error(path, "listener needs an `address`");
            return None;
        };
        let max_connections = self.int(
            &format!("{path}.max_connections"),
            raw.max_connections,
            ListenerConfig::DEFAULT_MAX_CONNECTIONS as i64,
            bounds::MAX_CONNECTIONS,
        ) as usize;
        let tls = raw
            .tls
            .map(|t| self.listener_tls(&format!("{path}.tls"), t));
        let http2 = raw.http2.unwrap_or(tls.is_some());
        let address = self.socket(&format!("{path}.address"), a)?;
        Some(ListenerConfig {
            address,
            max_connections,
            tls: tls.flatten(),
            http2,
        })
    }

    /// The admin API's address, off every listener, and its authentication: a token, or
    /// a loopback address, or an explicit choice to run it open.
    fn admin(&mut self, raw: RawAdmin, listeners: &[ListenerConfig]) -> AdminConfig {
        let address = match raw.address.as_deref() {
            Some(text) => self
                .socket("admin.address", text)
                .unwrap_or(AdminConfig::DEFAULT_ADDRESS),
            None => AdminConfig::DEFAULT_ADDRESS,
        };
        if listeners.iter().any(|l| l.address == address) {
            self.error(
                "admin.address",
                format!("admin address {address} is also a listener"),
            );
        }
        if raw.token.as_deref() == Some("") {
            self.error(
                "admin.token",
                "admin token is empty; remove the key to disable auth",
            );
        }
        let allow_unauthenticated = raw.allow_unauthenticated.unwrap_or(false);
        if !address.ip().is_loopback() && raw.token.is_none() && !allow_unauthenticated {
            self.error(
                "admin.address",
                format!(
                    "admin address {address} is not loopback and admin.token is not set: \
                     anyone who reaches it could reload the config and change backend states; \
                     set admin.token, or admin.allow_unauthenticated: true to run it open"
                ),
            );
        }
        AdminConfig {
            address,
            token: raw.token,
            allow_unauthenticated,
        }
    }

    fn pools(&mut self, raw: Option<Vec<RawPool>>) -> Vec<PoolConfig> {
        match raw {
            None => {
                self.error("", "`pools` is required: at least one pool of backends");
                Vec::new()
            }
            Some(list) if list.is_empty() => {
                self.error("pools", "`pools` needs at least one pool");
                Vec::new()
            }
            Some(list) => list
                .into_iter()
                .enumerate()
                .map(|(i, p)| self.pool(&format!("pools.{i}"), p))
                .collect(),
        }
    }

    fn upgrade_socket(&mut self, raw: Option<String>, admin: &AdminConfig) -> PathBuf {
        match raw {
            Some(p) if p.is_empty() => {
                self.error(
                    "upgrade_socket",
                    "upgrade_socket is empty; remove the key for the default",
                );
                PathBuf::new()
            }
            Some(p) => PathBuf::from(p),
            // Unique per host: no two processes hold the same admin address.
            None => std::env::temp_dir().join(format!(
                "vigil-{}-{}.upgrade.sock",
                admin.address.ip(),
                admin.address.port()
            )),
        }
    }

    fn fleet(&mut self, raw: RawFleet) -> FleetConfig {
        let etcd = raw.etcd.unwrap_or_default();
        if etcd.is_empty() {
            self.error(
                "fleet",
                "fleet needs `etcd`: at least one endpoint, http://host:port",
            );
        }
        for (i, e) in etcd.iter().enumerate() {
            let path = format!("fleet.etcd.{i}");
            match e.strip_prefix("http://") {
                Some(rest) if rest.contains(':') && !rest.contains('/') => {}
                Some(_) => self.error(
                    &path,
                    format!("etcd endpoint {e:?} must be http://host:port"),
                ),
                None if e.starts_with("https://") => self.error(
                    &path,
                    format!("etcd endpoint {e:?}: TLS to etcd is not supported; use http://"),
                ),
                None => self.error(
                    &path,
                    format!("etcd endpoint {e:?} must be http://host:port"),
                ),
            }
        }
        let prefix = raw
            .prefix
            .unwrap_or_else(|| FleetConfig::DEFAULT_PREFIX.into());
        if !prefix.starts_with('/') || prefix.len() < 2 || prefix.contains("//") {
            self.error(
                "fleet.prefix",
                format!("prefix {prefix:?} must be a key path such as /vigil"),
            );
        }
        let prefix = prefix.trim_end_matches('/').to_string();
        let node = match raw.node {
            Some(n) => {
                let ok = !n.is_empty()
                    && n.len() <= bounds::NODE_NAME_MAX_LEN
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !ok {
                    self.error(
                        "fleet.node",
                        format!("node {n:?} must match {}", bounds::NODE_NAME),
                    );
                }
                n
            }
            None => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .ok()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "vigil".into());
                format!("{host}-{}", std::process::id())
            }
        };
        let lease_ttl = self.duration(
            "fleet.lease_ttl",
            &raw.lease_ttl,
            FleetConfig::DEFAULT_LEASE_TTL,
        );
        if !bounds::LEASE_TTL.contains(lease_ttl) {
            let (min, max) = (bounds::LEASE_TTL.min, bounds::LEASE_TTL.max);
            self.error(
                "fleet.lease_ttl",
                format!(
                    "lease_ttl must be between {} (etcd's shortest lease) and {}, got {lease_ttl:?}",
                    format_duration(min),
                    format_duration(max)
                ),
            );
        }
        let copies = self.int(
            "fleet.copies",
            raw.copies,
            FleetConfig::DEFAULT_COPIES as i64,
            bounds::FLEET_COPIES,
        ) as usize;
        FleetConfig {
            etcd,
            prefix,
            node,
            lease_ttl,
            copies,
        }
    }

    fn dns(&mut self, raw: RawDns) -> DnsConfig {
        let mut nameservers = Vec::new();
        for (i, text) in raw.nameservers.unwrap_or_default().into_iter().enumerate() {
            let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                text.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Some(a) => nameservers.push(a),
                None => self.error(
                    &format!("dns.nameservers.{i}"),
                    format!("nameserver {text:?} must be an IP address, with a port if not 53"),
                ),
            }
        }
        DnsConfig { nameservers }
    }

    fn cross_pool(&mut self, pools: &[PoolConfig]) {
        let mut names = HashSet::new();
        let mut routes = HashSet::new();
        for (i, p) in pools.iter().enumerate() {
            if !p.name.is_empty() && !names.insert(p.name.clone()) {
                self.error(
                    &format!("pools.{i}.name"),
                    format!("pool name {:?} is used twice", p.name),
                );
            }
            for (j, r) in p.routes.iter().enumerate() {
                if !routes.insert(r.clone()) {
                    self.error(
                        &format!("pools.{i}.routes.{j}"),
                        "this host and path_prefix are already routed to another pool",
                    );
                }
            }
        }
    }
}
