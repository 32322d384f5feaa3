//! Issue #25: one HTTP/1 behaviour whichever path carries a request. Each case runs
//! twice: on vigil's own request loop, and with `VIGIL_FAST_PATH=off` (every request
//! through Pingora's proxy), and must come out the same.

use std::path::PathBuf;
use std::time::Duration;
use vigil_tests::config::{config, pool, FAST_CHECKS};
use vigil_tests::raw::RawConn;
use vigil_tests::{free_ports, traffic, wait_for, FakeBackend, Vigil};

/// vigil in front of `b` on each path, with the access log on (JSON, to the file
/// returned beside it).
async fn both_paths(b: &FakeBackend) -> [(Vigil, &'static str, PathBuf); 2] {
    let start = |env: &'static [(&'static str, &'static str)]| {
        let log = Vigil::temp_path("policy-access.log");
        let top = format!("access_log:\n  format: json\n  path: {}\n", log.display());
        let (listen, admin) = free_ports();
        let cfg = config(listen, admin, &top, &[pool("web", &[(b, 1)], FAST_CHECKS)]);
        (Vigil::start_with_env(&cfg, listen, admin, env), log)
    };
    let (mut own, own_log) = start(&[]);
    let (mut pingora, pingora_log) = start(&[("VIGIL_FAST_PATH", "off")]);
    own.wait_ready().await;
    pingora.wait_ready().await;
    [
        (own, "request loop", own_log),
        (pingora, "Pingora's proxy", pingora_log),
    ]
}

async fn answer(v: &Vigil, request: &[u8]) -> vigil_tests::Response {
    let mut c = RawConn::connect(v.listen).await;
    c.send(request).await.unwrap();
    c.response().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_forwarded_for_line_continues_the_chain() {
    let b = FakeBackend::start("b").await;
    for (v, path, _) in both_paths(&b).await {
        let r = answer(
            &v,
            b"GET /x HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2, 10.0.0.3\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let seen = b.stats.last_request.lock().unwrap().clone().unwrap();
        assert_eq!(
            seen.header("x-forwarded-for"),
            Some("10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_without_the_connection_token_is_no_upgrade() {
    let b = FakeBackend::start("b").await;
    for (v, path, _) in both_paths(&b).await {
        // The test backend switches protocols whenever it sees `Upgrade`.
        let r = answer(
            &v,
            b"GET /ws HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let seen = b.stats.last_request.lock().unwrap().clone().unwrap();
        assert_eq!(seen.header("upgrade"), None, "{path}: {seen:?}");
        assert_ne!(seen.header("connection"), Some("upgrade"), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_hosts_and_targets_are_400_without_a_backend() {
    let b = FakeBackend::start("b").await;
    for (v, path, _) in both_paths(&b).await {
        let before = traffic(&b);
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: user@app\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: app/x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: app:80x\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: app\r\n\r\n",
        ] {
            let mut c = RawConn::connect(v.listen).await;
            c.send(bad).await.unwrap();
            let r = c.response().await.unwrap();
            assert_eq!(
                r.status,
                400,
                "{path}: {:?} -> {r:?}",
                String::from_utf8_lossy(bad)
            );
            assert!(c.closed_within(Duration::from_secs(5)).await);
        }
        assert_eq!(
            traffic(&b),
            before,
            "{path}: a malformed request reached the backend"
        );
        for good in [
            &b"GET / HTTP/1.1\r\nHost: app:8080\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        ] {
            assert_eq!(answer(&v, good).await.status, 200, "{path}");
        }
    }
}

/// The fields of an access line that do not change from one request to the next.
fn stable_fields(line: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
    for k in ["time", "client", "duration_ms", "request_id"] {
        assert!(v.get(k).is_some(), "{k} missing: {line}");
        v[k] = serde_json::Value::Null;
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_access_lines_are_the_same_on_both_paths() {
    let b = FakeBackend::start("b").await;
    let body = "x".repeat(1024);
    let mut lines = Vec::new();
    for (v, path, log) in both_paths(&b).await {
        let post = format!(
            "POST /submit?q=1 HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\nX-Request-Id: r1\r\n\r\n{body}",
            body.len()
        );
        let mut c = RawConn::connect(v.listen).await;
        c.send(post.as_bytes()).await.unwrap();
        let r = c.response().await.unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let seen = b.stats.last_request.lock().unwrap().clone().unwrap();
        assert_eq!(
            (
                seen.method.as_str(),
                seen.body.len(),
                seen.header("content-length")
            ),
            ("POST", 1024, Some("1024")),
            "{path}"
        );
        // A body cut short by the client: nothing reaches the backend.
        let before = traffic(&b);
        let mut c = RawConn::connect(v.listen).await;
        c.send(b"PUT /p HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap();
        drop(c);
        c = RawConn::connect(v.listen).await;
        c.send(b"GET /after HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(c.response().await.unwrap().status, 200, "{path}");
        assert_eq!(traffic(&b), before + 1, "{path}: a cut body was sent on");
        wait_for("two access lines", Duration::from_secs(5), || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 2)
        })
        .await;
        let text = std::fs::read_to_string(&log).unwrap();
        let first = text.lines().next().unwrap().to_string();
        let v: serde_json::Value = serde_json::from_str(&first).unwrap();
        assert_eq!(
            (v["bytes_in"].as_u64(), v["request_id"].as_str()),
            (Some(1024), Some("r1")),
            "{path}: {first}"
        );
        lines.push(stable_fields(&first));
    }
    assert_eq!(lines[0], lines[1], "the same request logged differently");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_in_is_cut_after_body_timeout() {
    // On vigil's own loop (Pingora's path has no whole-body deadline yet).
    let b = FakeBackend::start("b").await;
    let v = vigil_tests::start_vigil(
        "limits:\n  body_timeout: 300ms\n",
        &[pool("web", &[(&b, 1)], FAST_CHECKS)],
    )
    .await;
    let before = traffic(&b);
    let mut c = RawConn::connect(v.listen).await;
    c.send(b"POST /slow HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let r = c.response().await.unwrap();
    assert_eq!(r.status, 408, "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(c.closed_within(Duration::from_secs(5)).await);
    assert_eq!(traffic(&b), before, "a cut body reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_its_request_waits_frees_the_backend() {
    let b = FakeBackend::start("b").await;
    b.ctl.set_hang_path(Some("/hang"));
    for (v, path, _) in both_paths(&b).await {
        let in_flight = || async {
            let d = v.admin_get("/health/detailed").await.json();
            d["pools"]["web"]["backends"][0]["in_flight_requests"].as_u64()
        };
        let mut c = RawConn::connect(v.listen).await;
        c.send(b"GET /hang HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        vigil_tests::wait_for_async("the request waits", Duration::from_secs(5), || async {
            in_flight().await == Some(1)
        })
        .await;
        drop(c);
        // Well before the pool's 30 s read timeout.
        vigil_tests::wait_for_async(
            &format!("{path}: the request cancelled with its client"),
            Duration::from_secs(5),
            || async { in_flight().await == Some(0) },
        )
        .await;
    }
}
