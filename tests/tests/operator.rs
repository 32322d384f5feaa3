//! Operator controls (issue #12): a backend's admin state (drain, maintenance, ready)
//! over the admin API and the CLI, kept across reloads; slow start after it returns;
//! checks that step aside while live traffic proves a backend healthy.

use std::time::Duration;
use tokio::time::Instant;
use vigil_tests::config::pool;
use vigil_tests::{
    get, request, start_vigil, traffic, wait_for, wait_for_async, FakeBackend, Vigil,
};

const TOKEN: &str = "s3cret";

async fn set_state(v: &Vigil, b: &FakeBackend, state: &str, token: Option<&str>) -> u16 {
    let path = format!("/admin/backend?pool=web&address={}&state={state}", b.addr);
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    request(v.admin, "POST", "admin", &path, &headers, "")
        .await
        .unwrap()
        .status
}

async fn backend_detail(v: &Vigil, b: &FakeBackend) -> serde_json::Value {
    v.backend_detail("web", b.addr).await
}

/// `n` requests one after another; returns how many `b` answered.
async fn share(v: &Vigil, b: &FakeBackend, n: u64) -> u64 {
    let before = traffic(b);
    for _ in 0..n {
        assert_eq!(get(v.listen, "app", "/").await.unwrap().status, 200);
    }
    traffic(b) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_maintenance_and_ready_with_slow_start() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let checks = "    slow_start: 5s
    health_check:
      interval: 100ms
      fast_interval: 50ms
      jitter: 0
      rise: 1
      fall: 1
";
    let v = start_vigil(
        &format!("  token: {TOKEN}\n"),
        &[pool("web", &[(&a, 1), (&b, 1)], checks)],
    )
    .await;

    // The token is required; unknown backends and states are refused.
    assert_eq!(set_state(&v, &b, "drain", None).await, 401);
    assert_eq!(set_state(&v, &b, "asleep", Some(TOKEN)).await, 400);
    let r = request(
        v.admin,
        "POST",
        "admin",
        "/admin/backend?pool=web&address=127.0.0.1:1&state=drain",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);

    // Drain: a request already on b finishes; no new one reaches it; checks go on.
    // Shorter than stall_min: b is slow, not stuck.
    b.ctl.set_delay(Duration::from_millis(200));
    let listen = v.listen;
    // Round robin: of two requests at once, one waits on b.
    let pair: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(listen, "app", "/slow").await.unwrap() }))
        .collect();
    wait_for("a request waiting on b", Duration::from_secs(3), || {
        b.stats.paths.lock().unwrap().iter().any(|p| p == "/slow")
    })
    .await;
    assert_eq!(set_state(&v, &b, "drain", Some(TOKEN)).await, 200);
    let mut from_b = 0;
    for t in pair {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "a request in flight did not finish");
        from_b += (r.header("x-backend") == Some("b")) as u32;
    }
    assert_eq!(from_b, 1, "the request in flight on b finished there");
    b.ctl.set_delay(Duration::ZERO);
    let checks_before = b.stats.health_requests();
    assert_eq!(share(&v, &b, 40).await, 0, "a drained backend got requests");
    wait_for(
        "checks of the drained backend",
        Duration::from_secs(3),
        || b.stats.health_requests() >= checks_before + 3,
    )
    .await;
    let d = backend_detail(&v, &b).await;
    assert_eq!(d["admin_state"], "drain");
    let series = format!(
        "vigil_backend_admin_state{{backend=\"{}\",pool=\"web\",state=\"drain\"}}",
        b.addr
    );
    assert_eq!(v.metric(&series).await, Some(1.0));
    assert!(v
        .json_logs()
        .iter()
        .any(|l| l["fields"]["message"] == "backend admin state changed"
            && l["fields"]["to"] == "drain"));

    // Kept across a reload of the same file.
    assert_eq!(v.post_reload(Some(TOKEN)).await.status, 200);
    assert_eq!(backend_detail(&v, &b).await["admin_state"], "drain");

    // Maintenance: no requests and no checks; its check connection is closed.
    assert_eq!(set_state(&v, &b, "maintenance", Some(TOKEN)).await, 200);
    wait_for(
        "the check connection closed",
        Duration::from_secs(3),
        || b.stats.open_check_connections() == 0,
    )
    .await;
    // a, up, is checked every 100 ms as b was: five more checks of a are half a second
    // of the checker's schedule, in which b would have had about as many.
    let checks_before = b.stats.health_requests();
    let a_checks = a.stats.health_requests();
    wait_for("five more checks of a", Duration::from_secs(10), || {
        a.stats.health_requests() >= a_checks + 5
    })
    .await;
    assert_eq!(
        b.stats.health_requests(),
        checks_before,
        "a backend in maintenance was checked"
    );
    assert_eq!(share(&v, &b, 20).await, 0);

    // Ready, from the CLI: checked at once, then slow start: a small share at first...
    let out = std::process::Command::new(Vigil::binary())
        .args(["backend", "ready", "web", &b.addr.to_string(), "-c"])
        .arg(&v.config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"admin_state\":\"ready\""));
    let up = format!("vigil_backend_up{{backend=\"{}\",pool=\"web\"}}", b.addr);
    v.wait_metric(&up, 1.0).await;
    let t = Instant::now();
    let early = share(&v, &b, 100).await;
    let took = t.elapsed();
    // After `took` of 5 s, b's weight is at most 0.05 + 0.95 * took/5s of a's. Whatever
    // `took`, under 40: without a ramp, round robin gives b 50 of the 100.
    let ramp = 0.05 + 0.95 * (took.as_secs_f64() / 5.0).min(1.0);
    let bound = ((100.0 * ramp / (1.0 + ramp) * 1.5 + 5.0) as u64).min(39);
    eprintln!("slow start: b got {early} of 100 in {took:?} (bound {bound})");
    assert!(
        early <= bound,
        "b got {early} of 100 in its first {took:?} of slow start (bound {bound})"
    );
    // ...and its full share once the window is over.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(t.elapsed())).await;
    let late = share(&v, &b, 100).await;
    assert!(
        (35..=65).contains(&late),
        "b got {late} of 100 after slow start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_step_aside_while_live_traffic_succeeds() {
    let a = FakeBackend::start("a").await;
    let extra = "    passive:
      consecutive_failures: 0
    health_check:
      interval: 200ms
      fast_interval: 50ms
      jitter: 0
      rise: 1
      fall: 3
      skip_while_serving: true
";
    let v = start_vigil("", &[pool("web", &[(&a, 1)], extra)]).await;
    // Steady traffic for two seconds: about ten checks were due, almost all skipped.
    let checks_before = a.stats.health_requests();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        assert_eq!(get(v.listen, "app", "/").await.unwrap().status, 200);
    }
    let checked = a.stats.health_requests() - checks_before;
    assert!(checked <= 2, "{checked} checks ran while traffic succeeded");
    let skipped = format!(
        "vigil_health_checks_skipped_total{{backend=\"{}\",pool=\"web\"}}",
        a.addr
    );
    assert!(v.metric(&skipped).await.unwrap() >= 6.0);
    assert!(
        backend_detail(&v, &a).await["checks_skipped"]
            .as_u64()
            .unwrap()
            >= 6
    );

    // A failing live request: checks resume within an interval.
    a.ctl.set_status(500);
    assert_eq!(get(v.listen, "app", "/").await.unwrap().status, 500);
    let checks_before = a.stats.health_requests();
    wait_for_async(
        "a check after a live failure",
        Duration::from_millis(600),
        || async {
            get(v.listen, "app", "/").await.unwrap();
            a.stats.health_requests() > checks_before
        },
    )
    .await;
}
