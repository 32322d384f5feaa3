//! Every kind of configuration error, from strings, with its line and column.

use vigil_conf::{from_str, Balance, ConfigErrors, CpuAffinity, HashKey, HostPattern};

const MINIMAL: &str = "\
listeners:
  - address: 127.0.0.1:8080
admin:
  address: 127.0.0.1:9901
pools:
  - name: web
    backends:
      - address: 127.0.0.1:18081
      - address: 127.0.0.1:18082
        weight: 2
";

fn errors(text: &str) -> ConfigErrors {
    from_str(text, "f.yaml").expect_err("config should be rejected")
}

/// Asserts that exactly one error sits at LINE:COL and mentions `needle`.
fn assert_error(text: &str, line: usize, col: usize, needle: &str) {
    let errs = errors(text);
    let hit = errs.iter().find(|e| e.line == line && e.col == col);
    assert!(
        hit.is_some_and(|e| e.message.contains(needle)),
        "wanted f.yaml:{line}:{col}: …{needle}…, got:\n{errs}"
    );
}

#[test]
fn minimal_file_gets_defaults() {
    let c = from_str(MINIMAL, "f.yaml").unwrap();
    assert_eq!(c.listeners[0].address.to_string(), "127.0.0.1:8080");
    assert_eq!(c.pools.len(), 1);
    let p = &c.pools[0];
    assert_eq!(p.balance, Balance::RoundRobin);
    assert_eq!(p.retries, 2);
    assert_eq!(p.retry_on_status, vec![502, 503, 504]);
    assert_eq!(p.routes[0].host, HostPattern::Any);
    assert_eq!(p.routes[0].path_prefix, "/");
    assert_eq!(p.backends[1].weight, 2);
    assert_eq!(p.health_check.rise, 2);
    assert_eq!(p.health_check.fall, 3);
    assert_eq!(p.health_check.down_interval, p.health_check.interval);
    assert_eq!(p.passive.consecutive_failures, 5);
    assert_eq!(p.panic_threshold, 0.0);
    assert!(p.fail_open, "a pool fails open by default");
    assert!(!p.forward_original_path);
    assert!(c.metrics.per_backend);
    assert_eq!(c.checker.max_concurrent_checks, 1024);
    assert_eq!(c.grace_period.as_secs(), 5);
    assert_eq!(c.cpu_affinity, CpuAffinity::Auto);
}

#[test]
fn full_file_parses() {
    let text = "\
threads: 1
cpu_affinity: off
grace_period: 2s
listeners:
  - address: 127.0.0.1:8080
admin:
  address: 127.0.0.1:9901
  token: secret
checker:
  max_concurrent_checks: 64
metrics:
  per_backend: false
pools:
  - name: api_1
    routes:
      - host: \"*.Example.com\"
        path_prefix: /api
    balance: consistent_hash
    hash_key: header:X-User-Id
    retries: 1
    retry_on_status: [503]
    panic_threshold: 30
    fail_open: false
    forward_original_path: true
    backends:
      - address: localhost:18081
        weight: 3
    health_check:
      type: tcp
      expected_status: [200, \"300-302\"]
      interval: 500ms
      fast_interval: 100ms
      down_interval: 1s
      max_down_interval: 10s
      timeout: 250ms
      jitter: 0
      rise: 1
      fall: 1
    passive:
      consecutive_failures: 0
";
    let c = from_str(text, "f.yaml").unwrap();
    let p = &c.pools[0];
    assert_eq!(c.threads, 1);
    assert_eq!(c.cpu_affinity, CpuAffinity::Off);
    assert_eq!(c.admin.token.as_deref(), Some("secret"));
    assert_eq!(p.routes[0].host, HostPattern::Suffix(".example.com".into()));
    assert_eq!(p.hash_key, Some(HashKey::Header("x-user-id".into())));
    assert_eq!(p.health_check.expected_status, vec![(200, 200), (300, 302)]);
    assert_eq!(p.backends[0].socket_addr.to_string(), "127.0.0.1:18081");
    assert_eq!(p.passive.consecutive_failures, 0);
    assert!(!p.fail_open);
    assert!(p.forward_original_path);
}

#[test]
fn unknown_keys_are_all_reported_with_position() {
    let text = MINIMAL.replace("weight: 2", "weight: 2\n        wieght: 3") + "    colour: blue\n";
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs}");
    assert_error(&text, 11, 9, "unknown key `wieght`");
    assert_error(&text, 12, 5, "unknown key `colour`");
}

