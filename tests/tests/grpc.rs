//! gRPC through vigil (issue #10): HTTP/2 from the client over TLS, HTTP/2 to an HTTPS
//! backend (`protocol: h2`), trailers intact; `grpc.health.v1` checks over one
//! multiplexed connection, NOT_SERVING taking the backend down.

use std::sync::atomic::Ordering;
use std::time::Duration;
use vigil_tests::certs::TestCa;
use vigil_tests::config::tls_config;
use vigil_tests::grpc::{call, GrpcBackend, NOT_SERVING};
use vigil_tests::tls::{client_config, connect};
use vigil_tests::{free_ports, wait_for, Vigil};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_is_proxied_with_trailers_and_health_checked_over_one_connection() {
    let ca = TestCa::new("grpc");
    let edge = ca.leaf("edge", &["grpc.test"]);
    let backend_leaf = ca.leaf("backend", &["127.0.0.1"]);
    let b = GrpcBackend::start(&backend_leaf).await;
    let (listen, admin) = free_ports();
    let pool = format!(
        "  - name: grpc\n    protocol: h2\n    tls: {{ca: {}}}\n    backends:\n      - address: {}\n    health_check:\n      type: grpc\n      interval: 200ms\n      fast_interval: 50ms\n      down_interval: 50ms\n      max_down_interval: 100ms\n      timeout: 200ms\n      jitter: 0\n      rise: 1\n      fall: 1\n",
        ca.cert.display(),
        b.addr
    );
    let mut v = Vigil::start(
        &tls_config(listen, admin, &[&edge], "", &[pool]),
        listen,
        admin,
    );
    v.wait_ready().await;

    let s = connect(listen, "grpc.test", client_config(&ca.cert, &["h2"]))
        .await
        .unwrap();
    let (status, body, trailers) = call(s, "grpc.test", "/echo.Echo/Say", b"hello")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body,
        vigil_tests::grpc::frame(b"hello").to_vec(),
        "the message came back whole"
    );
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.to_str().unwrap()),
        Some("0")
    );
    assert_eq!(
        trailers.get("x-trailer").map(|v| v.to_str().unwrap()),
        Some("intact")
    );
    assert_eq!(b.stats.calls.load(Ordering::SeqCst), 1);

    // Checks every 200 ms are streams on one HTTP/2 connection (the call has its own).
    let before = b.stats.health_checks.load(Ordering::SeqCst);
    wait_for("10 more checks", Duration::from_secs(10), || {
        b.stats.health_checks.load(Ordering::SeqCst) >= before + 10
    })
    .await;
    let connections = b.stats.connections.load(Ordering::SeqCst);
    assert!(
        connections <= 2,
        "{connections} HTTP/2 connections for checks and one call"
    );

    b.status.store(NOT_SERVING, Ordering::SeqCst);
    v.wait_log(&["backend is down", "NOT_SERVING"]).await;
}
