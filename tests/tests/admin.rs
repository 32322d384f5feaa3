//! The admin listener's answers, `/metrics` against promtool, and the command line.

use std::process::Command;
use std::time::Duration;
use vigil_tests::config::{pool, FAST_CHECKS};
use vigil_tests::{get, request, start_vigil, wait_for_async, FakeBackend, Vigil};

const FAMILIES: [&str; 25] = [
    "vigil_backend_up",
    "vigil_backend_state",
    "vigil_health_checks_total",
    "vigil_health_check_duration_seconds",
    "vigil_health_check_connections_opened_total",
    "vigil_health_checks_in_flight",
    "vigil_health_check_lag_seconds",
    "vigil_backend_transitions_total",
    "vigil_pool_backends",
    "vigil_requests_total",
    "vigil_upstream_requests_total",
    "vigil_request_duration_seconds",
    "vigil_upstream_retries_total",
    "vigil_passive_ejections_total",
    "vigil_no_healthy_backend_total",
    "vigil_config_reloads_total",
    "vigil_config_last_reload_success_timestamp_seconds",
    "vigil_backend_suspect_total",
    "vigil_upstream_stall_retries_total",
    "vigil_backend_admin_state",
    "vigil_health_checks_skipped_total",
    "vigil_pool_latency_estimate_seconds",
    "vigil_pool_queue_length",
    "vigil_pool_queue_wait_seconds",
    "vigil_requests_refused_total",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_have_the_contract_shapes() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    b.ctl.set_health(500);
    let v = start_vigil("", &[pool("web", &[(&a, 1), (&b, 3)], FAST_CHECKS)]).await;
    let admin = v.admin;
    wait_for_async("b down", Duration::from_secs(10), || async move {
        get(admin, "a", "/health").await.unwrap().json()["pools"]["web"]["down"] == 1
    })
    .await;

    let live = v.admin_get("/health/live").await;
    assert_eq!(
        (live.status, live.json()),
        (200, serde_json::json!({"status": "alive"}))
    );
    let ready = v.admin_get("/health/ready").await;
    assert_eq!(
        (ready.status, ready.json()),
        (200, serde_json::json!({"status": "ready"}))
    );

    let asked = tokio::time::Instant::now();
    let h = v.admin_get("/health").await;
    let around_ms = asked.elapsed().as_secs_f64() * 1e3;
    assert_eq!(h.status, 200);
    let j = h.json();
    assert_eq!(j["status"], "degraded");
    assert_eq!(
        j["pools"]["web"],
        serde_json::json!({"up": 1, "down": 1, "unknown": 0, "ejected": 0})
    );
    // The time vigil took to answer, within what the client measured around it all.
    let took = j["response_time_ms"]
        .as_f64()
        .expect("response_time_ms is a number");
    assert!(
        took > 0.0 && took <= around_ms,
        "response_time_ms {took}, the client measured {around_ms:.3} ms"
    );

    let asked = tokio::time::Instant::now();
    let d = v.admin_get("/health/detailed").await.json();
    let around_ms = asked.elapsed().as_secs_f64() * 1e3;
    let list = d["pools"]["web"]["backends"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    for key in [
        "address",
        "state",
        "weight",
        "consecutive_successes",
        "consecutive_failures",
        "last_check_ms_ago",
        "last_latency_ms",
        "next_check_in_ms",
        "last_error",
        "last_transition_ms_ago",
    ] {
        assert!(
            list[0].get(key).is_some(),
            "detailed lacks {key}: {}",
            list[0]
        );
    }
    assert_eq!(list[1]["address"], b.addr.to_string());
    assert_eq!(list[1]["state"], "down");
    assert_eq!(list[1]["weight"], 3);
    assert_eq!(list[1]["last_error"], "HTTP 500");
    let took = d["response_time_ms"]
        .as_f64()
        .expect("response_time_ms is a number");
    assert!(
        took > 0.0 && took <= around_ms,
        "response_time_ms {took}, the client measured {around_ms:.3} ms"
    );
    assert_eq!(d["checker"]["backend_tasks"], 2);
    assert!(d["checker"]["runtime_tasks"].as_u64().unwrap() >= 2);
    assert!(d["checker"]["connections_opened"].as_u64().unwrap() >= 2);

    a.ctl.set_health(500);
    wait_for_async("unhealthy", Duration::from_secs(10), || async move {
        get(admin, "a", "/health").await.unwrap().status == 503
    })
    .await;
    assert_eq!(v.admin_get("/health").await.json()["status"], "unhealthy");
    assert_eq!(v.admin_get("/nope").await.status, 404);
    assert_eq!(
        request(admin, "POST", "a", "/health", &[], "")
            .await
            .unwrap()
            .status,
        405
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_name_every_family() {
    let a = FakeBackend::start("a").await;
    let v = start_vigil("", &[pool("web", &[(&a, 1)], FAST_CHECKS)]).await;
    get(v.listen, "app", "/").await.unwrap();
    let m = v.admin_get("/metrics").await;
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    for f in FAMILIES {
        assert!(
            m.body.contains(&format!("# TYPE {f} ")),
            "/metrics lacks {f}"
        );
    }
    // Label sets known from the config start at zero.
    let backend = a.addr.to_string();
    for series in [
        format!("vigil_backend_state{{backend=\"{backend}\",pool=\"web\",state=\"ejected\"}} 0"),
        format!(
            "vigil_health_checks_total{{backend=\"{backend}\",pool=\"web\",result=\"timeout\"}} 0"
        ),
        "vigil_no_healthy_backend_total{pool=\"web\"} 0".to_string(),
        "vigil_requests_total{pool=\"web\",status_class=\"5xx\"} 0".to_string(),
        "vigil_config_reloads_total{result=\"failure\"} 0".to_string(),
    ] {
        assert!(m.body.contains(&series), "missing zero series {series}");
    }
    v.wait_metric(
        "vigil_requests_total{pool=\"web\",status_class=\"2xx\"}",
        1.0,
    )
    .await;
    assert_eq!(
        v.metric(&format!(
            "vigil_backend_up{{backend=\"{backend}\",pool=\"web\"}}"
        ))
        .await,
        Some(1.0)
    );

    let path = Vigil::temp_path("metrics.txt");
    std::fs::write(&path, &m.body).unwrap();
    let out = Command::new("promtool")
        .arg("check")
        .arg("metrics")
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .expect("promtool (make test installs it)");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
}

fn vigil_cmd(args: &[&str]) -> std::process::Output {
    Command::new(Vigil::binary()).args(args).output().unwrap()
}

#[test]
fn validate_reports_every_error_with_position() {
    let path = Vigil::temp_path("broken.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - address: 127.0.0.1:8080\npools:\n  - name: web\n    backends:\n      - address: 127.0.0.1:1\n        weight: 0\n    health_check:\n      jitter: 2\n",
    )
    .unwrap();
    let out = vigil_cmd(&["validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    assert!(
        err.contains(&format!("{file}:7:17: weight must be between 1")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:9:15: jitter must be")),
        "{err}"
    );

    let good = Vigil::temp_path("good.yaml");
    // Only the interval is shortened: the check timeout follows it down (issue #7).
    std::fs::write(&good, "listeners:\n  - address: 127.0.0.1:8080\npools:\n  - name: web\n    backends:\n      - address: 127.0.0.1:1\n    health_check:\n      interval: 1s\n").unwrap();
    let out = vigil_cmd(&["validate", good.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    // Config spellings, not Rust names.
    assert!(
        summary
            .starts_with("pool web: 1 http backends, round_robin, routes */, http check every 1s"),
        "{summary}"
    );

    let out = vigil_cmd(&["run", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "run started on a broken file");
    let missing = vigil_cmd(&["validate", "/nonexistent/vigil.yaml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr)
        .contains("/nonexistent/vigil.yaml:1:1: cannot read file"));
}

#[test]
fn validate_reads_the_tls_files_and_warns_when_backends_are_not_verified() {
    let ca = vigil_tests::certs::TestCa::new("validate");
    let leaf = ca.leaf("site", &["site.test"]);
    let path = Vigil::temp_path("tls.yaml");
    let yaml = format!(
        "listeners:\n  - address: 127.0.0.1:8443\n    tls:\n      certificates:\n        - cert: {}\n          key: /nonexistent/site.key\npools:\n  - name: web\n    tls: {{verify: false}}\n    backends:\n      - address: 127.0.0.1:1\n",
        leaf.cert.display()
    );
    std::fs::write(&path, &yaml).unwrap();
    let out = vigil_cmd(&["validate", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}:6:16: cannot read key /nonexistent/site.key",
            path.display()
        )),
        "{err}"
    );

    std::fs::write(
        &path,
        yaml.replace("/nonexistent/site.key", leaf.key.to_str().unwrap()),
    )
    .unwrap();
    let out = vigil_cmd(&["validate", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: pool web: tls.verify is false"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pool web: 1 https backends"));
}

#[test]
fn version_and_help() {
    let out = vigil_cmd(&["--version"]);
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(version.starts_with("vigil "), "{version}");
    // Issue #29: the commit it was built from (this checkout's, when it is one).
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let want = head.unwrap_or_else(|| "unknown".to_string());
    assert!(
        version.contains(&format!("(commit {want}, TLS rustls ")),
        "{version} lacks {want} or the TLS provider"
    );
    let out = vigil_cmd(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "demo", "validate"] {
        assert!(help.contains(cmd), "--help lacks {cmd}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_through_the_proxy() {
    let listen: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let admin: std::net::SocketAddr = "127.0.0.1:9901".parse().unwrap();
    let mut v = Vigil::spawn(
        &["demo", "--log-format", "json"],
        listen,
        admin,
        Vigil::temp_path("none"),
    );
    v.wait_ready().await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        let r = get(listen, "localhost", "/").await.unwrap();
        assert_eq!(r.status, 200);
        seen.insert(r.body);
    }
    assert!(seen.len() >= 2, "demo did not balance: {seen:?}");
    assert!(v
        .admin_get("/metrics")
        .await
        .body
        .contains("vigil_backend_up{backend=\"127.0.0.1:18083\",pool=\"demo\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_backend_metrics_can_be_turned_off() {
    let a = FakeBackend::start("a").await;
    let v = start_vigil(
        "metrics:\n  per_backend: false\n",
        &[pool("web", &[(&a, 1)], FAST_CHECKS)],
    )
    .await;
    get(v.listen, "app", "/").await.unwrap();
    v.wait_metric(
        "vigil_requests_total{pool=\"web\",status_class=\"2xx\"}",
        1.0,
    )
    .await;
    let m = v.admin_get("/metrics").await.body;
    assert!(
        !m.contains(&a.addr.to_string()),
        "a per-backend series is still exported"
    );
    assert!(
        m.contains("vigil_pool_backends{pool=\"web\",state=\"up\"} 1"),
        "pool series missing"
    );
    let per_backend = [
        "vigil_backend_up",
        "vigil_backend_state",
        "vigil_health_checks_total",
        "vigil_backend_transitions_total",
        "vigil_upstream_requests_total",
        "vigil_passive_ejections_total",
        "vigil_backend_suspect_total",
        "vigil_backend_admin_state",
        "vigil_health_checks_skipped_total",
    ];
    for f in FAMILIES {
        let present = m.contains(&format!("# TYPE {f} "));
        assert_eq!(present, !per_backend.contains(&f), "{f}: present={present}");
    }
}

#[test]
fn a_taken_port_is_a_clear_error_at_start() {
    for taken in ["admin", "proxy"] {
        // Ports are free when handed out, but another process may take one before this
        // test does: then another pair.
        let (listen, admin, squat, _squatter) = loop {
            let (listen, admin) = vigil_tests::free_ports();
            let squat = if taken == "admin" { admin } else { listen };
            if let Ok(l) = std::net::TcpListener::bind(squat) {
                break (listen, admin, squat, l);
            }
        };
        let path = Vigil::temp_path("taken.yaml");
        std::fs::write(&path, format!("listeners:\n  - address: {listen}\nadmin:\n  address: {admin}\npools:\n  - name: web\n    backends:\n      - address: 127.0.0.1:1\n")).unwrap();
        let out = vigil_cmd(&["run", "-c", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{taken} port taken");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("cannot listen on {squat}")), "{err}");
    }
}

/// Once the admin answers, the proxy port takes connections: both are bound before
/// either Pingora service starts (CI once caught a 404 test connecting to a proxy
/// port that Pingora's service thread had not bound yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_port_is_open_once_the_admin_is_live() {
    let backend = FakeBackend::start("a").await;
    for _ in 0..5 {
        let (listen, admin) = vigil_tests::free_ports();
        let cfg =
            vigil_tests::config::config(listen, admin, "", &[pool("web", &[(&backend, 1)], "")]);
        let mut v = Vigil::start(&cfg, listen, admin);
        v.wait_live().await;
        // Any HTTP answer will do (200, or 503 before the first check): the point is
        // that the connection is accepted and served, not refused.
        let r = get(listen, "www.example.com", "/").await;
        assert!(
            r.is_ok(),
            "proxy port not serving right after the admin was live: {:?}",
            r.err()
        );
    }
}

/// `docs/grafana/vigil.json` loads: it is a dashboard, every query is valid PromQL
/// (promtool checks them as recording rules), and every metric it names is one vigil
/// exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_metrics_vigil_exports() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana/vigil.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(dash["title"], "vigil");
    let mut exprs: Vec<String> = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 10, "{} queries", exprs.len());

    let a = FakeBackend::start("a").await;
    let v = start_vigil("", &[pool("web", &[(&a, 1)], FAST_CHECKS)]).await;
    get(v.listen, "app", "/").await.unwrap();
    v.post_reload(None).await;
    let body = v.admin_get("/metrics").await.body;
    let exported = |name: &str| body.contains(&format!("# TYPE {name} "));
    for e in &exprs {
        for name in e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("vigil_"))
        {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| exported(b))
                .unwrap_or(name);
            assert!(
                exported(base),
                "the dashboard queries {name}, which vigil does not export"
            );
        }
    }

    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        rules += &format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        );
    }
    let path = Vigil::temp_path("dashboard-rules.yaml");
    std::fs::write(&path, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool (make test installs it)");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue #28: an admin address others can reach needs a token, or the operator's
/// explicit `allow_unauthenticated: true`. (Checked by `validate`: never bound here.)
#[test]
fn a_non_loopback_admin_needs_a_token_or_an_explicit_yes() {
    let write = |name: &str, admin_extra: &str| {
        let path = Vigil::temp_path(name);
        std::fs::write(
            &path,
            format!("listeners:\n  - address: 127.0.0.1:8080\nadmin:\n  address: 0.0.0.0:9901\n{admin_extra}pools:\n  - name: web\n    backends:\n      - address: 127.0.0.1:1\n"),
        )
        .unwrap();
        path
    };
    let open = write("admin-open.yaml", "");
    let out = vigil_cmd(&["validate", open.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:4:12: admin address 0.0.0.0:9901 is not loopback and admin.token is not set",
            open.display()
        )),
        "{err}"
    );
    let out = vigil_cmd(&["run", "-c", open.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "run started with an open admin");
    for (name, extra) in [
        ("admin-token.yaml", "  token: s3cret\n"),
        ("admin-allowed.yaml", "  allow_unauthenticated: true\n"),
    ] {
        let path = write(name, extra);
        let out = vigil_cmd(&["validate", path.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Issue #28: a wrong token is counted and never logged; admin bodies and heads are
/// bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tokens_are_counted_never_logged_and_requests_bounded() {
    let a = FakeBackend::start("a").await;
    let v = start_vigil(
        "  token: the-right-token\n",
        &[pool("web", &[(&a, 1)], FAST_CHECKS)],
    )
    .await;
    let post = |auth: Option<&'static str>, body: String| {
        let admin = v.admin;
        async move {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
            request(admin, "POST", "admin", "/admin/reload", &headers, &body)
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(
        post(Some("Bearer guessed-token-1"), String::new()).await,
        401
    );
    assert_eq!(
        post(Some("Bearer the-right-tokeX"), String::new()).await,
        401
    );
    assert_eq!(post(None, String::new()).await, 401);
    v.wait_metric("vigil_admin_unauthorized_total", 3.0).await;
    assert_eq!(
        post(Some("Bearer the-right-token"), String::new()).await,
        200
    );
    // A body past 64 KiB, announced or not.
    let big = "x".repeat(100 * 1024);
    assert_eq!(post(Some("Bearer the-right-token"), big).await, 413);
    let mut c = vigil_tests::raw::RawConn::connect(v.admin).await;
    c.send(b"POST /admin/reload HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer the-right-token\r\nContent-Length: 100000000\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.head().await.unwrap().status, 413);
    // A head past 16 KiB.
    let mut c = vigil_tests::raw::RawConn::connect(v.admin).await;
    let filler = "y".repeat(20 * 1024);
    c.send(format!("GET /health HTTP/1.1\r\nHost: admin\r\nX-Fill: {filler}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(c.head().await.unwrap().status, 431);
    assert_eq!(v.metric("vigil_admin_unauthorized_total").await, Some(3.0));
    let logs = v.logs().join("\n");
    for secret in ["guessed-token-1", "the-right-tokeX", "the-right-token"] {
        assert!(!logs.contains(secret), "a token in the log:\n{logs}");
    }
    // The admin still answers.
    assert_eq!(v.admin_get("/health").await.status, 200);
}
