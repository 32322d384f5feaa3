//! The real `vigil` binary in front of real loopback backends: routing, balancing,
//! failures and forwarded headers.

use std::collections::HashMap;
use std::time::Duration;
use vigil_tests::config::{pool, FAST_CHECKS};
use vigil_tests::{get, request, start_vigil, traffic, wait_for_async, FakeBackend, Mode};

async fn backends(n: usize) -> Vec<FakeBackend> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(FakeBackend::start(&format!("b{i}")).await);
    }
    v
}

/// Every backend of `bs`, weight 1.
fn weight_one(bs: &[FakeBackend]) -> Vec<(&FakeBackend, u32)> {
    bs.iter().map(|b| (b, 1)).collect()
}

/// Sends `n` GETs one after another; returns how many each backend answered.
async fn spread(v: &vigil_tests::Vigil, n: usize) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let r = get(v.listen, "app", "/").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        *out.entry(r.body).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_alive_backends_get_traffic_and_state_follows_checks() {
    let bs = backends(3).await;
    bs[2].ctl.set_health(500);
    let extra = FAST_CHECKS
        .replace("rise: 1", "rise: 2")
        .replace("fall: 1", "fall: 3");
    let v = start_vigil("", &[pool("web", &weight_one(&bs), &extra)]).await;
    let got = spread(&v, 30).await;
    assert_eq!(got.get("b2"), None, "a down backend got traffic: {got:?}");
    assert_eq!(got["b0"], 15);
    assert_eq!(got["b1"], 15);

    // b0 fails: it goes down after `fall` failed checks (one more may be in flight).
    let before = bs[0].stats.health_requests();
    bs[0].ctl.set_health(503);
    let admin = v.admin;
    wait_for_async("b0 down", Duration::from_secs(10), || async move {
        get(admin, "a", "/health").await.unwrap().json()["pools"]["web"]["down"] == 2
    })
    .await;
    let checks = bs[0].stats.health_requests() - before;
    assert!(
        (3..=4).contains(&checks),
        "went down after {checks} checks with fall 3"
    );
    let t0 = traffic(&bs[0]);
    let got = spread(&v, 20).await;
    assert_eq!(got["b1"], 20);
    assert_eq!(traffic(&bs[0]), t0);

    // And comes back after `rise` good checks.
    let before = bs[0].stats.health_requests();
    bs[0].ctl.set_health(200);
    wait_for_async("b0 up", Duration::from_secs(10), || async move {
        get(admin, "a", "/health").await.unwrap().json()["pools"]["web"]["up"] == 2
    })
    .await;
    let checks = bs[0].stats.health_requests() - before;
    assert!(
        (2..=3).contains(&checks),
        "came up after {checks} checks with rise 2"
    );
    let got = spread(&v, 20).await;
    assert_eq!(got["b0"], 10);

    // One log line per state change, with the contract's fields.
    let b0 = bs[0].addr.to_string();
    let of_b0 = |v: &vigil_tests::Vigil| {
        v.transitions()
            .iter()
            .filter(|l| l["fields"]["backend"] == b0.as_str())
            .count()
    };
    // stderr is read by another thread: the last line may still be on its way.
    vigil_tests::wait_for(
        "b0's three state changes logged",
        Duration::from_secs(10),
        || of_b0(&v) >= 3,
    )
    .await;
    let lines = v.transitions();
    let mine: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["backend"] == b0.as_str())
        .collect();
    let path: Vec<_> = mine
        .iter()
        .map(|l| {
            format!(
                "{}>{}",
                l["fields"]["from"].as_str().unwrap(),
                l["fields"]["to"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(path, vec!["unknown>up", "up>down", "down>up"], "{mine:#?}");
    for l in &mine {
        for f in ["pool", "backend", "from", "to", "reason", "consecutive"] {
            assert!(!l["fields"][f].is_null(), "log line lacks {f}: {l}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_and_smooth_weighted_round_robin() {
    let bs = backends(3).await;
    let rr = pool(
        "rr",
        &weight_one(&bs),
        &format!("    routes:\n      - host: rr\n{FAST_CHECKS}"),
    );
    let wrr = pool(
        "wrr",
        &[(&bs[0], 1), (&bs[1], 2), (&bs[2], 3)],
        &format!(
            "    balance: weighted_round_robin\n    routes:\n      - host: app\n{FAST_CHECKS}"
        ),
    );
    let v = start_vigil("", &[rr, wrr]).await;
    let mut counts = HashMap::new();
    for _ in 0..30 {
        *counts
            .entry(get(v.listen, "rr", "/").await.unwrap().body)
            .or_insert(0) += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{counts:?}"
    );

    let mut seq = Vec::new();
    for _ in 0..60 {
        seq.push(get(v.listen, "app", "/").await.unwrap().body);
    }
    let count = |n: &str| seq.iter().filter(|b| *b == n).count();
    assert_eq!((count("b0"), count("b1"), count("b2")), (10, 20, 30));
    let longest_run = seq.chunk_by(|a, b| a == b).map(|r| r.len()).max().unwrap();
    assert!(
        longest_run <= 2,
        "weighted round robin burst {longest_run} in a row: {seq:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_prefers_the_idle_backend() {
    let bs = backends(2).await;
    bs[0].ctl.set_delay(Duration::from_millis(400));
    let v = start_vigil(
        "",
        &[pool(
            "lr",
            &weight_one(&bs),
            &format!("    balance: least_requests\n{FAST_CHECKS}"),
        )],
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let listen = v.listen;
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for _ in 0..25 {
                mine.push(get(listen, "app", "/").await.unwrap().body);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    // Here the busy backend gets about 10 of 100; a picker blind to load gives it 50,
    // exactly (round robin) or give or take 5 (at random): 25 is five of those away.
    let slow = all.iter().filter(|b| *b == "b0").count();
    assert_eq!(all.len(), 100);
    eprintln!("least_requests: the busy backend got {slow} of 100");
    assert!(
        slow <= 25,
        "the busy backend got {slow} of 100 (round robin would give 50)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_is_sticky_and_moves_little_on_failure() {
    let bs = backends(3).await;
    let extra =
        format!("    balance: consistent_hash\n    hash_key: header:x-user-id\n{FAST_CHECKS}");
    let v = start_vigil("", &[pool("ch", &weight_one(&bs), &extra)]).await;
    let owner = |user: String| {
        let listen = v.listen;
        async move {
            let r = request(listen, "GET", "app", "/", &[("x-user-id", &user)], "")
                .await
                .unwrap();
            r.body
        }
    };
    let mut first = HashMap::new();
    for u in 0..30 {
        let o = owner(format!("user-{u}")).await;
        for _ in 0..3 {
            assert_eq!(
                owner(format!("user-{u}")).await,
                o,
                "user-{u} moved between requests"
            );
        }
        first.insert(u, o);
    }
    let used: std::collections::HashSet<_> = first.values().collect();
    assert!(
        used.len() >= 2,
        "every user hashed to one backend: {first:?}"
    );

    bs[2].ctl.set_health(500);
    let admin = v.admin;
    wait_for_async("b2 down", Duration::from_secs(10), || async move {
        get(admin, "a", "/health").await.unwrap().json()["pools"]["ch"]["down"] == 1
    })
    .await;
    for (u, o) in &first {
        let now = owner(format!("user-{u}")).await;
        if o != "b2" {
            assert_eq!(&now, o, "user-{u} moved although its backend stayed up");
        } else {
            assert_ne!(now, "b2");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_costs_no_failed_request() {
    let bs = backends(3).await;
    // Slow checks: the proxy must cope before the checker notices.
    let extra = FAST_CHECKS
        .replace("interval: 1s", "interval: 5s")
        .replace("timeout: 1s", "timeout: 2s");
    let v = start_vigil("", &[pool("web", &weight_one(&bs), &extra)]).await;
    let mut statuses = Vec::new();
    for i in 0..300 {
        if i == 50 {
            bs[1].kill();
        }
        let method = if i % 3 == 0 { "POST" } else { "GET" };
        let r = request(v.listen, method, "app", "/", &[], "x")
            .await
            .unwrap();
        statuses.push(r.status);
    }
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(
        failed, 0,
        "{failed} of 300 requests failed after a backend died"
    );
    assert!(
        v.metric("vigil_upstream_retries_total{pool=\"web\"}")
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_status_and_on_reset_only_when_safe() {
    let bs = backends(2).await;
    bs[0].ctl.set_status(503);
    let v = start_vigil(
        "",
        &[pool(
            "web",
            &weight_one(&bs),
            &format!("    passive:\n      consecutive_failures: 0\n{FAST_CHECKS}"),
        )],
    )
    .await;
    for _ in 0..10 {
        let r = get(v.listen, "app", "/").await.unwrap();
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "b1"),
            "GET not retried on 503"
        );
    }
    let posts: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..10 {
            out.push(
                request(v.listen, "POST", "app", "/", &[], "x")
                    .await
                    .unwrap()
                    .status,
            );
        }
        out
    };
    assert!(
        posts.contains(&503),
        "a POST was retried after the backend answered: {posts:?}"
    );

    bs[0].ctl.set_status(200);
    bs[0].ctl.set_mode(Mode::Reset);
    for _ in 0..10 {
        let r = get(v.listen, "app", "/").await.unwrap();
        assert_eq!(
            r.status, 200,
            "GET not retried after the backend closed the connection"
        );
    }
    let mut post_failures = 0;
    for _ in 0..10 {
        if request(v.listen, "POST", "app", "/", &[], "x")
            .await
            .unwrap()
            .status
            != 200
        {
            post_failures += 1;
        }
    }
    assert!(
        post_failures > 0,
        "a POST that reached a backend was sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_and_no_alive_backend_is_503() {
    let bs = backends(1).await;
    bs[0].ctl.set_health(500);
    let (listen, admin) = vigil_tests::free_ports();
    let cfg = vigil_tests::config::config(listen, admin, "", &[pool("api", &[(&bs[0], 1)], &format!("    routes:\n      - host: api.example.com\n        path_prefix: /v1\n    fail_open: false\n{FAST_CHECKS}"))]);
    let mut v = vigil_tests::Vigil::start(&cfg, listen, admin);
    v.wait_live().await;
    let r = get(listen, "other.example.com", "/v1").await.unwrap();
    assert_eq!(r.status, 404);
    let r = get(listen, "api.example.com", "/v2").await.unwrap();
    assert_eq!(r.status, 404);
    wait_for_async("checked", Duration::from_secs(10), || async move {
        get(admin, "a", "/health").await.unwrap().json()["pools"]["api"]["down"] == 1
    })
    .await;
    let r = get(listen, "API.example.com:80", "/v1/users")
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-vigil-error"), Some("no-healthy-backend"));
    assert_eq!(traffic(&bs[0]), 0);
    // The same answer to HEAD has its length and no body: the connection goes on.
    let mut c = vigil_tests::raw::RawConn::connect(listen).await;
    c.send(b"HEAD /v1 HTTP/1.1\r\nHost: api.example.com\r\n\r\nGET /v1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
        .await
        .unwrap();
    let head = c.head().await.unwrap();
    assert_eq!(head.status, 503);
    assert!(
        head.header("content-length").is_some_and(|l| l != "0"),
        "{head:?}"
    );
    let r = c.response().await.unwrap();
    assert_eq!(
        (r.status, r.header("x-vigil-error")),
        (503, Some("no-healthy-backend")),
        "{r:?}"
    );
    assert_eq!(
        v.metric("vigil_no_healthy_backend_total{pool=\"api\"}")
            .await,
        Some(3.0)
    );
    let ready = v.admin_get("/health/ready").await;
    assert_eq!(ready.status, 503);
    assert!(ready.json()["reasons"][0]
        .as_str()
        .unwrap()
        .contains("no alive backend"));
    // The 503s are counted, not logged one by one: the outage's cause is the state
    // change. Any line written for the 503 precedes "backend is up" on stderr.
    bs[0].ctl.set_health(200);
    v.wait_log(&["backend is up"]).await;
    let per_request: Vec<String> = v
        .logs()
        .into_iter()
        .filter(|l| l.contains("Fail to proxy") || l.contains("no healthy backend"))
        .collect();
    assert!(per_request.is_empty(), "{per_request:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_set_and_hop_by_hop_dropped() {
    let bs = backends(1).await;
    let v = start_vigil("", &[pool("web", &[(&bs[0], 1)], FAST_CHECKS)]).await;
    let r = request(
        v.listen,
        "GET",
        "shop.example.com",
        "/cart?x=1",
        &[
            ("x-forwarded-for", "10.0.0.9"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("x-app", "kept"),
        ],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = bs[0].stats.last_request.lock().unwrap().clone().unwrap();
    assert_eq!(seen.path, "/cart?x=1");
    assert_eq!(seen.header("x-forwarded-for"), Some("10.0.0.9, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.example.com"));
    assert_eq!(seen.header("host"), Some("shop.example.com"));
    assert_eq!(seen.header("x-app"), Some("kept"));
    for h in ["keep-alive", "proxy-connection", "x-private"] {
        assert_eq!(seen.header(h), None, "hop-by-hop header {h} was forwarded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_backends_get_no_traffic() {
    // The first check is held open for 2 s: until it answers, the backend is unknown
    // and the proxy answers 503 rather than guess.
    let bs = backends(1).await;
    bs[0].ctl.set_delay(Duration::from_secs(2));
    bs[0]
        .ctl
        .delay_health
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let slow = FAST_CHECKS
        .replace("interval: 1s", "interval: 5s")
        .replace("timeout: 1s", "timeout: 5s");
    let (listen, admin) = vigil_tests::free_ports();
    let cfg = vigil_tests::config::config(listen, admin, "", &[pool("web", &[(&bs[0], 1)], &slow)]);
    let mut v = vigil_tests::Vigil::start(&cfg, listen, admin);
    v.wait_live().await;
    let status = v.admin_get("/health/detailed").await.json();
    assert_eq!(status["pools"]["web"]["backends"][0]["state"], "unknown");
    let ready = v.admin_get("/health/ready").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.json()["reasons"][0]
            .as_str()
            .unwrap()
            .contains("not checked yet"),
        "{}",
        ready.body
    );
    let r = get(listen, "app", "/").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(traffic(&bs[0]), 0);
    bs[0].ctl.set_delay(Duration::ZERO);
    v.wait_ready().await;
    assert_eq!(get(listen, "app", "/").await.unwrap().status, 200);
}
