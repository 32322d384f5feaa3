//! Backend faults under a steady stream of requests, passive ejection, panic mode,
//! and SIGTERM drain. Each fault leaves another backend alive.

use std::sync::atomic::Ordering;
use std::time::Duration;
use vigil_tests::config::{config, pool, FAST_CHECKS};
use vigil_tests::stream::{failures, Stream};
use vigil_tests::{
    free_ports, get, start_vigil, traffic, wait_for, wait_for_async, FakeBackend, Mode, Vigil,
};

async fn two() -> (FakeBackend, FakeBackend) {
    (FakeBackend::start("a").await, FakeBackend::start("b").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_backend_bounded_latency_and_taken_out() {
    let (a, b) = two().await;
    let checks = FAST_CHECKS
        .replace("timeout: 1s", "timeout: 200ms")
        .replace("fall: 1", "fall: 2");
    let extra = format!("    read_timeout: 300ms\n    passive:\n      consecutive_failures: 2\n      ejection_time: 30s\n{checks}");
    let v = start_vigil("", &[pool("web", &[(&a, 1), (&b, 1)], &extra)]).await;
    let stream = Stream::start(v.listen, "GET", 2);
    wait_for("some traffic", Duration::from_secs(10), || {
        stream.count() >= 20
    })
    .await;
    a.ctl.set_mode(Mode::Hang);
    let admin = v.admin;
    wait_for_async("a taken out", Duration::from_secs(10), || async move {
        let j = get(admin, "x", "/health").await.unwrap().json();
        j["pools"]["web"]["up"] == 1
    })
    .await;
    let n = stream.count();
    wait_for("more traffic", Duration::from_secs(10), || {
        stream.count() >= n + 50
    })
    .await;
    let outcomes = stream.finish().await;
    assert!(
        failures(&outcomes).is_empty(),
        "GETs failed while a backend hung: {:?}",
        failures(&outcomes)
    );
    // Bounded: at worst one read timeout per attempt, never a hang.
    let worst = outcomes.iter().map(|o| o.latency).max().unwrap();
    assert!(worst < Duration::from_secs(5), "a request took {worst:?}");
    let detail = v.admin_get("/health/detailed").await.json();
    let st = &detail["pools"]["web"]["backends"][0];
    // Taken out: suspect (its requests stuck, issue #11), then down or ejected.
    assert!(
        ["down", "ejected", "suspect"].contains(&st["state"].as_str().unwrap()),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_still_answers_and_is_not_retried() {
    let (a, b) = two().await;
    a.ctl.set_delay(Duration::from_millis(150));
    let v = start_vigil("", &[pool("web", &[(&a, 1), (&b, 1)], FAST_CHECKS)]).await;
    let stream = Stream::start(v.listen, "GET", 2);
    wait_for("traffic", Duration::from_secs(20), || stream.count() >= 40).await;
    let outcomes = stream.finish().await;
    assert!(failures(&outcomes).is_empty());
    assert!(
        outcomes.iter().any(|o| o.body == "a"),
        "the slow backend was dropped"
    );
    assert_eq!(
        v.metric("vigil_upstream_retries_total{pool=\"web\"}").await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_backend_costs_no_failed_get() {
    let (a, b) = two().await;
    let v = start_vigil("", &[pool("web", &[(&a, 1), (&b, 1)], FAST_CHECKS)]).await;
    let stream = Stream::start(v.listen, "GET", 2);
    // Every second a flips between healthy and answering 503 to everything.
    for i in 0..6 {
        let failing = i % 2 == 0;
        a.ctl.set_health(if failing { 503 } else { 200 });
        a.ctl.set_status(if failing { 503 } else { 200 });
        let until = stream.count() + 30;
        wait_for("traffic", Duration::from_secs(20), || {
            stream.count() >= until
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await; // the flap period itself
    }
    let outcomes = stream.finish().await;
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    let ups = v
        .transitions()
        .iter()
        .filter(|l| {
            l["fields"]["backend"] == a.addr.to_string().as_str() && l["fields"]["to"] == "up"
        })
        .count();
    assert!(ups >= 3, "the checker missed the recoveries ({ups} ups)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_doubles_is_capped_and_survives_active_success() {
    let (a, b) = two().await;
    a.ctl.set_status(500); // live traffic fails, health checks pass
    let extra = format!(
        "    retry_on_status: []\n    passive:\n      consecutive_failures: 3\n      ejection_time: 300ms\n      max_ejection_time: 600ms\n      max_ejected_percent: 50\n{}",
        FAST_CHECKS.replace("interval: 1s", "interval: 100ms").replace("timeout: 1s", "timeout: 100ms")
    );
    let v = start_vigil("", &[pool("web", &[(&a, 1), (&b, 1)], &extra)]).await;
    let stream = Stream::start(v.listen, "GET", 1);
    let a_addr = a.addr.to_string();
    let ejections = |v: &Vigil| -> Vec<String> {
        v.transitions()
            .iter()
            .filter(|l| l["fields"]["backend"] == a_addr.as_str() && l["fields"]["to"] == "ejected")
            .map(|l| l["fields"]["reason"].as_str().unwrap().to_string())
            .collect()
    };
    // While the first ejection lasts, active checks keep passing and it stays ejected.
    wait_for("first ejection", Duration::from_secs(10), || {
        !ejections(&v).is_empty()
    })
    .await;
    let d = v.admin_get("/health/detailed").await.json();
    let checks = d["pools"]["web"]["backends"][0]["checks"].as_u64().unwrap();
    wait_for_async("two passing checks", Duration::from_secs(5), || {
        let admin = v.admin;
        async move {
            let d = get(admin, "x", "/health/detailed").await.unwrap().json();
            d["pools"]["web"]["backends"][0]["checks"].as_u64().unwrap() >= checks + 2
        }
    })
    .await;
    let d = v.admin_get("/health/detailed").await.json();
    let st = &d["pools"]["web"]["backends"][0];
    assert_eq!(
        (st["health"].as_str(), st["state"].as_str()),
        (Some("up"), Some("ejected")),
        "an active success ended the ejection: {st}"
    );

    wait_for("four ejections", Duration::from_secs(20), || {
        ejections(&v).len() >= 4
    })
    .await;
    let _ = stream.finish().await;
    let got = ejections(&v);
    let durations: Vec<&str> = got
        .iter()
        .map(|r| r.rsplit("ejected for ").next().unwrap())
        .collect();
    assert_eq!(
        &durations[..4],
        &["300ms", "600ms", "600ms", "600ms"],
        "{got:?}"
    );
    assert!(
        v.metric(&format!(
            "vigil_passive_ejections_total{{backend=\"{a_addr}\",pool=\"web\"}}"
        ))
        .await
        .unwrap()
            >= 4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_threshold_routes_to_every_backend() {
    let bs = [
        FakeBackend::start("a").await,
        FakeBackend::start("b").await,
        FakeBackend::start("c").await,
        FakeBackend::start("d").await,
    ];
    for b in &bs[1..] {
        b.ctl.set_health(500); // checks fail, traffic would be fine
    }
    let members: Vec<_> = bs.iter().map(|b| (b, 1)).collect();
    let panic = pool(
        "panic",
        &members,
        &format!("    routes:\n      - host: panic\n    panic_threshold: 50\n{FAST_CHECKS}"),
    );
    let calm = pool(
        "calm",
        &members,
        &format!("    routes:\n      - host: calm\n{FAST_CHECKS}"),
    );
    let v = start_vigil("", &[panic, calm]).await;
    let admin = v.admin;
    wait_for_async("three down", Duration::from_secs(10), || async move {
        get(admin, "x", "/health").await.unwrap().json()["pools"]["panic"]["down"] == 3
    })
    .await;
    let before: Vec<u64> = bs.iter().map(traffic).collect();
    for _ in 0..20 {
        assert_eq!(get(v.listen, "calm", "/").await.unwrap().body, "a");
    }
    for _ in 0..40 {
        assert_eq!(get(v.listen, "panic", "/").await.unwrap().status, 200);
    }
    for (b, was) in bs.iter().zip(&before).skip(1) {
        assert!(
            traffic(b) > *was,
            "panic mode did not route to down backend {}",
            b.name
        );
    }
    assert_eq!(
        v.metric("vigil_panic_routed_requests_total{pool=\"panic\"}")
            .await,
        Some(40.0)
    );
    assert_eq!(
        v.metric("vigil_panic_routed_requests_total{pool=\"calm\"}")
            .await,
        Some(0.0)
    );
    assert_eq!(
        v.admin_get("/health/detailed").await.json()["pools"]["panic"]["panic"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let a = FakeBackend::start("a").await;
    a.ctl.set_delay(Duration::from_millis(1500));
    let (listen, admin) = free_ports();
    let cfg = config(listen, admin, "", &[pool("web", &[(&a, 1)], FAST_CHECKS)])
        .replace("grace_period: 5s", "grace_period: 10s");
    let mut v = Vigil::start(&cfg, listen, admin);
    v.wait_ready().await;
    let mut slow = Vec::new();
    for _ in 0..5 {
        slow.push(tokio::spawn(async move { get(listen, "app", "/").await }));
    }
    wait_for("5 requests at the backend", Duration::from_secs(10), || {
        a.stats.in_flight.load(Ordering::SeqCst) == 5
    })
    .await;
    v.signal(libc::SIGTERM);
    for t in slow {
        let r = t
            .await
            .unwrap()
            .expect("a request in flight at SIGTERM was dropped");
        assert_eq!((r.status, r.body.as_str()), (200, "a"));
    }
    let status = v
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("vigil did not exit after draining");
    assert!(status.success(), "exit status {status}");
    assert!(
        get(listen, "app", "/").await.is_err(),
        "still accepting after exit"
    );
    v.wait_log(&["drained"]).await;
    // A clean exit writes no error (Pingora logs one for a listener whose stop signal
    // just closes).
    let errors: Vec<_> = v
        .json_logs()
        .into_iter()
        .filter(|l| l["level"] == "ERROR")
        .collect();
    assert!(errors.is_empty(), "errors on a clean exit: {errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_hung_backend_answers_504_after_read_timeout() {
    let a = FakeBackend::start("a").await;
    let v = start_vigil(
        "",
        &[pool(
            "web",
            &[(&a, 1)],
            &format!("    read_timeout: 300ms\n{FAST_CHECKS}"),
        )],
    )
    .await;
    a.ctl.set_mode(Mode::Hang);
    let r = get(v.listen, "app", "/")
        .await
        .expect("an answer, not a hang");
    assert_eq!(r.status, 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_at_once_even_with_requests_in_flight() {
    let a = FakeBackend::start("a").await;
    a.ctl.set_delay(Duration::from_secs(20));
    let (listen, admin) = free_ports();
    let cfg = config(listen, admin, "", &[pool("web", &[(&a, 1)], FAST_CHECKS)])
        .replace("grace_period: 5s", "grace_period: 30s");
    let mut v = Vigil::start(&cfg, listen, admin);
    v.wait_ready().await;
    let held = tokio::spawn(async move { get(listen, "app", "/").await });
    wait_for("a request at the backend", Duration::from_secs(10), || {
        a.stats.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;
    v.signal(libc::SIGINT);
    // Well inside the 20 s the request would take and the 30 s grace period.
    assert!(
        v.wait_exit(Duration::from_secs(5)).await.is_some(),
        "SIGINT did not exit at once"
    );
    assert!(
        held.await.unwrap().is_err(),
        "the held request should be cut off"
    );
}
