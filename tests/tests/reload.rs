//! Reloads under traffic: nothing lost, kept backends keep their state, bad files
//! change nothing.

use std::time::Duration;
use vigil_tests::config::{config, pool, FAST_CHECKS};
use vigil_tests::stream::{failures, Stream};
use vigil_tests::{
    free_port, free_ports, get, traffic, wait_for, wait_for_async, FakeBackend, Vigil,
};

fn state_of(detail: &serde_json::Value, pool: &str, addr: &str) -> serde_json::Value {
    detail["pools"][pool]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr)
        .map(|b| b["state"].clone())
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_traffic_lose_nothing() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let c = FakeBackend::start("c").await;
    let (listen, admin) = free_ports();
    let variant = |i: usize| {
        // Alternate weights, check settings, balance, and whether c is in the pool.
        let checks = if i.is_multiple_of(2) {
            FAST_CHECKS.to_string()
        } else {
            FAST_CHECKS.replace("interval: 1s", "interval: 2s")
        };
        let balance = ["round_robin", "weighted_round_robin", "least_requests"][i % 3];
        let mut members = vec![(&a, 1 + (i % 3) as u32), (&b, 1)];
        if i % 5 != 4 {
            members.push((&c, 2));
        }
        config(
            listen,
            admin,
            "",
            &[pool(
                "web",
                &members,
                &format!("    balance: {balance}\n{checks}"),
            )],
        )
    };
    let mut v = Vigil::start(&variant(0), listen, admin);
    v.wait_ready().await;
    wait_for_async("all three up", Duration::from_secs(10), || async move {
        get(admin, "a", "/health").await.unwrap().json()["pools"]["web"]["up"] == 3
    })
    .await;
    let kept = [a.addr.to_string(), b.addr.to_string()];
    let before = v.admin_get("/health/detailed").await.json();
    let kept_lines = |v: &Vigil| {
        v.transitions()
            .iter()
            .filter(|l| kept.iter().any(|k| l["fields"]["backend"] == k.as_str()))
            .count()
    };
    // stderr is read by another thread: wait for both "unknown → up" lines to arrive.
    wait_for(
        "start-up transitions logged",
        Duration::from_secs(10),
        || kept_lines(&v) == 2,
    )
    .await;
    let logged_before = kept_lines(&v);

    let stream = Stream::start(listen, "GET", 2);
    for i in 1..=50 {
        std::fs::write(&v.config_path, variant(i)).unwrap();
        let r = v.post_reload(None).await;
        assert_eq!(r.status, 200, "reload {i}: {}", r.body);
    }
    wait_for(
        "traffic after the last reload",
        Duration::from_secs(10),
        || stream.count() > 100,
    )
    .await;
    let outcomes = stream.finish().await;
    let failed = failures(&outcomes);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during reloads: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );

    let after = v.admin_get("/health/detailed").await.json();
    for k in &kept {
        assert_eq!(state_of(&before, "web", k), "up");
        assert_eq!(
            state_of(&after, "web", k),
            "up",
            "kept backend {k} changed state"
        );
    }
    let logged_after = kept_lines(&v);
    assert_eq!(
        logged_after, logged_before,
        "a reload logged a state change for a kept backend"
    );
    assert_eq!(
        v.metric("vigil_config_reloads_total{result=\"success\"}")
            .await,
        Some(50.0)
    );
    v.signal(libc::SIGKILL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_file_keeps_the_old_config_serving() {
    let a = FakeBackend::start("a").await;
    let (listen, admin) = free_ports();
    let good = config(listen, admin, "", &[pool("web", &[(&a, 1)], FAST_CHECKS)]);
    let mut v = Vigil::start(&good, listen, admin);
    v.wait_ready().await;
    std::fs::write(
        &v.config_path,
        good.replace("weight: 1", "weight: 0\n        colour: red"),
    )
    .unwrap();
    let r = v.post_reload(None).await;
    assert_eq!(r.status, 400);
    let errors: Vec<String> = r.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    let file = v.config_path.display().to_string();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().all(|e| e.starts_with(&format!("{file}:"))),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains(":11:17: weight must be")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("unknown key `colour`")),
        "{errors:?}"
    );
    assert_eq!(
        get(listen, "app", "/").await.unwrap().status,
        200,
        "the old config stopped serving"
    );
    assert_eq!(
        v.metric("vigil_config_reloads_total{result=\"failure\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        v.metric("vigil_config_reloads_total{result=\"success\"}")
            .await,
        Some(0.0)
    );
    v.wait_log(&["reload rejected", "weight must be"]).await;

    // A change that needs a restart is refused whole, not half-applied.
    let refused = |text: String, what: &'static str| {
        let v = &v;
        async move {
            std::fs::write(&v.config_path, text).unwrap();
            let r = v.post_reload(None).await;
            assert_eq!(r.status, 400);
            assert!(
                r.body.contains(&format!("{what} changed: restart vigil")),
                "{}",
                r.body
            );
        }
    };
    let moved = good
        .replace(&listen.to_string(), &free_port().to_string())
        .replace("weight: 1", "weight: 7");
    refused(moved, "listeners").await;
    let d = v.admin_get("/health/detailed").await.json();
    assert_eq!(
        d["pools"]["web"]["backends"][0]["weight"], 1,
        "half of a refused reload was applied"
    );
    // Worker threads are pinned (or not) once, at start.
    let pinned = good.replace("threads: 1", "threads: 1\ncpu_affinity: off");
    refused(pinned, "cpu_affinity").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_backend_leaves_and_added_backend_joins_after_its_first_check() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let (listen, admin) = free_ports();
    let slow_steady = FAST_CHECKS.replace("interval: 1s", "interval: 3s");
    let v1 = config(listen, admin, "", &[pool("web", &[(&a, 1)], &slow_steady)]);
    let mut v = Vigil::start(&v1, listen, admin);
    v.wait_ready().await;

    // Add b: checked at once (within fast_interval), joins after one success.
    std::fs::write(
        &v.config_path,
        config(
            listen,
            admin,
            "",
            &[pool("web", &[(&a, 1), (&b, 1)], &slow_steady)],
        ),
    )
    .unwrap();
    let r = v.post_reload(None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["changes"]["backends"]["added"][0],
        format!("web/{}", b.addr)
    );
    wait_for("b checked", Duration::from_secs(2), || {
        b.stats.health_requests() >= 1
    })
    .await;
    wait_for_async("b serves", Duration::from_secs(10), || async move {
        get(listen, "app", "/").await.unwrap().body == "b"
    })
    .await;

    // Remove a: no more requests, no more checks, its series gone.
    std::fs::write(
        &v.config_path,
        config(listen, admin, "", &[pool("web", &[(&b, 1)], &slow_steady)]),
    )
    .unwrap();
    let r = v.post_reload(None).await;
    assert_eq!(
        r.json()["changes"]["backends"]["removed"][0],
        format!("web/{}", a.addr)
    );
    let (t, h) = (traffic(&a), a.stats.health_requests());
    for _ in 0..20 {
        assert_eq!(get(listen, "app", "/").await.unwrap().body, "b");
    }
    wait_for(
        "a's check connection closed",
        Duration::from_secs(5),
        || a.stats.open_check_connections() == 0,
    )
    .await;
    assert_eq!(traffic(&a), t);
    assert!(
        a.stats.health_requests() <= h + 1,
        "a removed backend is still checked"
    );
    let m = v.admin_get("/metrics").await.body;
    assert!(
        !m.contains(&a.addr.to_string()),
        "series of a removed backend remain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_watch_and_token() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    // Each vigil below has ports of its own.
    let ports = [free_ports(), free_ports()];
    let make = |run: usize, backends: &[(&FakeBackend, u32)]| {
        let (listen, admin) = ports[run];
        config(listen, admin, "", &[pool("web", backends, FAST_CHECKS)]).replace(
            &format!("  address: {admin}\n"),
            &format!("  address: {admin}\n  token: s3cret\n"),
        )
    };
    let start = |run: usize, path: &std::path::Path, watch: bool| {
        let mut args = vec!["run", "-c", path.to_str().unwrap()];
        if watch {
            args.push("--watch");
        }
        args.extend(["--log-format", "json"]);
        let (listen, admin) = ports[run];
        Vigil::spawn(&args, listen, admin, path.to_path_buf())
    };
    let reloads = |v: &Vigil| {
        let v = v.admin;
        async move {
            let m = get(v, "a", "/metrics").await.unwrap().body;
            m.lines()
                .find_map(|l| l.strip_prefix("vigil_config_reloads_total{result=\"success\"} "))
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap()
        }
    };

    // Token and SIGHUP without --watch: only the signal can have reloaded the file.
    let path = Vigil::temp_path("signalled.yaml");
    std::fs::write(&path, make(0, &[(&a, 1)])).unwrap();
    let mut v = start(0, &path, false);
    v.wait_ready().await;

    let at_start = reloads(&v).await;
    assert_eq!(v.post_reload(None).await.status, 401);
    assert_eq!(v.post_reload(Some("wrong")).await.status, 401);
    assert_eq!(v.post_reload(Some("s3cret")).await.status, 200);
    assert_eq!(reloads(&v).await, at_start + 1.0);

    // SIGHUP
    std::fs::write(&path, make(0, &[(&a, 1), (&b, 1)])).unwrap();
    v.signal(libc::SIGHUP);
    wait_for("b checked after SIGHUP", Duration::from_secs(10), || {
        b.stats.health_requests() >= 1
    })
    .await;
    // Counted just after the new backends are handed to the checker.
    wait_for_async("the SIGHUP reload counted", Duration::from_secs(10), || {
        let r = reloads(&v);
        async move { r.await > at_start + 1.0 }
    })
    .await;
    assert_eq!(
        reloads(&v).await,
        at_start + 2.0,
        "one reload, by the signal"
    );
    drop(v);

    // --watch: a change to the file is a reload, with no signal and no request.
    let path = Vigil::temp_path("watched.yaml");
    std::fs::write(&path, make(1, &[(&a, 1), (&b, 1)])).unwrap();
    let mut v = start(1, &path, true);
    v.wait_ready().await;
    let before = reloads(&v).await;
    std::fs::write(&path, make(1, &[(&b, 1)])).unwrap();
    let admin_addr = v.admin;
    wait_for_async("watch reloaded", Duration::from_secs(10), || async move {
        let m = get(admin_addr, "a", "/metrics").await.unwrap().body;
        !m.contains(&format!("vigil_backend_up{{backend=\"{}\"", a.addr))
    })
    .await;
    assert!(reloads(&v).await > before);
    v.wait_log(&["configuration reloaded"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_in_flight_to_a_removed_backend_completes() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    a.ctl.set_delay(Duration::from_millis(1500));
    let (listen, admin) = free_ports();
    let both = config(
        listen,
        admin,
        "",
        &[pool("web", &[(&a, 1), (&b, 1)], FAST_CHECKS)],
    );
    let mut v = Vigil::start(&both, listen, admin);
    v.wait_ready().await;
    wait_for_async("both up", Duration::from_secs(10), || async move {
        get(admin, "x", "/health").await.unwrap().json()["pools"]["web"]["up"] == 2
    })
    .await;
    // Round robin: of two requests, one goes to the slow backend a.
    let slow = [
        tokio::spawn(async move { get(listen, "app", "/").await }),
        tokio::spawn(async move { get(listen, "app", "/").await }),
    ];
    wait_for("a request held at a", Duration::from_secs(10), || {
        a.stats.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    std::fs::write(
        &v.config_path,
        config(listen, admin, "", &[pool("web", &[(&b, 1)], FAST_CHECKS)]),
    )
    .unwrap();
    assert_eq!(v.post_reload(None).await.status, 200);
    let mut bodies = Vec::new();
    for t in slow {
        let r = t.await.unwrap().expect("request dropped by the reload");
        assert_eq!(r.status, 200);
        bodies.push(r.body);
    }
    bodies.sort();
    assert_eq!(
        bodies,
        vec!["a", "b"],
        "the request at the removed backend did not finish there"
    );
    assert_eq!(get(listen, "app", "/").await.unwrap().body, "b");
}
