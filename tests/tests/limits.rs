//! Backends never overloaded (issue #30): a backend takes at most its pool's
//! `max_requests` at once; a request finding every backend full waits in the pool's
//! queue, first in first out, and is answered `503` with `Retry-After` when the queue
//! is full or its wait reaches `queue.timeout`, each refusal counted.

use std::sync::atomic::Ordering;
use std::time::Duration;
use vigil_tests::config::{pool, FAST_CHECKS};
use vigil_tests::{get, start_vigil, FakeBackend, Response};

/// `n` GETs for `host` sent at once; their answers in the order they were sent.
async fn at_once(v: &vigil_tests::Vigil, host: &'static str, n: usize) -> Vec<Response> {
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(get(v.listen, host, "/")))
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap().expect("an answer"));
    }
    answers
}

fn count(answers: &[Response], status: u16) -> usize {
    answers.iter().filter(|r| r.status == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_takes_more_than_max_requests_and_the_rest_queue_or_are_refused() {
    let (a, b, slow) = (
        FakeBackend::start("a").await,
        FakeBackend::start("b").await,
        FakeBackend::start("slow").await,
    );
    let queued = "    max_requests: 1\n    queue:\n      size: 2\n      timeout: 10s\n    routes:\n      - host: queued\n";
    let short = "    max_requests: 1\n    queue:\n      size: 4\n      timeout: 200ms\n    routes:\n      - host: short\n";
    let v = start_vigil(
        "",
        &[
            pool(
                "queued",
                &[(&a, 1), (&b, 1)],
                &format!("{FAST_CHECKS}{queued}"),
            ),
            pool("short", &[(&slow, 1)], &format!("{FAST_CHECKS}{short}")),
        ],
    )
    .await;
    // Each request holds its backend long enough for all six to have arrived.
    a.ctl.set_delay(Duration::from_millis(800));
    b.ctl.set_delay(Duration::from_millis(800));
    slow.ctl.set_delay(Duration::from_secs(1));

    // Two backends at one request each, two places in the queue: four are served (two
    // after waiting for a place), two refused at once.
    let answers = at_once(&v, "queued", 6).await;
    assert_eq!(count(&answers, 200), 4, "{answers:?}");
    assert_eq!(count(&answers, 503), 2, "{answers:?}");
    for r in answers.iter().filter(|r| r.status == 503) {
        assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
        assert!(r.body.contains("queue is full"), "{r:?}");
    }
    for backend in [&a, &b] {
        assert_eq!(
            backend.stats.peak_traffic_in_flight.load(Ordering::SeqCst),
            1,
            "{} never held more than max_requests",
            backend.name
        );
        assert_eq!(backend.stats.seen.lock().unwrap().len(), 2);
    }

    // One place, its request held 1 s; the two queued behind it wait 200 ms and go.
    let answers = at_once(&v, "short", 3).await;
    assert_eq!(count(&answers, 200), 1, "{answers:?}");
    assert_eq!(count(&answers, 503), 2, "{answers:?}");
    for r in answers.iter().filter(|r| r.status == 503) {
        assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
        assert!(r.body.contains("timeout"), "{r:?}");
    }
    assert_eq!(
        slow.stats.seen.lock().unwrap().len(),
        1,
        "the queue sent nothing on"
    );

    let metric = |series: &'static str| {
        let v = &v;
        async move { v.metric(series).await.unwrap_or(0.0) }
    };
    assert_eq!(
        metric(r#"vigil_requests_refused_total{pool="queued",reason="queue_full"}"#).await,
        2.0
    );
    assert_eq!(
        metric(r#"vigil_requests_refused_total{pool="short",reason="queue_timeout"}"#).await,
        2.0
    );
    // Two waits that got a place, two that timed out (the refused at once never waited).
    assert_eq!(
        metric(r#"vigil_pool_queue_wait_seconds_count{pool="queued"}"#).await,
        2.0
    );
    assert_eq!(
        metric(r#"vigil_pool_queue_wait_seconds_count{pool="short"}"#).await,
        2.0
    );
    assert_eq!(
        metric(r#"vigil_pool_queue_length{pool="short"}"#).await,
        0.0
    );
}

/// Retries of the pool's requests in flight at once stay within `retry_budget`: with
/// `ratio: 0` only the floor `min` of them may retry; the others end with the answer
/// their one attempt got, each refusal counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_in_flight_stay_within_the_pools_retry_budget() {
    let backends = [
        FakeBackend::start("x").await,
        FakeBackend::start("y").await,
        FakeBackend::start("z").await,
    ];
    let budget = "    retries: 3\n    retry_on_status: [500]\n    retry_budget:\n      ratio: 0\n      min: 2\n    passive:\n      consecutive_failures: 0\n    routes:\n      - host: capped\n";
    let members: Vec<_> = backends.iter().map(|b| (b, 1)).collect();
    let v = start_vigil(
        "",
        &[pool("capped", &members, &format!("{FAST_CHECKS}{budget}"))],
    )
    .await;
    for b in &backends {
        // Every answer fails, late enough for the six first attempts to overlap.
        b.ctl.set_delay(Duration::from_millis(400));
        b.ctl.set_status(500);
    }
    let answers = at_once(&v, "capped", 6).await;
    assert_eq!(count(&answers, 500), 6, "{answers:?}");
    // Two requests retry, each on the two backends it has not tried; four do not.
    let sent: usize = backends
        .iter()
        .map(|b| b.stats.seen.lock().unwrap().len())
        .sum();
    assert_eq!(sent, 6 + 2 * 2, "attempts the backends saw");
    let metric = |series: &'static str| {
        let v = &v;
        async move { v.metric(series).await.unwrap_or(0.0) }
    };
    assert_eq!(
        metric(r#"vigil_requests_refused_total{pool="capped",reason="retry_budget"}"#).await,
        4.0
    );
    assert_eq!(
        metric(r#"vigil_upstream_retries_total{pool="capped"}"#).await,
        4.0
    );

    // The places are given back when the requests end: the same again, the same counts.
    let answers = at_once(&v, "capped", 6).await;
    assert_eq!(count(&answers, 500), 6, "{answers:?}");
    assert_eq!(
        metric(r#"vigil_requests_refused_total{pool="capped",reason="retry_budget"}"#).await,
        8.0
    );
}

/// A backend that cannot take a request (here: dead, refusing connections) has its
/// requests sent elsewhere outside the retry budget, even a budget of nothing: that
/// moves its load, it adds none. Retries that would add load stay within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backends_requests_go_elsewhere_whatever_the_retry_budget() {
    let dead = FakeBackend::start("dead").await;
    let (y, z) = (FakeBackend::start("y").await, FakeBackend::start("z").await);
    // Checks far apart and no passive ejection: the dead backend stays a candidate.
    let slow_checks = "    health_check:\n      interval: 60s\n      timeout: 1s\n      rise: 1\n      fall: 1\n    passive:\n      consecutive_failures: 0\n";
    let budget = "    retries: 2\n    retry_on_status: [500]\n    retry_budget:\n      ratio: 0\n      min: 0\n    routes:\n      - host: none\n";
    let v = start_vigil(
        "",
        &[pool(
            "none",
            &[(&dead, 1), (&y, 1), (&z, 1)],
            &format!("{slow_checks}{budget}"),
        )],
    )
    .await;
    dead.kill();
    let answers = at_once(&v, "none", 12).await;
    assert_eq!(count(&answers, 200), 12, "{answers:?}");
    let metric = |series: &'static str| {
        let v = &v;
        async move { v.metric(series).await.unwrap_or(0.0) }
    };
    assert!(
        metric(r#"vigil_upstream_retries_total{pool="none"}"#).await >= 1.0,
        "the dead backend's requests were retried"
    );
    assert_eq!(
        metric(r#"vigil_requests_refused_total{pool="none",reason="retry_budget"}"#).await,
        0.0
    );
    // A 500 would be retried, but that adds load: with no budget, never.
    y.ctl.set_status(500);
    z.ctl.set_status(500);
    let answers = at_once(&v, "none", 6).await;
    assert_eq!(count(&answers, 500), 6, "{answers:?}");
    assert_eq!(
        metric(r#"vigil_requests_refused_total{pool="none",reason="retry_budget"}"#).await,
        6.0
    );
}
