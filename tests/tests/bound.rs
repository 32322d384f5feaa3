//! The checker's global bound on checks in flight with 2,000 real loopback backends.
//! In a test binary of its own: backends on ephemeral ports must not receive checks
//! from other tests' checkers (ports freed by one test are reused by another).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use vigil_healthcheck::*;
use vigil_tests::checking::{checker, policy, spec};
use vigil_tests::{wait_for, Control, FakeBackend, Stats};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_bound_holds_with_two_thousand_backends() {
    raise_fd_limit();
    let stats = Arc::new(Stats::default());
    let ctl = Arc::new(Control::default());
    ctl.set_delay(Duration::from_millis(20));
    ctl.delay_health.store(true, Ordering::SeqCst);
    let mut backends = Vec::new();
    for i in 0..2000 {
        backends.push(FakeBackend::start_with(&format!("b{i}"), stats.clone(), ctl.clone()).await);
    }
    // A check that waits 2 s for a permit-holder starved of CPU (two cores, 2,000
    // backends and the rest of the suite) would time out, give its permit back while
    // the backend still counts it, and blur the bound: the timeout here is long.
    let mut p = policy(50);
    p.timeout = Duration::from_secs(30);
    let p = Arc::new(p);
    let (c, rec) = checker(64);
    c.apply(backends.iter().map(|b| spec("big", b, 1, &p)).collect());
    wait_for("every backend up", Duration::from_secs(120), || {
        c.status().iter().all(|s| s.health == Health::Up)
    })
    .await;
    wait_for("4,000 checks", Duration::from_secs(120), || {
        stats.health_requests() >= 4000
    })
    .await;
    assert!(
        c.shutdown(Duration::from_secs(5)).await,
        "check tasks did not end"
    );
    assert!(
        c.peak_in_flight() <= 64,
        "{} checks in flight at once",
        c.peak_in_flight()
    );
    assert!(
        stats.peak_in_flight() <= 64,
        "backends saw {} checks at once",
        stats.peak_in_flight()
    );
    // Every backend answered in time: none may have been marked down on the way, as a
    // checker starved by its own bookkeeping would (timeouts firing on unread answers).
    let downs: usize = rec
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|m| {
            m.pools
                .values()
                .flatten()
                .filter(|m| m.state.health == Health::Down)
                .count()
        })
        .sum();
    assert_eq!(
        downs, 0,
        "{downs} down states published for healthy backends"
    );
    // The bound was really reached: 2,000 backends at 50 ms with 20 ms answers need it.
    assert!(
        stats.peak_in_flight() >= 32,
        "peak only {}",
        stats.peak_in_flight()
    );
}
