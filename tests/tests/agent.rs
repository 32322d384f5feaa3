//! Agent checks (issue #30): with `health_check.agent: true` a backend steers its own
//! traffic with HAProxy's agent words in its health answer's body (`drain`, `maint`,
//! `ready`, `NN%`, `down`), the real binary in front of fake backends; a pool without
//! it ignores them.

use std::time::Duration;
use vigil_tests::config::pool;
use vigil_tests::{get, start_vigil, traffic, wait_for, wait_for_async, FakeBackend, Vigil};

/// Checks every 100 ms; up at the first pass, down at the third failure in a row.
fn checks(agent: bool) -> String {
    format!(
        "    health_check:
      interval: 100ms
      fast_interval: 50ms
      jitter: 0
      rise: 1
      fall: 3
      agent: {agent}
"
    )
}

async fn backend_detail(v: &Vigil, b: &FakeBackend) -> serde_json::Value {
    v.backend_detail("web", b.addr).await
}

/// Waits until `/health`, which counts from the routing snapshot in use, says `status`
/// (`degraded` while a backend is held out, `healthy` once all are routable).
async fn wait_health(v: &Vigil, status: &str) {
    wait_for_async(
        &format!("/health {status}"),
        Duration::from_secs(5),
        || async { v.admin_get("/health").await.json()["status"] == status },
    )
    .await;
}

/// `n` requests one after another; the `x-backend` of each answer.
async fn sequence(v: &Vigil, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = get(v.listen, "app", "/").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        out.push(r.header("x-backend").unwrap_or_default().to_string());
    }
    out
}

fn count(seq: &[String], name: &str) -> usize {
    seq.iter().filter(|s| *s == name).count()
}