#[test]
fn syntax_and_type_errors_carry_position() {
    assert_error(
        &MINIMAL.replace("weight: 2", "weight: two"),
        10,
        17,
        "invalid type",
    );
    let broken = MINIMAL.replace("  - name: web", "  - name: [web");
    let errs = errors(&broken);
    assert_eq!(errs.len(), 1);
    assert!(errs.0[0].line >= 6, "{errs}");
}

#[test]
fn value_errors() {
    let cases: &[(&str, &str, usize, usize, &str)] = &[
        ("weight: 2", "weight: 0", 10, 17, "weight must be between 1"),
        ("name: web", "name: Web!", 6, 11, "must match [a-z0-9_-]+"),
        ("127.0.0.1:18082", "127.0.0.1", 9, 18, "needs a port"),
        (
            "127.0.0.1:18082",
            "no-such-host.invalid:80",
            9,
            18,
            "does not parse or resolve",
        ),
        (
            "weight: 2",
            "weight: 2\n    balance: fastest",
            11,
            14,
            "unknown balance",
        ),
        (
            "weight: 2",
            "weight: 2\n    balance: consistent_hash",
            11,
            14,
            "needs a hash_key",
        ),
        (
            "weight: 2",
            "weight: 2\n    hash_key: client_ip",
            11,
            15,
            "only used with balance: consistent_hash",
        ),
        (
            "weight: 2",
            "weight: 2\n    balance: consistent_hash\n    hash_key: cookie",
            12,
            15,
            "use header:NAME",
        ),
        (
            "weight: 2",
            "weight: 2\n    routes:\n      - host: a*b",
            12,
            15,
            "use exact",
        ),
        (
            "weight: 2",
            "weight: 2\n    routes:\n      - path_prefix: api",
            12,
            22,
            "must start with '/'",
        ),
        (
            "weight: 2",
            "weight: 2\n    panic_threshold: 120",
            11,
            22,
            "percentage",
        ),
        (
            "weight: 2",
            "weight: 2\n    retry_on_status: [700]",
            11,
            23,
            "between 100 and 599",
        ),
        (
            "weight: 2",
            "weight: 2\n    health_check:\n      rise: 0",
            12,
            13,
            "rise must be between 1",
        ),
        (
            "weight: 2",
            "weight: 2\n    health_check:\n      fall: 0",
            12,
            13,
            "fall must be between 1",
        ),
        (
            "weight: 2",
            "weight: 2\n    health_check:\n      jitter: 1.0",
            12,
            15,
            "jitter must be at least 0 and below 1",
        ),
        (
            "weight: 2",
            "weight: 2\n    health_check:\n      jitter: -0.1",
            12,
            15,
            "jitter",
        ),
        (
            "weight: 2",
            "weight: 2\n    health_check:\n      timeout: 10s",
            12,
            16,
            "must not exceed interval",
        ),
        (
            "weight: 2",
            "weight: 2\n    health_check:\n      interval: 5",
            12,
            17,
            "has no unit",
        ),
        (
            "weight: 2",
            "weight: 2\n    health_check:\n      interval: 5y",
            12,
            17,
            "unknown unit",
        ),
        (
            "weight: 2",
            "weight: 2\n    health_check:\n      type: udp",
            12,
            13,
            "unknown health check type",
        ),
        (
            "weight: 2",
            "weight: 2\n    health_check:\n      path: health",
            12,
            13,
            "must start with '/'",
        ),
        (
            "weight: 2",
            "weight: 2\n    health_check:\n      expected_status: [\"399-200\"]",
            12,
            25,
            "expected_status entry",
        ),
        (
            "weight: 2",
            "weight: 2\n    health_check:\n      backoff_multiplier: 0.5",
            12,
            27,
            "backoff_multiplier",
        ),
        (
            "weight: 2",
            "weight: 2\n    health_check:\n      down_interval: 10s\n      max_down_interval: 5s",
            13,
            26,
            "below down_interval",
        ),
        (
            "weight: 2",
            "weight: 2\n    passive:\n      ejection_time: 10s\n      max_ejection_time: 1s",
            13,
            26,
            "below ejection_time",
        ),
        (
            "weight: 2",
            "weight: 2\n    passive:\n      max_ejected_percent: 101",
            12,
            28,
            "percentage",
        ),
        ("127.0.0.1:9901", "127.0.0.1:8080", 4, 12, "also a listener"),
        (
            "weight: 2",
            "weight: 2\n    read_timeout: 0s",
            11,
            19,
            "read_timeout must be greater than 0",
        ),
        (
            "weight: 2",
            "weight: 2\n    connect_timeout: soon",
            11,
            22,
            "connect_timeout",
        ),
    ];
    for (from, to, line, col, needle) in cases {
        let text = MINIMAL.replacen(from, to, 1);
        assert_ne!(text, MINIMAL, "case {to:?} did not change the text");
        assert_error(&text, *line, *col, needle);
    }
}

