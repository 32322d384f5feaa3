//! A pool's health: its active check (what it asks, what passes, how often) and
//! passive ejection on live traffic.

use crate::bounds::{self, FloatRange, IntRange};
use crate::choice::one_of;
use crate::duration::format_duration;
use crate::schema::*;
use crate::types::*;
use crate::validate::Validator;

impl Validator<'_> {
    pub(super) fn health_check(&mut self, path: &str, raw: RawHealthCheck) -> HealthCheckConfig {
        let kind = self.check_kind(&format!("{path}.type"), raw.kind.as_deref());
        let (check_path, expected_status) = self.check_request(path, &raw);
        let timing = self.check_timing(path, &raw);
        let d = HealthCheckConfig::default();
        let rise = self.int(
            &format!("{path}.rise"),
            raw.rise,
            d.rise.into(),
            bounds::RISE,
        ) as u32;
        let fall = self.int(
            &format!("{path}.fall"),
            raw.fall,
            d.fall.into(),
            bounds::FALL,
        ) as u32;
        HealthCheckConfig {
            kind,
            path: check_path,
            host: raw.host,
            expected_status,
            expected_body: raw.expected_body,
            rise,
            fall,
            reuse_connections: raw.reuse_connections.unwrap_or(d.reuse_connections),
            grpc_service: raw.grpc_service.unwrap_or(d.grpc_service),
            skip_while_serving: raw.skip_while_serving.unwrap_or(d.skip_while_serving),
            agent: raw.agent.unwrap_or(d.agent),
            ..timing
        }
    }

    fn check_kind(&mut self, path: &str, raw: Option<&str>) -> CheckKind {
        let words = one_of::<CheckKind>(str::to_string);
        self.choice(path, raw, |other| {
            format!("unknown health check type {other:?}: use {words}")
        })
        .unwrap_or_default()
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
        let IntRange { min, max } = bounds::STATUS;
        match range {
            Some((lo, hi))
                if (min..=max).contains(&lo) && (min..=max).contains(&hi) && lo <= hi =>
            {
                Some((lo as u16, hi as u16))
            }
            _ => {
                self.error(path, format!("expected_status entry {raw:?} must be a code or range like \"200-399\" within {min}-{max}"));
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
        if !bounds::BACKOFF_MULTIPLIER.contains(backoff_multiplier) {
            let FloatRange { min, max, .. } = bounds::BACKOFF_MULTIPLIER;
            self.error(
                &p("backoff_multiplier"),
                format!(
                    "backoff_multiplier must be between {min} and {max}, got {backoff_multiplier}"
                ),
            );
        }
        let jitter = raw.jitter.unwrap_or(d.jitter);
        if !bounds::JITTER.contains(jitter) {
            let FloatRange { min, max, .. } = bounds::JITTER;
            self.error(
                &p("jitter"),
                format!("jitter must be at least {min} and below {max}, got {jitter}"),
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
            d.consecutive_failures.into(),
            bounds::CONSECUTIVE_FAILURES,
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
        if !bounds::STALL_FACTOR.contains(stall_factor) {
            let FloatRange { min, max, .. } = bounds::STALL_FACTOR;
            self.error(
                &p("stall_factor"),
                format!("stall_factor must be between {min} and {max}, got {stall_factor}"),
            );
        }
        let stall_min = self.duration(&p("stall_min"), &raw.stall_min, d.stall_min);
        if stall_min < bounds::STALL_MIN_FLOOR {
            let floor = format_duration(bounds::STALL_MIN_FLOOR);
            self.error(
                &p("stall_min"),
                format!("stall_min must be at least {floor}"),
            );
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
