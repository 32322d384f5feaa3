//! Issue #28: config fuzzing. Generated and mutated YAML — values of the wrong type, keys
//! misspelt, values at and past their bounds, deep nesting, huge numbers, unicode — never
//! makes the parser panic, and every error it gives is `FILE:LINE:COL: message` pointing
//! into the file. `PROPTEST_CASES` runs more (`make fuzz`).

use proptest::prelude::*;
use vigil_conf::from_str;

/// A config that uses most keys; the mutations start from it.
const BASE: &str = "\
threads: 2
cpu_affinity: off
grace_period: 2s
listeners:
  - address: 127.0.0.1:8080
    max_connections: 100
    http2: true
admin:
  address: 127.0.0.1:9901
  token: secret
  allow_unauthenticated: false
checker:
  max_concurrent_checks: 64
metrics:
  per_backend: false
limits:
  header_bytes: 8192
  headers: 50
  header_timeout: 5s
  body_bytes: 1048576
  client_write_timeout: 30s
  body_timeout: 30s
http2:
  max_concurrent_streams: 100
  max_header_list_bytes: 65536
  max_pings_per_second: 50
  max_resets_per_second: 0
  idle_timeout: 60s
access_log:
  format: json
pools:
  - name: api_1
    routes:
      - host: \"*.example.com\"
        path_prefix: /api
    balance: consistent_hash
    hash_key: header:X-User-Id
    retries: 1
    retry_on_status: [503, 502]
    panic_threshold: 30
    fail_open: false
    forward_original_path: true
    connect_timeout: 1s
    read_timeout: 10s
    slow_start: 5s
    backends:
      - address: 127.0.0.1:18081
        weight: 3
      - address: 127.0.0.1:18082
    health_check:
      type: http
      path: /healthz
      expected_status: [200, \"300-302\"]
      interval: 500ms
      fast_interval: 100ms
      down_interval: 1s
      max_down_interval: 10s
      timeout: 250ms
      jitter: 0.1
      rise: 2
      fall: 3
    passive:
      consecutive_failures: 5
  - name: web
    backends:
      - address: 127.0.0.1:18083
";

/// Values that are wrong somewhere: other types, bounds, huge, empty, unicode, YAML oddities.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "65535",
    "65536",
    "4294967296",
    "99999999999999999999999999",
    "1e309",
    "-1e309",
    ".nan",
    ".inf",
    "0.5",
    "-0.0",
    "true",
    "false",
    "null",
    "~",
    "\"\"",
    "''",
    "[]",
    "{}",
    "[1, [2, [3]]]",
    "{a: {b: {c: 1}}}",
    "0s",
    "1ms",
    "25h",
    "-5s",
    "1h1h",
    "999999999999h",
    "5",
    "abc",
    "ünïcødé 🦀",
    "\"\\u0000\"",
    "127.0.0.1:0",
    "127.0.0.1:99999",
    "[::1]:80",
    "localhost",
    ":80",
    "*",
    "/",
    "header:",
    "&a 1",
    "*a",
    "!!binary aGVsbG8=",
    "|\n  multi\n  line",
    "'it''s'",
    "0x10",
    "0o17",
    "1_000",
];

