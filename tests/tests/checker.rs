//! The health checker against real loopback backends: connections reused, the global
//! bound, runtime updates, nothing leaked. Assertions are on counts; time only bounds
//! how long we wait. Timing (backoff, timeouts, spread, ejection) is tested under
//! paused time in `healthcheck/tests/paused.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use vigil_healthcheck::*;
use vigil_tests::checking::{checker, policy, spec};
use vigil_tests::{wait_for, FakeBackend, Mode};

fn health_of(c: &Checker, addr: &str) -> Option<Health> {
    c.status()
        .into_iter()
        .find(|s| s.address == addr)
        .map(|s| s.health)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_checks_open_at_most_two_connections() {
    let b = FakeBackend::start("a").await;
    let (c, _) = checker(16);
    c.apply(vec![spec("p", &b, 1, &Arc::new(policy(1)))]);
    wait_for("1,000 checks", Duration::from_secs(60), || {
        b.stats.health_requests() >= 1000
    })
    .await;
    assert!(
        c.shutdown(Duration::from_secs(5)).await,
        "check tasks did not end"
    );
    assert!(
        b.stats.connections() <= 2,
        "opened {} connections for 1,000 checks",
        b.stats.connections()
    );
    assert_eq!(c.connections_opened(), b.stats.connections());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_closed_by_backend_is_replaced_without_a_failure() {
    let b = FakeBackend::start("a").await;
    b.ctl.set_mode(Mode::CloseAfterResponse);
    let (c, _) = checker(16);
    c.apply(vec![spec("p", &b, 1, &Arc::new(policy(2)))]);
    wait_for("50 checks", Duration::from_secs(30), || {
        b.stats.health_requests() >= 50
    })
    .await;
    let st = c.status().remove(0);
    assert_eq!(st.health, Health::Up);
    assert_eq!(st.consecutive_failures, 0);
    assert!(
        st.last_error.is_none(),
        "a closed keep-alive connection counted as a failure: {:?}",
        st.last_error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_age_replaces_pooled_connections() {
    let b = FakeBackend::start("a").await;
    let mut p = policy(2);
    p.probe = ProbeSpec::Http(HttpSpec {
        max_connection_age: Duration::ZERO,
        ..Default::default()
    });
    let (c, _) = checker(16);
    c.apply(vec![spec("p", &b, 1, &Arc::new(p))]);
    wait_for("20 checks", Duration::from_secs(30), || {
        b.stats.health_requests() >= 20
    })
    .await;
    assert!(
        c.shutdown(Duration::from_secs(5)).await,
        "check tasks did not end"
    );
    // Age zero: no connection may serve two checks.
    assert!(b.stats.connections() >= b.stats.health_requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_change_keeps_state_and_schedule() {
    let b = FakeBackend::start("a").await;
    let p = Arc::new(policy(5));
    let (c, rec) = checker(16);
    c.apply(vec![spec("p", &b, 1, &p)]);
    wait_for("up", Duration::from_secs(10), || {
        health_of(&c, &b.addr.to_string()) == Some(Health::Up)
    })
    .await;
    wait_for("a few checks", Duration::from_secs(10), || {
        c.status()[0].checks >= 3
    })
    .await;
    let before = c.status().remove(0);
    let report = c.apply(vec![spec("p", &b, 5, &p)]);
    assert_eq!(report.updated, vec![format!("p/{}", b.addr)]);
    assert!(report.added.is_empty() && report.removed.is_empty());
    let after = c.status().remove(0);
    assert_eq!(after.health, Health::Up);
    assert!(after.checks >= before.checks, "check history was reset");
    assert_eq!(rec.last().pool("p").unwrap()[0].weight, 5);
    assert_eq!(c.tasks_alive(), 1, "the update restarted the task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_backend_stops_being_probed_and_its_connection_closes() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let p = Arc::new(policy(5));
    let (c, rec) = checker(16);
    let baseline = c.tasks_alive();
    c.apply(vec![spec("p", &a, 1, &p), spec("p", &b, 1, &p)]);
    wait_for(
        "b holds a pooled connection",
        Duration::from_secs(10),
        || b.stats.open() == 1 && b.stats.health_requests() >= 2,
    )
    .await;
    let report = c.apply(vec![spec("p", &a, 1, &p)]);
    assert_eq!(report.removed, vec![format!("p/{}", b.addr)]);
    wait_for("b's connection closed", Duration::from_secs(10), || {
        b.stats.open() == 0
    })
    .await;
    wait_for("one task left", Duration::from_secs(10), || {
        c.tasks_alive() == baseline + 1
    })
    .await;
    let probes = b.stats.health_requests();
    let a_probes = a.stats.health_requests();
    wait_for("a checked 10 more times", Duration::from_secs(10), || {
        a.stats.health_requests() >= a_probes + 10
    })
    .await;
    assert_eq!(
        b.stats.health_requests(),
        probes,
        "a removed backend was probed"
    );
    assert_eq!(rec.last().pool("p").unwrap().len(), 1);
    c.apply(vec![]);
    wait_for("no tasks", Duration::from_secs(10), || {
        c.tasks_alive() == baseline
    })
    .await;
    assert!(c.is_empty());
    assert!(rec.last().pools.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_is_published_only_when_it_changes() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let p = Arc::new(policy(2));
    let (c, rec) = checker(16);
    c.apply(vec![spec("p", &a, 1, &p), spec("p", &b, 1, &p)]);
    wait_for("both up", Duration::from_secs(10), || {
        rec.last()
            .pool("p")
            .is_some_and(|m| m.iter().all(|m| m.state.routable()))
    })
    .await;
    let published = rec.count();
    let checks = c.checks_done();
    wait_for("100 more checks", Duration::from_secs(10), || {
        c.checks_done() >= checks + 100
    })
    .await;
    assert_eq!(
        rec.count(),
        published,
        "steady checks republished an unchanged membership"
    );
    b.ctl.set_health(503);
    wait_for("b out", Duration::from_secs(10), || {
        rec.last()
            .pool("p")
            .is_some_and(|m| m.iter().filter(|m| m.state.routable()).count() == 1)
    })
    .await;
    assert!(rec.count() > published);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_checks_and_refused_connections() {
    let a = FakeBackend::start("a").await;
    let mut p = policy(5);
    p.probe = ProbeSpec::Tcp;
    let p = Arc::new(p);
    let (c, _) = checker(16);
    c.apply(vec![spec("p", &a, 1, &p)]);
    wait_for("up", Duration::from_secs(10), || {
        c.status()[0].health == Health::Up
    })
    .await;
    assert_eq!(a.stats.requests(), 0, "a TCP check sent an HTTP request");
    a.kill();
    wait_for("down", Duration::from_secs(10), || {
        c.status()[0].health == Health::Down
    })
    .await;
    assert!(c.status()[0]
        .last_error
        .as_deref()
        .unwrap()
        .starts_with("connect error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_body_and_chunked_responses() {
    let a = FakeBackend::start("alpha").await;
    a.ctl.chunked.store(true, Ordering::SeqCst);
    let mut p = policy(5);
    p.probe = ProbeSpec::Http(HttpSpec {
        expected_body: Some("alpha ok".into()),
        ..Default::default()
    });
    let (c, _) = checker(16);
    c.apply(vec![spec("p", &a, 1, &Arc::new(p.clone()))]);
    wait_for("up", Duration::from_secs(10), || {
        c.status()[0].health == Health::Up
    })
    .await;
    wait_for("several checks", Duration::from_secs(10), || {
        a.stats.health_requests() >= 5
    })
    .await;
    assert_eq!(
        a.stats.connections(),
        1,
        "chunked body not read to the end: connection not reused"
    );
    p.probe = ProbeSpec::Http(HttpSpec {
        expected_body: Some("beta".into()),
        ..Default::default()
    });
    c.apply(vec![spec("p", &a, 1, &Arc::new(p))]);
    wait_for("down on body mismatch", Duration::from_secs(10), || {
        c.status()[0].health == Health::Down
    })
    .await;
}