#[test]
fn duplicates_and_missing_sections() {
    let dup_backend = MINIMAL.replace("127.0.0.1:18082", "127.0.0.1:18081");
    assert_error(&dup_backend, 9, 18, "listed twice");
    let dup_pool = format!("{MINIMAL}  - name: web\n    backends:\n      - address: 127.0.0.1:1\n");
    assert_error(&dup_pool, 11, 11, "used twice");
    assert_error(&dup_pool, 11, 5, "already routed");
    assert_error("pools: []\nlisteners: []\n", 1, 8, "at least one pool");
    assert_error("pools: []\nlisteners: []\n", 2, 12, "at least one address");
    assert_error("threads: 0\n", 1, 10, "threads must be between 1");
    assert_error(
        "cpu_affinity: on\n",
        1,
        15,
        "cpu_affinity must be auto or off, got \"on\"",
    );
    assert_error("", 1, 1, "empty");
}

#[test]
fn all_errors_at_once_sorted_by_position() {
    let text = MINIMAL
        .replace(
            "weight: 2",
            "weight: 0\n    health_check:\n      rise: 0\n      jitter: 2",
        )
        .replace("name: web", "name: WEB");
    let errs = errors(&text);
    assert_eq!(errs.len(), 4, "{errs}");
    let lines: Vec<_> = errs.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![6, 10, 12, 13]);
    let printed = errs.to_string();
    assert!(
        printed.lines().all(|l| l.starts_with("f.yaml:")),
        "{printed}"
    );
}

#[test]
fn edge_settings_default_and_are_validated_with_positions() {
    let c = from_str(MINIMAL, "f.yaml").unwrap();
    assert_eq!(c.limits, vigil_conf::LimitsConfig::default());
    assert_eq!(c.limits.header_bytes, 32768);
    assert_eq!(c.limits.body_timeout, std::time::Duration::from_secs(30));
    assert_eq!(
        c.limits.client_write_timeout,
        std::time::Duration::from_secs(30)
    );
    assert_eq!(c.access_log.format, vigil_conf::AccessLogFormat::Off);
    assert_eq!(c.listeners[0].max_connections, 10_000);
    // A pool that only shortens its interval gets a timeout no longer than it.
    let short = format!("{MINIMAL}    health_check:\n      interval: 1s\n");
    let c = from_str(&short, "f.yaml").unwrap();
    assert_eq!(
        c.pools[0].health_check.timeout,
        std::time::Duration::from_secs(1)
    );

    let bad = "\
listeners:
  - address: 127.0.0.1:8080
    max_connections: 0
limits:
  headers: 300
  header_timeout: 0s
  body_timeout: 0s
  client_write_timeout: 0s
access_log:
  format: xml
pools:
  - name: \"-\"
    backends:
      - address: 127.0.0.1:18081
";
    assert_error(bad, 3, 22, "max_connections must be between 1 and");
    assert_error(bad, 5, 12, "headers must be between 1 and 256");
    assert_error(bad, 6, 19, "header_timeout must be greater than 0");
    assert_error(bad, 7, 17, "body_timeout must be greater than 0");
    assert_error(bad, 8, 25, "client_write_timeout must be greater than 0");
    assert_error(bad, 10, 11, "access_log.format must be off, text or json");
    assert_error(bad, 12, 11, "pool name \"-\" is reserved");
}

