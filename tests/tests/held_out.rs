//! Issue #24: no request is refused while a backend passes its checks. Backends held out
//! by live traffic (ejected, suspect) are routed again when nothing else is, retries
//! reach them, and a pool with nothing routable fails open before it answers 503.

use std::sync::Arc;
use std::time::Duration;
use vigil_tests::config::pool;
use vigil_tests::stream::{failures, Stream};
use vigil_tests::{get, start_vigil, traffic, wait_for, wait_for_async, FakeBackend, Vigil};

/// Checks every 100 ms, up after 2 passes, down after 5 failures (a window of about
/// half a second in which a dead backend is still routed); live failures eject after
/// 2 in a row for 30 s (longer than the test).
const CHECKS: &str = "    passive:
      consecutive_failures: 2
      ejection_time: 30s
    health_check:
      interval: 100ms
      fast_interval: 100ms
      down_interval: 100ms
      max_down_interval: 100ms
      timeout: 100ms
      jitter: 0
      rise: 2
      fall: 5
";

async fn backend(v: &Vigil, address: &str) -> serde_json::Value {
    let detail = v.admin_get("/health/detailed").await.json();
    detail["pools"]["web"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == address)
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_backend_that_passes_its_checks_serves_when_the_other_dies() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let v = start_vigil("", &[pool("web", &[(&a, 1), (&b, 1)], CHECKS)]).await;
    let clients = 4;
    let stream = Stream::start(v.listen, "GET", clients);
    wait_for("traffic", Duration::from_secs(10), || stream.count() >= 50).await;

    // 1. A dies: live failures eject it, its checks mark it down.
    let a_addr = a.addr;
    let (a_stats, a_ctl) = (a.stats.clone(), a.ctl.clone());
    a.kill();
    drop(a);
    let a_name = a_addr.to_string();
    wait_for_async("a ejected and down", Duration::from_secs(10), || async {
        let s = backend(&v, &a_name).await;
        s["ejected"] == true && s["health"] == "down"
    })
    .await;
    // 2. A comes back on its port: up by its checks, still ejected, not routed.
    let a = FakeBackend::start_at("a", a_addr, a_stats, a_ctl).await;
    wait_for_async("a up again", Duration::from_secs(10), || async {
        backend(&v, &a_name).await["health"] == "up"
    })
    .await;
    assert_eq!(backend(&v, &a_name).await["ejected"], true);
    let before = stream.count();
    let a_before = traffic(&a);
    wait_for("traffic on b", Duration::from_secs(10), || {
        stream.count() >= before + 50
    })
    .await;
    assert_eq!(
        traffic(&a),
        a_before,
        "an ejected backend got traffic while b served"
    );

    // 3. B dies. A answers its checks the whole time: no request may fail, but the
    //    few in flight on B at that moment (and those are retried on A).
    b.kill();
    v.wait_log(&[
        "routing to ejected backends",
        "no other backend is routable",
    ])
    .await;
    let during = stream.count();
    wait_for("traffic on a", Duration::from_secs(10), || {
        stream.count() >= during + 100
    })
    .await;
    let outcomes = stream.finish().await;
    let lost = failures(&outcomes[before..]);
    assert!(
        lost.len() <= clients,
        "{} requests failed after a passed its checks: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert_eq!(
        backend(&v, &a_name).await["ejected"],
        true,
        "the ejection was ended"
    );
    assert!(traffic(&a) > a_before + 100);
    let detail = v.admin_get("/health/detailed").await.json();
    assert_eq!(detail["pools"]["web"]["routing_held_out"], true);
    assert_eq!(
        v.metric("vigil_pool_routing_held_out{pool=\"web\"}").await,
        Some(1.0)
    );
    assert_eq!(
        v.metric("vigil_pool_routing_held_out_total{pool=\"web\"}")
            .await,
        Some(1.0)
    );
    // Refused by B before its checks caught up, and retried on A.
    assert!(
        v.metric("vigil_upstream_fallback_attempts_total{kind=\"held_out\",pool=\"web\"}")
            .await
            .unwrap()
            > 0.0
    );
    let episodes = v
        .logs()
        .iter()
        .filter(|l| l.contains("routing to ejected backends"))
        .count();
    assert_eq!(episodes, 1, "one line per episode");
}

/// Two backends down by their checks that still answer requests (their health
/// endpoint fails, or they were just restarted and the checks have not caught up).
async fn down_but_answering(extra: &str) -> (Vigil, [FakeBackend; 2]) {
    let bs = [FakeBackend::start("a").await, FakeBackend::start("b").await];
    for b in &bs {
        b.ctl.set_health(500);
    }
    let checks = CHECKS.replace("fall: 5", "fall: 1");
    let (listen, admin) = vigil_tests::free_ports();
    let cfg = vigil_tests::config::config(
        listen,
        admin,
        "",
        &[pool(
            "web",
            &[(&bs[0], 1), (&bs[1], 1)],
            &format!("{extra}{checks}"),
        )],
    );
    let mut v = Vigil::start(&cfg, listen, admin);
    v.wait_live().await;
    wait_for_async("both down", Duration::from_secs(10), || async move {
        get(admin, "x", "/health").await.unwrap().json()["pools"]["web"]["down"] == 2
    })
    .await;
    (v, bs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_nothing_routable_fails_open_before_it_answers_503() {
    let (v, bs) = down_but_answering("").await;
    for _ in 0..20 {
        let r = get(v.listen, "app", "/").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert!(traffic(&bs[0]) + traffic(&bs[1]) >= 20);
    assert_eq!(
        v.metric("vigil_upstream_fallback_attempts_total{kind=\"fail_open\",pool=\"web\"}")
            .await,
        Some(20.0)
    );
    // One refuses: tried first or second, the request is answered by the other.
    let refusing = bs[0].addr;
    let b = Arc::new(bs);
    b[0].kill();
    for _ in 0..10 {
        assert_eq!(get(v.listen, "app", "/").await.unwrap().status, 200);
    }
    // Both refuse: the answer is the 503 of a pool without a healthy backend. (Once
    // its connections are closed: a kill is seen by the backend's tasks in their time,
    // and a kept-alive connection could still answer one request.)
    b[1].kill();
    wait_for("b's connections closed", Duration::from_secs(5), || {
        b[1].stats.open() == 0
    })
    .await;
    let r = get(v.listen, "app", "/").await.unwrap();
    assert_eq!(
        (r.status, r.header("x-vigil-error")),
        (503, Some("no-healthy-backend")),
        "{refusing}: {r:?}"
    );
    // Failing open is not an error to log per request.
    let per_request: Vec<String> = v
        .logs()
        .into_iter()
        .filter(|l| l.contains("Fail to proxy"))
        .collect();
    assert!(per_request.is_empty(), "{per_request:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_open_can_be_turned_off() {
    let (v, bs) = down_but_answering("    fail_open: false\n").await;
    let r = get(v.listen, "app", "/").await.unwrap();
    assert_eq!(
        (r.status, r.header("x-vigil-error")),
        (503, Some("no-healthy-backend"))
    );
    assert_eq!(traffic(&bs[0]) + traffic(&bs[1]), 0);
}