/// The agent's state-change log lines for `b`.
fn agent_lines(v: &Vigil, b: &FakeBackend) -> Vec<String> {
    v.json_logs()
        .into_iter()
        .filter(|l| {
            l["fields"]["message"] == "backend agent state changed"
                && l["fields"]["backend"] == b.addr.to_string()
        })
        .map(|l| l["fields"]["to"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_from_the_agent_keeps_new_requests_away_until_ready() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let v = start_vigil("", &[pool("web", &[(&a, 1), (&b, 1)], &checks(true))]).await;

    a.ctl.set_health_body("drain\n");
    wait_health(&v, "degraded").await;
    let d = backend_detail(&v, &a).await;
    assert_eq!(
        d["agent"],
        serde_json::json!({"state": "drain", "weight_percent": 100})
    );
    assert_eq!(
        (d["health"].as_str(), d["admin_state"].as_str()),
        (Some("up"), Some("ready"))
    );
    assert_eq!(
        count(&sequence(&v, 20).await, "b"),
        20,
        "a drained backend got requests"
    );
    let up = format!("vigil_backend_up{{backend=\"{}\",pool=\"web\"}}", a.addr);
    assert_eq!(v.metric(&up).await, Some(0.0));
    // Still checked, and the words it keeps repeating change nothing more.
    let checked = a.stats.health_requests();
    wait_for("more checks of a", Duration::from_secs(5), || {
        a.stats.health_requests() >= checked + 3
    })
    .await;

    a.ctl.set_health_body("ready\n");
    wait_health(&v, "healthy").await;
    assert_eq!(count(&sequence(&v, 20).await, "a"), 10, "round robin again");
    assert_eq!(
        backend_detail(&v, &a).await["agent"],
        serde_json::json!({"state": "ready", "weight_percent": 100})
    );
    v.wait_metric(&up, 1.0).await;

    // One line per change, never one per check.
    v.sync_logs(None).await;
    assert_eq!(agent_lines(&v, &a), ["drain 100%", "ready 100%"]);
    assert!(agent_lines(&v, &b).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percent_scales_the_weight_weighted_round_robin_balances_by() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let extra = format!("    balance: weighted_round_robin\n{}", checks(true));
    let v = start_vigil("", &[pool("web", &[(&a, 2), (&b, 2)], &extra)]).await;
    assert_eq!(count(&sequence(&v, 6).await, "a"), 3);

    // 2 × 50% against 2: a third. Smooth weighted round robin makes it exact: one `a`
    // in every three requests in a row.
    a.ctl.set_health_body("50%\n");
    wait_for_async(
        "a's weight halved in the snapshot",
        Duration::from_secs(5),
        || async { count(&sequence(&v, 6).await, "a") == 2 },
    )
    .await;
    assert_eq!(backend_detail(&v, &a).await["agent"]["weight_percent"], 50);
    let seq = sequence(&v, 60).await;
    assert_eq!(count(&seq, "a"), 20, "{seq:?}");
    assert!(
        seq.windows(3).all(|w| count(w, "a") == 1),
        "not one a in every three: {seq:?}"
    );
    // The weight lasts while the agent says nothing new.
    a.ctl.set_health_body("\n");
    let checked = a.stats.health_requests();
    wait_for("more checks of a", Duration::from_secs(5), || {
        a.stats.health_requests() >= checked + 3
    })
    .await;
    assert_eq!(count(&sequence(&v, 30).await, "a"), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maint_keeps_all_traffic_away_while_checks_go_on_and_down_fails_them() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let v = start_vigil("", &[pool("web", &[(&a, 1), (&b, 1)], &checks(true))]).await;

    a.ctl.set_health_body("maint\n");
    wait_health(&v, "degraded").await;
    let before = traffic(&a);
    assert_eq!(count(&sequence(&v, 20).await, "b"), 20);
    assert_eq!(
        traffic(&a),
        before,
        "a backend in the agent's maint got requests"
    );
    // Unlike the operator's maintenance, checks go on: the agent can bring it back.
    let checked = a.stats.health_requests();
    wait_for("checks of a in maint", Duration::from_secs(5), || {
        a.stats.health_requests() >= checked + 3
    })
    .await;
    let d = backend_detail(&v, &a).await;
    assert_eq!(d["agent"]["state"], "maint");
    assert_eq!(d["admin_state"], "ready");
    a.ctl.set_health_body("up ready\n");
    wait_health(&v, "healthy").await;
    assert_eq!(count(&sequence(&v, 20).await, "a"), 10);

    // `down` fails the check: down at the third in a row (fall 3), as any failure.
    a.ctl.set_health_body("down\n");
    wait_for_async("a down", Duration::from_secs(5), || async {
        backend_detail(&v, &a).await["health"] == "down"
    })
    .await;
    let d = backend_detail(&v, &a).await;
    assert_eq!(d["last_error"], "the agent says down");
    assert!(d["consecutive_failures"].as_u64().unwrap() >= 3, "{d}");
    assert_eq!(d["agent"]["state"], "ready", "down is no drain");
    wait_health(&v, "degraded").await;
    assert_eq!(count(&sequence(&v, 20).await, "b"), 20);
    let failures = format!(
        "vigil_health_checks_total{{backend=\"{}\",pool=\"web\",result=\"failure\"}}",
        a.addr
    );
    assert!(v.metric(&failures).await.unwrap() >= 3.0);
    a.ctl.set_health_body("up\n");
    wait_health(&v, "healthy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_without_agent_checks_ignores_the_words() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let v = start_vigil("", &[pool("web", &[(&a, 1), (&b, 1)], &checks(false))]).await;

    a.ctl.set_health_body("drain 0% down\n");
    let checked = a.stats.health_requests();
    wait_for("checks of a", Duration::from_secs(5), || {
        a.stats.health_requests() >= checked + 5
    })
    .await;
    let d = backend_detail(&v, &a).await;
    assert_eq!(d["health"], "up");
    assert_eq!(d["consecutive_failures"], 0);
    assert!(d["agent"].is_null(), "{d}");
    assert_eq!(v.admin_get("/health").await.json()["status"], "healthy");
    assert_eq!(count(&sequence(&v, 20).await, "a"), 10);
}