/// Keys spelt wrong, and keys from other places.
const KEYS: &[&str] = &[
    "thread",
    "listener",
    "pool",
    "backend",
    "adress",
    "wieght",
    "health",
    "helth_check",
    "intervall",
    "name ",
    "NAME",
    "pools",
    "routes",
    "weight",
    "token",
    "tls",
    "cert",
    "discovery",
    "fleet",
    "max_requests",
    "queue",
    "retry_budget",
    "ünï",
    "a.b",
    "\"\"",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// The value of line `n % lines` replaced.
    Value(usize, usize),
    /// The key of line `n % lines` replaced.
    Key(usize, usize),
    /// Line `n % lines` removed.
    Remove(usize),
    /// Line `n % lines` written twice.
    Duplicate(usize),
    /// Line `n % lines` indented by `k` more (or fewer) spaces.
    Indent(usize, i8),
    /// A value nested `depth` deep in place of line `n % lines`'s value.
    Nest(usize, u16),
    /// The text cut at byte `n % len`.
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0..VALUES.len()).prop_map(|(n, v)| Mutation::Value(n, v)),
        (any::<usize>(), 0..KEYS.len()).prop_map(|(n, k)| Mutation::Key(n, k)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Duplicate),
        (any::<usize>(), -4i8..5).prop_map(|(n, k)| Mutation::Indent(n, k)),
        (any::<usize>(), 1u16..400).prop_map(|(n, d)| Mutation::Nest(n, d)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let n = lines.len();
    if n == 0 {
        return text.to_string();
    }
    let split = |l: &str| -> (String, String) {
        match l.split_once(':') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.to_string(), String::new()),
        }
    };
    match *m {
        Mutation::Value(i, v) => {
            let (k, _) = split(&lines[i % n]);
            lines[i % n] = format!("{k}: {}", VALUES[v]);
        }
        Mutation::Key(i, k) => {
            let (key, v) = split(&lines[i % n]);
            let indent: String = key.chars().take_while(|c| *c == ' ' || *c == '-').collect();
            lines[i % n] = format!("{indent}{}:{v}", KEYS[k]);
        }
        Mutation::Remove(i) => {
            lines.remove(i % n);
        }
        Mutation::Duplicate(i) => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        Mutation::Indent(i, k) => {
            let l = &lines[i % n];
            lines[i % n] = if k >= 0 {
                format!("{}{l}", " ".repeat(k as usize))
            } else {
                l.chars().skip((-k) as usize).collect()
            };
        }
        Mutation::Nest(i, depth) => {
            let (k, _) = split(&lines[i % n]);
            let open = "{a: ".repeat(depth as usize);
            let close = "}".repeat(depth as usize);
            lines[i % n] = format!("{k}: {open}1{close}");
        }
        Mutation::Truncate(i) => {
            let joined = lines.join("\n");
            let mut cut = i % joined.len().max(1);
            while !joined.is_char_boundary(cut) {
                cut -= 1;
            }
            return joined[..cut].to_string();
        }
    }
    lines.join("\n") + "\n"
}

/// Parses `text`: no panic, and every error points into it as `f.yaml:LINE:COL: message`.
fn check(text: &str) -> Result<(), TestCaseError> {
    // YAML breaks lines at `\r\n`, `\n` and a lone `\r`; an error may point just past
    // the last line (the end of the file).
    let lines = text
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .matches('\n')
        .count()
        + 2;
    if let Err(errors) = from_str(text, "f.yaml") {
        prop_assert!(!errors.is_empty());
        for e in errors.iter() {
            prop_assert!(
                e.line >= 1 && e.line <= lines,
                "{e} ({lines} lines)\n{text:?}"
            );
            prop_assert!(e.col >= 1, "{e}");
            prop_assert!(!e.message.trim().is_empty(), "{e}");
            let shown = e.to_string();
            prop_assert!(
                shown.starts_with(&format!("f.yaml:{}:{}: ", e.line, e.col)),
                "{shown}"
            );
        }
    }
    Ok(())
}

#[test]
fn the_base_config_is_valid() {
    from_str(BASE, "f.yaml").unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1500,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_configs_give_positioned_errors(mutations in proptest::collection::vec(mutation(), 1..6)) {
        let mut text = BASE.to_string();
        for m in &mutations {
            text = apply(&text, m);
        }
        check(&text)?;
    }

    #[test]
    fn arbitrary_text_gives_positioned_errors(text in "(?s).{0,400}") {
        check(&text)?;
    }

    #[test]
    fn yaml_shaped_noise_gives_positioned_errors(
        text in "([ -]{0,6}[a-z_]{1,12}: ?[a-z0-9_.:\\[\\]{}\"'-]{0,12}\n){0,30}"
    ) {
        check(&text)?;
    }
}
