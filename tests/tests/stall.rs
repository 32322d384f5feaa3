//! Frozen backends (issue #11): a backend that takes requests and never answers becomes
//! suspect from live traffic within a fraction of a second, long before its health
//! checks fail; no new request goes to it; nothing fails.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vigil_tests::config::pool;
use vigil_tests::{get, start_vigil, traffic, wait_for, FakeBackend, Mode};

/// Checks slow enough that only live traffic can notice a frozen backend in time.
const SLOW_CHECKS: &str = "    read_timeout: 3s
    passive:
      ejection_time: 1s
    health_check:
      interval: 1s
      fast_interval: 50ms
      timeout: 1s
      jitter: 0
      rise: 1
      fall: 3
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_backend_is_suspect_from_live_traffic_and_gets_no_new_requests() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let f = FakeBackend::start("frozen").await;
    let v = start_vigil(
        "",
        &[pool("web", &[(&a, 1), (&b, 1), (&f, 1)], SLOW_CHECKS)],
    )
    .await;

    // A steady stream: 8 clients in a loop.
    let stop = Arc::new(AtomicBool::new(false));
    let (failed, slow, done) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, failed, slow, done) = (stop.clone(), failed.clone(), slow.clone(), done.clone());
        let listen = v.listen;
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let t = tokio::time::Instant::now();
                match get(listen, "app", "/").await {
                    Ok(r) if r.status == 200 => {}
                    _ => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
                if t.elapsed() > Duration::from_secs(1) {
                    slow.fetch_add(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    wait_for("traffic flowing", Duration::from_secs(10), || {
        done.load(Ordering::SeqCst) > 300
    })
    .await;

    f.ctl.set_mode(Mode::Hang);
    v.wait_log(&["backend is suspect", &f.addr.to_string()])
        .await;
    let at_suspicion = traffic(&f);
    let served = done.load(Ordering::SeqCst);
    wait_for("1,000 more requests", Duration::from_secs(30), || {
        done.load(Ordering::SeqCst) > served + 1000
    })
    .await;
    assert!(
        traffic(&f) <= at_suspicion + 2,
        "{} requests went to the suspect backend after it became suspect",
        traffic(&f) - at_suspicion
    );
    // Only what was sent before suspicion waited (then retried elsewhere after read_timeout).
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "idempotent requests failed"
    );
    let slow = slow.load(Ordering::SeqCst);
    assert!(slow <= 16, "{slow} requests waited over a second");
    let suspects: Vec<_> = v
        .transitions()
        .into_iter()
        .filter(|t| t["fields"]["to"] == "suspect")
        .collect();
    assert_eq!(suspects.len(), 1, "{suspects:?}");
    assert!(suspects[0]["fields"]["reason"]
        .as_str()
        .unwrap()
        .contains("without an answer"));
    let series = format!(
        "vigil_backend_suspect_total{{backend=\"{}\",pool=\"web\"}}",
        f.addr
    );
    assert_eq!(v.metric(&series).await, Some(1.0));

    // Thawed: a check passes and suspicion ends; the requests stuck in it timed out
    // meanwhile, which ejected it (for 1 s here); then traffic returns.
    f.ctl.set_mode(Mode::Normal);
    v.wait_log(&["backend is no longer suspect", &f.addr.to_string()])
        .await;
    let before = traffic(&f);
    vigil_tests::wait_for_async(
        "traffic back on the thawed backend",
        Duration::from_secs(15),
        || async {
            assert_eq!(get(v.listen, "app", "/").await.unwrap().status, 200);
            traffic(&f) > before
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uniformly_slow_pool_raises_no_suspicion() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    for x in [&a, &b] {
        x.ctl.set_delay(Duration::from_millis(400));
    }
    let v = start_vigil("", &[pool("web", &[(&a, 1), (&b, 1)], SLOW_CHECKS)]).await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        let listen = v.listen;
        clients.push(tokio::spawn(async move {
            for _ in 0..8 {
                assert_eq!(get(listen, "app", "/").await.unwrap().status, 200);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    assert!(
        v.transitions()
            .iter()
            .all(|t| t["fields"]["to"] != "suspect"),
        "{:?}",
        v.transitions()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_sends_little_to_a_slow_or_a_fast_failing_backend() {
    let fast = FakeBackend::start("fast").await;
    let slow = FakeBackend::start("slow").await;
    let failing = FakeBackend::start("failing").await;
    slow.ctl.set_delay(Duration::from_millis(30));
    // Fails at once (and is never ejected here): must not look fast.
    failing.ctl.set_status(500);
    let extra = format!(
        "    balance: peak_ewma\n{}",
        SLOW_CHECKS.replace(
            "    passive:\n",
            "    passive:\n      consecutive_failures: 0\n"
        )
    );
    let v = start_vigil(
        "",
        &[pool(
            "web",
            &[(&fast, 1), (&slow, 1), (&failing, 1)],
            &extra,
        )],
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let listen = v.listen;
        clients.push(tokio::spawn(async move {
            for _ in 0..100 {
                get(listen, "app", "/").await.unwrap();
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let (f, s, x) = (traffic(&fast), traffic(&slow), traffic(&failing));
    assert_eq!(f + s + x, 400);
    assert!(
        s <= 40,
        "the 30 ms backend got {s} of 400 (fast {f}, failing {x})"
    );
    assert!(
        x <= 40,
        "the failing backend got {x} of 400 (fast {f}, slow {s})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_pool_that_says_so_raises_no_suspicion() {
    let a = FakeBackend::start("a").await;
    let poll = FakeBackend::start("poll").await;
    let extra = |detect: bool| {
        format!(
            "    balance: weighted_round_robin\n{}",
            SLOW_CHECKS.replace(
                "    passive:\n",
                &format!("    passive:\n      stall_detection: {detect}\n")
            )
        )
    };
    for detect in [false, true] {
        let v = start_vigil("", &[pool("web", &[(&a, 1), (&poll, 1)], &extra(detect))]).await;
        // Answers come fast, then one backend holds requests for 1.5 s (a long poll).
        for _ in 0..20 {
            get(v.listen, "app", "/").await.unwrap();
        }
        poll.ctl.set_delay(Duration::from_millis(1500));
        let mut clients = Vec::new();
        for _ in 0..4 {
            let listen = v.listen;
            clients.push(tokio::spawn(async move {
                get(listen, "app", "/").await.unwrap().status
            }));
        }
        for c in clients {
            assert_eq!(c.await.unwrap(), 200);
        }
        let suspected = v
            .transitions()
            .iter()
            .any(|t| t["fields"]["to"] == "suspect");
        assert_eq!(suspected, detect, "stall_detection: {detect}");
        poll.ctl.set_delay(Duration::ZERO);
    }
}
