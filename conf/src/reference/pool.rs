//! A pool: how requests reach it, how it balances and retries, its backends, where
//! discovery finds more, and HTTPS to them.

use super::{yaml_list, Bound, Key, Section, Type};
use crate::bounds;
use crate::types::*;

pub(super) fn sections() -> Vec<Section> {
    vec![
        pools(),
        queue(),
        retry_budget(),
        load_report(),
        routes(),
        backends(),
        discovery(),
        tls(),
    ]
}

fn pools() -> Section {
    Section {
        title: "pools",
        about: "Groups of backends that requests are routed to, by Host then path \
                (contract §5). Every pool key reloads. `balance`: `round_robin` takes the \
                routable backends in turn, whatever their weight; `weighted_round_robin` \
                in proportion to their `weight` (nginx's smooth order); `least_requests` \
                the one with the fewest requests in flight for its weight (two random \
                choices past 16 backends); `peak_ewma` the lowest usual answer time times \
                the requests in flight, for its weight; `consistent_hash` maps `hash_key` \
                onto a weighted ring, so a key keeps its backend while that backend is \
                routable; `load_report` in proportion to weights the backends' own ORCA \
                load reports set (see `load_report`), as `weighted_round_robin` otherwise.",
        keys: vec![
            Key::required("pools", Type::ListOfMappings).means("the pools; at least one"),
            Key::required("pools[].name", Type::String)
                .rule(format!("`{}`, not `-`, unique", bounds::POOL_NAME))
                .means("the pool's name in logs, metrics and the admin API"),
            Key::word::<Balance>("pools[].balance")
                .means("how a backend is chosen among the routable ones (contract §5)"),
            Key::null("pools[].hash_key", Type::String)
                .rule("`header:NAME`, `client_ip` or `path`; with `consistent_hash` only, which needs it")
                .means("what `consistent_hash` hashes"),
            Key::int("pools[].retries", PoolConfig::DEFAULT_RETRIES, bounds::RETRIES)
                .means("extra attempts, each on another alive backend"),
            Key::new("pools[].retry_on_status", Type::ListOfIntegers, yaml_list(&PoolConfig::DEFAULT_RETRY_ON_STATUS))
                .bound(Bound::Int(bounds::STATUS))
                .means("answers retried, for idempotent requests only"),
            Key::float("pools[].panic_threshold", PoolConfig::DEFAULT_PANIC_THRESHOLD, bounds::PERCENT)
                .means("percent of backends alive below which the pool routes to all of them; `0`: never"),
            Key::flag("pools[].fail_open", PoolConfig::DEFAULT_FAIL_OPEN)
                .means("no backend routable: try the pool's other checked backends before answering `503`"),
            Key::flag("pools[].forward_original_path", PoolConfig::DEFAULT_FORWARD_ORIGINAL_PATH)
                .means("route by the normalized path but send the client's own target upstream"),
            Key::duration("pools[].connect_timeout", PoolConfig::DEFAULT_CONNECT_TIMEOUT)
                .positive()
                .means("connecting to a backend; a timeout is retried on another"),
            Key::duration("pools[].read_timeout", PoolConfig::DEFAULT_READ_TIMEOUT)
                .positive()
                .means("each wait for data from a backend"),
            Key::word::<Protocol>("pools[].protocol")
                .rule("`h2` needs `tls`")
                .means("HTTP version spoken to the backends"),
            Key::duration("pools[].slow_start", PoolConfig::DEFAULT_SLOW_START)
                .bound(Bound::AtMost(bounds::SLOW_START_MAX))
                .means("a backend routable again ramps from 5% to its full weight over this; `0s`: off"),
            Key::int("pools[].max_requests", PoolConfig::DEFAULT_MAX_REQUESTS, bounds::MAX_REQUESTS)
                .means("requests in flight per backend at most; `0`: no limit"),
        ],
    }
}

fn retry_budget() -> Section {
    Section {
        title: "pools[].retry_budget",
        about: "Retries of any cause (connect error, reset, status, stall) that the pool's \
                requests may have in flight at once (Envoy's `retry_budget`): at most \
                `ratio` of the pool's requests in flight, and `min` whatever the ratio. A \
                retry over the budget is not sent: the request ends with the failed \
                attempt's answer or error, counted in \
                `vigil_requests_refused_total{reason=\"retry_budget\"}`.",
        keys: vec![
            Key::section("pools[].retry_budget")
                .means("the pool's retry budget; absent: the defaults"),
            Key::float(
                "pools[].retry_budget.ratio",
                RetryBudget::DEFAULT_RATIO,
                bounds::RETRY_BUDGET_RATIO,
            )
            .means("the share of the pool's requests in flight that may be retries"),
            Key::int(
                "pools[].retry_budget.min",
                RetryBudget::DEFAULT_MIN,
                bounds::RETRY_BUDGET_MIN,
            )
            .means("retries in flight always allowed, whatever the ratio"),
        ],
    }
}

