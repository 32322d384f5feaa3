//! Start and reload share one apply path (issue #9): a reload into every kind of change
//! leaves vigil exactly as a fresh start on the same file.

use std::time::Duration;
use vigil_tests::config::{config, pool, FAST_CHECKS};
use vigil_tests::{free_ports, get, request, wait_for, wait_for_async, FakeBackend, Vigil};

/// What a vigil is running, as `/health/detailed` and `/metrics` show it, without the
/// parts that depend on when it is asked: per pool, each backend's address, state and
/// weight; and the backend-labelled metric series.
async fn in_force(v: &Vigil) -> (Vec<(String, Vec<(String, String, u64)>)>, Vec<String>) {
    let detail = v.admin_get("/health/detailed").await.json();
    let mut pools: Vec<_> = detail["pools"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, p)| {
            let mut backends: Vec<_> = p["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    (
                        b["address"].as_str().unwrap().to_string(),
                        b["state"].as_str().unwrap().to_string(),
                        b["weight"].as_u64().unwrap(),
                    )
                })
                .collect();
            backends.sort();
            (name.clone(), backends)
        })
        .collect();
    pools.sort();
    let metrics = v.admin_get("/metrics").await.body;
    let mut series: Vec<String> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("backend=\""))
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
        .filter(|s| {
            !s.starts_with("vigil_health_checks_total")
                && !s.starts_with("vigil_upstream_requests_total")
        })
        .collect();
    series.sort();
    (pools, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_into_every_kind_of_change_runs_what_a_fresh_start_runs() {
    let bs: Vec<FakeBackend> = futures_backends(5).await;
    let (listen, admin) = free_ports();
    let before = config(
        listen,
        admin,
        "",
        &[
            pool("web", &[(&bs[0], 1), (&bs[1], 1)], FAST_CHECKS),
            pool(
                "api",
                &[(&bs[2], 1)],
                &format!("    routes:\n      - path_prefix: /api\n{FAST_CHECKS}"),
            ),
        ],
    );
    // Every kind of change at once: a backend removed, one added, a weight changed, a
    // pool removed, a pool added with its own route, check settings and balance changed,
    // limits and the access log changed.
    let after_pools = [
        pool(
            "web",
            &[(&bs[1], 3), (&bs[3], 1)],
            &format!(
                "    balance: weighted_round_robin\n{}",
                FAST_CHECKS.replace("rise: 1", "rise: 2")
            ),
        ),
        pool(
            "new",
            &[(&bs[4], 2)],
            &format!("    routes:\n      - path_prefix: /new\n{FAST_CHECKS}"),
        ),
    ];
    let log = Vigil::temp_path("reload-access.log");
    let top = format!(
        "limits:\n  header_bytes: 16384\naccess_log:\n  format: json\n  path: {}\n",
        log.display()
    );
    let mut reloaded = Vigil::start(&before, listen, admin);
    reloaded.wait_ready().await;
    std::fs::write(
        &reloaded.config_path,
        config(listen, admin, &top, &after_pools),
    )
    .unwrap();
    let r = reloaded.post_reload(None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["changes"]["settings"],
        serde_json::json!(["access_log", "limits"])
    );

    let (listen2, admin2) = free_ports();
    let mut fresh = Vigil::start(
        &config(listen2, admin2, &top, &after_pools),
        listen2,
        admin2,
    );
    fresh.wait_ready().await;

    // Both settle (every backend up), then must agree.
    for v in [&reloaded, &fresh] {
        let admin = v.admin;
        wait_for_async("every backend up", Duration::from_secs(10), || async move {
            let d = get(admin, "admin", "/health").await.unwrap().json();
            d["pools"]["web"]["up"] == 2
                && d["pools"]["new"]["up"] == 1
                && d["pools"].get("api").is_none()
        })
        .await;
    }
    let fresh_state = in_force(&fresh).await;
    assert_eq!(fresh_state.0.len(), 2, "{fresh_state:?}");
    let mut weights: Vec<u64> = fresh_state.0[1].1.iter().map(|b| b.2).collect();
    weights.sort();
    assert_eq!(weights, [1, 3], "{fresh_state:?}");
    assert!(fresh_state
        .1
        .iter()
        .any(|s| s.contains(&bs[3].addr.to_string())));
    assert!(!fresh_state
        .1
        .iter()
        .any(|s| s.contains(&bs[0].addr.to_string())));
    assert_eq!(in_force(&reloaded).await, fresh_state);
    // And route alike: /new to the new pool, /api no longer to a pool of its own.
    for path in ["/", "/new/x", "/api/x"] {
        let a = get(listen, "app", path).await.unwrap();
        let b = get(listen2, "app", path).await.unwrap();
        assert_eq!(a.status, b.status, "{path}");
        let pool_of = |body: &str| bs.iter().position(|x| x.name == body);
        let in_new = |body: &str| pool_of(body) == Some(4);
        assert_eq!(
            in_new(&a.body),
            in_new(&b.body),
            "{path}: {} vs {}",
            a.body,
            b.body
        );
    }
    // Limits in force: a 20 KB head is now over the limit on both.
    for addr in [listen, listen2] {
        let r = request(
            addr,
            "GET",
            "app",
            "/",
            &[("x-big", &"b".repeat(20_000))],
            "",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 431);
    }
    wait_for("access lines from both", Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            >= 6
    })
    .await;
}

async fn futures_backends(n: usize) -> Vec<FakeBackend> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(FakeBackend::start(&format!("r{i}")).await);
    }
    v
}
