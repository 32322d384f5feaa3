//! A pool's health: the active check (what it asks, what passes, how often) and
//! passive ejection on live traffic.

use super::{Bound, Key, Omitted, Section, Type};
use crate::bounds;
use crate::duration::format_duration;
use crate::types::*;

pub(super) fn sections() -> Vec<Section> {
    vec![health_check(), check_timing(), passive()]
}

fn health_check() -> Section {
    let d = HealthCheckConfig::default();
    let statuses: Vec<String> = (d.expected_status.iter())
        .map(|(lo, hi)| format!("\"{lo}-{hi}\""))
        .collect();
    Section {
        title: "pools[].health_check",
        about: "The active check each backend gets: what it asks and what passes. A backend \
                is routed once it passes (contract §3).",
        keys: vec![
            Key::section("pools[].health_check").means("the pool's active health check"),
            Key::word::<CheckKind>("pools[].health_check.type")
                .rule("`grpc` needs `protocol: h2`")
                .means("an HTTP request, a TCP connect, or `grpc.health.v1.Health/Check`"),
            Key::string("pools[].health_check.path", &d.path)
                .rule("starts with `/`, no spaces")
                .means("the path an HTTP check asks for"),
            Key::null("pools[].health_check.host", Type::String)
                .means("the `Host` header an HTTP check sends; `null`: the backend's address"),
            Key::new(
                "pools[].health_check.expected_status",
                Type::ListOfStrings,
                Omitted::Value(format!("[{}]", statuses.join(", "))),
            )
            .bound(Bound::Int(bounds::STATUS))
            .rule("codes (`200`) or ranges (`\"200-399\"`); at least one")
            .means("answers that pass an HTTP check"),
            Key::null("pools[].health_check.expected_body", Type::String)
                .means("a substring the answer's body must contain to pass"),
            Key::string("pools[].health_check.grpc_service", &d.grpc_service)
                .means("the service a gRPC check asks about; `\"\"`: the server as a whole"),
            Key::flag("pools[].health_check.reuse_connections", d.reuse_connections)
                .means("keep the check connection open between checks"),
            Key::duration("pools[].health_check.max_connection_age", d.max_connection_age)
                .means("a kept check connection is replaced after this"),
            Key::flag("pools[].health_check.skip_while_serving", d.skip_while_serving)
                .means("skip a check when live requests to the backend succeeded since the last one and none failed"),
            Key::flag("pools[].health_check.agent", d.agent)
                .means("read HAProxy agent-check words from a passing HTTP check's body: `drain`, `maint`, `up`/`ready`, `NN%` of the configured weight"),
        ],
    }
}

fn check_timing() -> Section {
    let d = HealthCheckConfig::default();
    Section {
        title: "pools[].health_check: timing",
        about: "When checks run, and how many in a row change a backend's state. Each delay \
                is drawn within `jitter` of its value; a down backend is retried after \
                `down_interval`, then each time `backoff_multiplier` times later, up to \
                `max_down_interval`.",
        keys: vec![
            Key::duration("pools[].health_check.interval", d.interval)
                .positive()
                .means("between checks of a backend that is up"),
            Key::duration("pools[].health_check.fast_interval", d.fast_interval)
                .positive()
                .means("between checks while a backend is unchecked or between up and down"),
            Key::derived(
                "pools[].health_check.down_interval",
                Type::Duration,
                "the value of `interval`",
            )
            .positive()
            .means("the first retry of a backend that is down; then backoff"),
            Key::float(
                "pools[].health_check.backoff_multiplier",
                d.backoff_multiplier,
                bounds::BACKOFF_MULTIPLIER,
            )
            .means("the delay between checks of a down backend grows by this after each failure"),
            Key::duration(
                "pools[].health_check.max_down_interval",
                d.max_down_interval,
            )
            .rule("at least `down_interval`")
            .means("the cap of that backoff"),
            Key::float("pools[].health_check.jitter", d.jitter, bounds::JITTER)
                .means("each delay is drawn from `[d*(1-jitter), d*(1+jitter)]`"),
            Key::derived(
                "pools[].health_check.timeout",
                Type::Duration,
                format!(
                    "the smaller of `{}` and `interval`",
                    format_duration(d.timeout)
                ),
            )
            .positive()
            .rule("at most `interval`")
            .means("the whole check, connect included"),
            Key::int("pools[].health_check.rise", d.rise, bounds::RISE)
                .means("checks passed in a row that bring a backend up"),
            Key::int("pools[].health_check.fall", d.fall, bounds::FALL)
                .means("checks failed in a row that take a backend down"),
        ],
    }
}

fn passive() -> Section {
    let d = PassiveConfig::default();
    Section {
        title: "pools[].passive",
        about: "What live traffic says about a backend: failures in a row eject it for a \
                while, stuck requests make it suspect (contract §3, §5 Frozen).",
        keys: vec![
            Key::section("pools[].passive").means("ejection and stall detection on live traffic"),
            Key::int("pools[].passive.consecutive_failures", d.consecutive_failures, bounds::CONSECUTIVE_FAILURES)
                .means("connect errors or `5xx` in a row on live traffic that eject a backend; `0`: off"),
            Key::duration("pools[].passive.ejection_time", d.ejection_time)
                .positive()
                .means("the first ejection; doubles on each repeat, each `ejection_time` without one forgives a doubling"),
            Key::duration("pools[].passive.max_ejection_time", d.max_ejection_time)
                .rule("at least `ejection_time`")
                .means("the longest an ejection lasts"),
            Key::float("pools[].passive.max_ejected_percent", d.max_ejected_percent, bounds::PERCENT)
                .means("never eject or suspect more than this share of a pool (down ones count)"),
            Key::flag("pools[].passive.stall_detection", d.stall_detection)
                .means("stuck requests make a backend suspect; `false` for long-poll pools"),
            Key::float("pools[].passive.stall_factor", d.stall_factor, bounds::STALL_FACTOR)
                .means("stuck: waiting this many times the pool's usual answer time..."),
            Key::duration("pools[].passive.stall_min", d.stall_min)
                .bound(Bound::AtLeast(bounds::STALL_MIN_FLOOR))
                .means("...and at least this long"),
        ],
    }
}