fn load_report() -> Section {
    let d = LoadReportConfig::default();
    Section {
        title: "pools[].load_report",
        about: "With `balance: load_report`, each backend's weight follows the ORCA load \
                reports in its answers (`endpoint-load-metrics` header or trailer, `TEXT` or \
                `JSON`), as gRPC's weighted round robin: queries per second over \
                (utilization + `error_penalty` × errors per second / queries per second), \
                smoothed, on the scale of the configured weights. A backend's reports count \
                once it has reported for `blackout`; when its last report is `expiry` old \
                it is back to its configured weight. Reports never make routable a backend \
                the checker or passive ejection holds out.",
        keys: vec![
            Key::section("pools[].load_report")
                .means("how load reports weigh; absent: the defaults"),
            Key::duration("pools[].load_report.blackout", d.blackout)
                .bound(Bound::AtMost(bounds::LOAD_REPORT_BLACKOUT.max))
                .means("a backend's reports are used after it has reported this long"),
            Key::duration("pools[].load_report.expiry", d.expiry)
                .bound(Bound::Duration(bounds::LOAD_REPORT_EXPIRY))
                .means("reports older than this no longer count: the configured weight again"),
            Key::float(
                "pools[].load_report.error_penalty",
                d.error_penalty,
                bounds::ERROR_PENALTY,
            )
            .means("errors per second over queries per second, times this, add to the utilization"),
        ],
    }
}

fn queue() -> Section {
    Section {
        title: "pools[].queue",
        about: "Where a request waits when every routable backend of its pool is at \
                `max_requests` (HAProxy's `maxconn` with `timeout queue`): first in, first \
                out, until a backend has room or `timeout` passes (then `503` with \
                `Retry-After`); a full queue answers `503` at once.",
        keys: vec![
            Key::section("pools[].queue").means("the pool's queue; absent: the defaults"),
            Key::int(
                "pools[].queue.size",
                QueueConfig::DEFAULT_SIZE,
                bounds::QUEUE_SIZE,
            )
            .means("requests waiting at most; `0`: none wait"),
            Key::duration("pools[].queue.timeout", QueueConfig::DEFAULT_TIMEOUT)
                .bound(Bound::Duration(bounds::QUEUE_TIMEOUT))
                .means("the longest a request waits for a backend"),
        ],
    }
}

fn routes() -> Section {
    Section {
        title: "pools[].routes",
        about: "Which requests a pool takes. Exact hosts are tried first, then suffixes \
                (longest first), then `*`; within the first host that has a matching \
                `path_prefix`, the longest prefix wins.",
        keys: vec![
            Key::derived(
                "pools[].routes",
                Type::ListOfMappings,
                "one route: every host, every path",
            )
            .rule("no host and prefix in two pools")
            .means("the hosts and paths routed to this pool"),
            Key::string("pools[].routes[].host", RouteConfig::DEFAULT_HOST)
                .rule("exact, `*.suffix` or `*`")
                .means("matches the `Host` header without its port, case-insensitively"),
            Key::string(
                "pools[].routes[].path_prefix",
                RouteConfig::DEFAULT_PATH_PREFIX,
            )
            .rule("starts with `/`")
            .means("a plain string prefix of the normalized path"),
        ],
    }
}

fn backends() -> Section {
    Section {
        title: "pools[].backends",
        about: "The backends the file lists; a pool needs at least one unless `discovery` \
                finds them.",
        keys: vec![
            Key::derived("pools[].backends", Type::ListOfMappings, "required unless `discovery`")
                .means("the pool's backends"),
            Key::required("pools[].backends[].address", Type::Address)
                .rule("unique in the pool")
                .means("`ip:port`, or `host:port` resolved once, at load; the backend's name in state, logs and metrics"),
            Key::int("pools[].backends[].weight", BackendConfig::DEFAULT_WEIGHT, bounds::WEIGHT)
                .means("share of the traffic relative to the pool's other backends; `round_robin` ignores it"),
        ],
    }
}

fn discovery() -> Section {
    Section {
        title: "pools[].discovery",
        about: "Backends from DNS, merged with `backends`, looked up at once and then every \
                `refresh` (contract §2 Discovery). Discovered backends are named `IP:PORT`.",
        keys: vec![
            Key::section("pools[].discovery")
                .rule("exactly one of `srv` and `a`")
                .means("look the pool's backends up in DNS; absent: only `backends`"),
            Key::derived("pools[].discovery.srv", Type::String, ONE_OF_SRV_AND_A)
                .rule("a DNS name, absolute (no search domains)")
                .means(
                    "an SRV name: its targets' addresses, ports and weights (lowest priority only)",
                ),
            Key::derived("pools[].discovery.a", Type::String, ONE_OF_SRV_AND_A)
                .rule("`host:port`, the host a DNS name")
                .means("a name whose A and AAAA records are the backends, on this port"),
            Key::duration(
                "pools[].discovery.refresh",
                DiscoveryConfig::DEFAULT_REFRESH,
            )
            .bound(Bound::Duration(bounds::DISCOVERY_REFRESH))
            .means("at most this long between lookups; a shorter TTL wins, but not under 1s"),
        ],
    }
}

fn tls() -> Section {
    Section {
        title: "pools[].tls",
        about: "HTTPS to a pool's backends, and to its health checks.",
        keys: vec![
            Key::section("pools[].tls").means("HTTPS to the backends; absent: plain HTTP"),
            Key::null("pools[].tls.sni", Type::String)
                .rule("a host name")
                .means("the name sent and verified; `null`: the backend's host (set it with `discovery`)"),
            Key::null("pools[].tls.ca", Type::File)
                .means("PEM file of the CAs to trust; `null`: the system's roots"),
            Key::flag("pools[].tls.verify", UpstreamTls::DEFAULT_VERIFY)
                .means("check the backends' certificates; `false` is warned about by `vigil validate`"),
        ],
    }
}

/// What leaving out `srv` or `a` means: the other one is needed.
const ONE_OF_SRV_AND_A: &str = "none: one of `srv` and `a` is required";
