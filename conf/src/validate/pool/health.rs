//! A pool's health: its active check (what it asks, what passes, how often) and
//! passive ejection on live traffic.

use crate::schema::*;
use crate::types::*;
use crate::validate::Validator;
use std::time::Duration;

impl Validator<'_> {
    pub(super) fn health_check(&mut self, path: &str, raw: RawHealthCheck) -> HealthCheckConfig {
        let kind = self.check_kind(&format!("{path}.type"), raw.kind.as_deref());
        let (check_path, expected_status) = self.check_request(path, &raw);
        let timing = self.check_timing(path, &raw);
        let rise = self.int(&format!("{path}.rise"), raw.rise, 2, 1, 1000) as u32;
        let fall = self.int(&format!("{path}.fall"), raw.fall, 3, 1, 1000) as u32;
        HealthCheckConfig {
            kind,
            path: check_path,
            host: raw.host,
            expected_status,
            expected_body: raw.expected_body,
            rise,
            fall,
            reuse_connections: raw.reuse_connections.unwrap_or(true),
            grpc_service: raw.grpc_service.unwrap_or_default(),
            skip_while_serving: raw.skip_while_serving.unwrap_or(false),
            ..timing
        }
    }

    fn check_kind(&mut self, path: &str, raw: Option<&str>) -> CheckKind {
        match raw {
            None | Some("http") => CheckKind::Http,
            Some("tcp") => CheckKind::Tcp,
            Some("grpc") => CheckKind::Grpc,
            Some(other) => {
                self.error(
                    path,
                    format!("unknown health check type {other:?}: use http, tcp or grpc"),
                );
                CheckKind::Http
            }
        }
    }

    /// What an HTTP check asks for (its path, and Host if given) and the statuses that
    /// pass it.
    fn check_request(&mut self, path: &str, raw: &RawHealthCheck) -> (String, Vec<(u16, u16)>) {
        let d = HealthCheckConfig::default();
        let p = |k: &str| format!("{path}.{k}");
        let check_path = raw.path.clone().unwrap_or(d.path);
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
        let expected_status = match &raw.expected_status {
            None => d.expected_status,
            Some(list) if list.is_empty() => {
                self.error(
                    &p("expected_status"),
                    "expected_status needs at least one code or range",
                );
                d.expected_status
            }
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(j, s)| self.status_range(&format!("{path}.expected_status.{j}"), s))
                .collect(),
        };
        (check_path, expected_status)
    }

    fn status_range(&mut self, path: &str, raw: &RawStatus) -> Option<(u16, u16)> {
        let range = match raw {
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

    /// When checks run: the intervals (up, changing, down and its backoff), jitter, the
    /// timeout and the check connection's age; the rest of the result is defaults.
    fn check_timing(&mut self, path: &str, raw: &RawHealthCheck) -> HealthCheckConfig {
        let d = HealthCheckConfig::default();
        let p = |k: &str| format!("{path}.{k}");
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
        HealthCheckConfig {
            interval,
            fast_interval,
            down_interval,
            max_down_interval: max_down_interval.max(down_interval),
            timeout,
            max_connection_age,
            backoff_multiplier,
            jitter,
            ..d
        }
    }

    pub(super) fn passive(&mut self, path: &str, raw: RawPassive) -> PassiveConfig {
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
