//! Frozen backends (issue #11): a backend that takes requests and never answers becomes
//! suspect from live traffic within a fraction of a second, long before its health
//! checks fail; no new request goes to it; nothing fails.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vigil_tests::config::pool;
use vigil_tests::grpc::GrpcBackend;
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

/// No backend became suspect, by the logs, once every line written so far has arrived.
async fn assert_never_suspect(v: &vigil_tests::Vigil) {
    v.sync_logs(None).await;
    let transitions = v.transitions();
    assert!(
        transitions.iter().all(|t| t["fields"]["to"] != "suspect"),
        "{transitions:?}"
    );
}

/// A steady stream of GETs: `clients` loops, each sending one request after another.
struct Steady {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
    slow: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Steady {
    fn start(listen: std::net::SocketAddr, clients: usize) -> Steady {
        let mut s = Steady {
            stop: Arc::default(),
            failed: Arc::default(),
            slow: Arc::default(),
            done: Arc::default(),
            clients: Vec::new(),
        };
        for _ in 0..clients {
            let (stop, failed, slow, done) = (
                s.stop.clone(),
                s.failed.clone(),
                s.slow.clone(),
                s.done.clone(),
            );
            s.clients.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let t = tokio::time::Instant::now();
                    if !matches!(get(listen, "app", "/").await, Ok(r) if r.status == 200) {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    if t.elapsed() > Duration::from_secs(1) {
                        slow.fetch_add(1, Ordering::SeqCst);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        s
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    /// Stops the clients; returns (failed, answered after more than a second).
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.clients {
            c.await.unwrap();
        }
        (
            self.failed.load(Ordering::SeqCst),
            self.slow.load(Ordering::SeqCst),
        )
    }
}

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

    let steady = Steady::start(v.listen, 8);
    wait_for("traffic flowing", Duration::from_secs(10), || {
        steady.done() > 300
    })
    .await;

    f.ctl.set_mode(Mode::Hang);
    v.wait_log(&["backend is suspect", &f.addr.to_string()])
        .await;
    let at_suspicion = traffic(&f);
    let served = steady.done();
    wait_for("1,000 more requests", Duration::from_secs(30), || {
        steady.done() > served + 1000
    })
    .await;
    assert!(
        traffic(&f) <= at_suspicion + 2,
        "{} requests went to the suspect backend after it became suspect",
        traffic(&f) - at_suspicion
    );
    // Only what was sent before suspicion waited (then retried elsewhere after read_timeout).
    let (failed, slow) = steady.stop().await;
    assert_eq!(failed, 0, "idempotent requests failed");
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
    assert_never_suspect(&v).await;
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
        v.sync_logs(None).await;
        let suspected = v
            .transitions()
            .iter()
            .any(|t| t["fields"]["to"] == "suspect");
        assert_eq!(suspected, detect, "stall_detection: {detect}");
        poll.ctl.set_delay(Duration::ZERO);
    }
}

/// One request that waits far too long on a backend that answers everything else (a
/// lost request, a wedged worker) is sent once to another backend, and the backend is
/// not suspected. A POST waits: it cannot be repeated. A pool that says its requests
/// wait on purpose keeps them waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stuck_request_is_sent_once_to_another_backend() {
    let a = FakeBackend::start("a").await;
    let f = FakeBackend::start("f").await;
    let on_f = |f: &FakeBackend| {
        let paths = f.stats.paths.lock().unwrap();
        paths.iter().filter(|p| p.starts_with("/stuck")).count()
    };
    for detect in [true, false] {
        let extra = SLOW_CHECKS
            .replace("read_timeout: 3s", "read_timeout: 1s")
            .replace(
                "    passive:\n",
                &format!("    passive:\n      stall_detection: {detect}\n"),
            );
        let v = start_vigil("", &[pool("web", &[(&a, 1), (&f, 1)], &extra)]).await;
        for _ in 0..20 {
            get(v.listen, "app", "/").await.unwrap();
        }
        // f answers everything but /stuck, and keeps answering the steady stream.
        f.ctl.set_hang_path(Some("/stuck"));
        let steady = Steady::start(v.listen, 2);
        let before = on_f(&f);
        let mut slowest = Duration::ZERO;
        for i in 0..40 {
            let t = tokio::time::Instant::now();
            let r = get(v.listen, "app", &format!("/stuck/{i}")).await.unwrap();
            assert_eq!(r.status, 200, "stall_detection: {detect}");
            slowest = slowest.max(t.elapsed());
            if on_f(&f) >= before + 3 {
                break;
            }
        }
        let stuck_on_f = on_f(&f) - before;
        assert!(
            stuck_on_f >= 3,
            "only {stuck_on_f} stuck requests reached f"
        );
        let resent = v
            .metric("vigil_upstream_stall_retries_total{pool=\"web\",reason=\"slow\"}")
            .await
            .unwrap_or(0.0);
        if detect {
            assert!(slowest < Duration::from_secs(1), "one waited {slowest:?}");
            assert_eq!(resent as usize, stuck_on_f, "each sent once elsewhere");
            // Not repeatable: a POST stuck on f waits out read_timeout.
            let mut post = None;
            for i in 0..20 {
                let seen = on_f(&f);
                let path = format!("/stuck/post{i}");
                let r = vigil_tests::request(v.listen, "POST", "app", &path, &[], "x")
                    .await
                    .unwrap();
                if on_f(&f) > seen {
                    post = Some((r.status, path));
                    break;
                }
            }
            let (status, path) = post.expect("a POST reached f");
            assert_eq!(status, 504, "the POST timed out on f");
            assert!(
                !a.stats.paths.lock().unwrap().contains(&path),
                "the POST was repeated on a"
            );
        } else {
            assert!(slowest >= Duration::from_secs(1), "slowest {slowest:?}");
            assert_eq!(resent, 0.0);
        }
        let (failed, _) = steady.stop().await;
        assert_eq!(failed, 0);
        assert_never_suspect(&v).await;
        f.ctl.set_hang_path(None);
    }
}

/// HTTP/2 to the backends (`protocol: h2`): a frozen backend's waiting GETs, streams of
/// one connection, are cut with it and retried elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_h2_backend_is_suspect_and_its_waiting_requests_retried() {
    let ca = vigil_tests::certs::TestCa::new("stall-h2");
    let leaf = ca.leaf("backend", &["127.0.0.1"]);
    let backends = [
        GrpcBackend::start(&leaf).await,
        GrpcBackend::start(&leaf).await,
        GrpcBackend::start(&leaf).await,
    ];
    let mut pool = format!(
        "  - name: web\n    protocol: h2\n    tls: {{ca: {}}}\n    backends:\n",
        ca.cert.display()
    );
    for b in &backends {
        pool += &format!("      - address: {}\n", b.addr);
    }
    pool += &SLOW_CHECKS.replace(
        "    health_check:\n",
        "    health_check:\n      type: grpc\n",
    );
    let v = start_vigil("", &[pool]).await;
    let steady = Steady::start(v.listen, 8);
    wait_for("traffic flowing", Duration::from_secs(10), || {
        steady.done() > 300
    })
    .await;

    let f = &backends[2];
    f.hang.store(true, Ordering::SeqCst);
    v.wait_log(&["backend is suspect", &f.addr.to_string()])
        .await;
    let served = steady.done();
    wait_for("1,000 more requests", Duration::from_secs(30), || {
        steady.done() > served + 1000
    })
    .await;
    let (failed, slow) = steady.stop().await;
    assert_eq!(failed, 0, "idempotent requests failed");
    // Without the cut, each of the 8 clients would wait out read_timeout once.
    assert!(slow <= 2, "{slow} requests waited over a second");
    let resent = v
        .metric("vigil_upstream_stall_retries_total{pool=\"web\",reason=\"suspect\"}")
        .await
        .unwrap_or(0.0);
    assert!(resent >= 1.0, "no waiting request was cut and resent");
}