#[test]
fn discovery_and_dns_are_read_and_validated_with_positions() {
    use vigil_conf::DiscoveryName;
    let text = "\
listeners:
  - address: 127.0.0.1:8080
dns:
  nameservers: [\"127.0.0.1:5353\", \"::1\"]
pools:
  - name: srv
    routes: [{host: a.test}]
    discovery:
      srv: _http._tcp.api.internal.
      refresh: 2s
  - name: a
    routes: [{host: b.test}]
    discovery: {a: \"api.internal:8080\"}
    backends:
      - address: 127.0.0.1:18081
";
    let c = from_str(text, "f.yaml").unwrap();
    assert_eq!(
        c.dns.nameservers,
        vec![
            "127.0.0.1:5353".parse().unwrap(),
            "[::1]:53".parse().unwrap()
        ]
    );
    let d = c.pools[0].discovery.as_ref().unwrap();
    assert_eq!(d.name, DiscoveryName::Srv("_http._tcp.api.internal".into()));
    assert_eq!(d.refresh, std::time::Duration::from_secs(2));
    assert_eq!((d.at.line, d.at.col), (9, 12));
    assert!(c.pools[0].backends.is_empty());
    let d = c.pools[1].discovery.as_ref().unwrap();
    assert_eq!(
        d.name,
        DiscoveryName::A {
            host: "api.internal".into(),
            port: 8080
        }
    );
    assert_eq!(d.refresh, std::time::Duration::from_secs(5));
    assert_eq!(c.pools[1].backends.len(), 1);
    assert!(from_str(MINIMAL, "f.yaml")
        .unwrap()
        .dns
        .nameservers
        .is_empty());

    let pool = |body: &str| {
        format!(
            "listeners:\n  - address: 127.0.0.1:8080\npools:\n  - name: p\n    discovery:\n{body}"
        )
    };
    assert_error(&pool("      a: api.internal\n"), 6, 10, "host:port");
    assert_error(&pool("      a: \"api..internal:80\"\n"), 6, 10, "host:port");
    assert_error(&pool("      srv: \"bad name\"\n"), 6, 12, "SRV name");
    assert_error(&pool("      refresh: 1s\n"), 6, 7, "needs `srv`");
    assert_error(
        &pool("      srv: _x._tcp.y\n      a: y:1\n"),
        6,
        7,
        "not both",
    );
    assert_error(
        &pool("      srv: _x._tcp.y\n      refresh: 10ms\n"),
        7,
        16,
        "between 100ms and 1h",
    );
    assert_error(
        "listeners:\n  - address: 127.0.0.1:8080\npools:\n  - name: p\n",
        4,
        5,
        "or `discovery`",
    );
    assert_error(
        &format!("{MINIMAL}dns:\n  nameservers: [\"resolver.local\"]\n"),
        12,
        17,
        "must be an IP address",
    );
}

#[test]
fn fleet_is_read_and_validated_with_positions() {
    let c = from_str(
        &format!("{MINIMAL}fleet:\n  etcd: [\"http://127.0.0.1:2379\"]\n  node: edge-1\n  copies: 2\n  lease_ttl: 5s\n"),
        "f.yaml",
    )
    .unwrap();
    let f = c.fleet.unwrap();
    assert_eq!(f.etcd, vec!["http://127.0.0.1:2379".to_string()]);
    assert_eq!(
        (f.prefix.as_str(), f.node.as_str(), f.copies),
        ("/vigil", "edge-1", 2)
    );
    assert_eq!(f.lease_ttl, std::time::Duration::from_secs(5));
    assert!(from_str(MINIMAL, "f.yaml").unwrap().fleet.is_none());
    let f = from_str(
        &format!("{MINIMAL}fleet:\n  etcd: [\"http://e:2379\"]\n  prefix: /x/\n"),
        "f.yaml",
    )
    .unwrap()
    .fleet
    .unwrap();
    assert_eq!(f.prefix, "/x");
    assert!(
        f.node.ends_with(&format!("-{}", std::process::id())),
        "{}",
        f.node
    );

    let fleet = |body: &str| format!("{MINIMAL}fleet:\n{body}");
    assert_error(&fleet("  node: a\n"), 12, 3, "needs `etcd`");
    assert_error(
        &fleet("  etcd: [\"https://e:2379\"]\n"),
        12,
        10,
        "TLS to etcd",
    );
    assert_error(&fleet("  etcd: [\"e:2379\"]\n"), 12, 10, "http://host:port");
    assert_error(
        &fleet("  etcd: [\"http://e:1\"]\n  node: \"a b\"\n"),
        13,
        9,
        "[A-Za-z0-9._-]+",
    );
    assert_error(
        &fleet("  etcd: [\"http://e:1\"]\n  lease_ttl: 1s\n"),
        13,
        14,
        "between 2s",
    );
    assert_error(
        &fleet("  etcd: [\"http://e:1\"]\n  copies: 0\n"),
        13,
        11,
        "copies",
    );
    assert_error(
        &fleet("  etcd: [\"http://e:1\"]\n  prefix: vigil\n"),
        13,
        11,
        "key path",
    );
}
