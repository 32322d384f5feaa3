//! gRPC through vigil (issue #10): HTTP/2 from the client over TLS, HTTP/2 to an HTTPS
//! backend (`protocol: h2`), trailers intact; `grpc.health.v1` checks over one
//! multiplexed connection, NOT_SERVING taking the backend down.

use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use vigil_tests::certs::TestCa;
use vigil_tests::config::tls_config;
use vigil_tests::grpc::{call, frame, GrpcBackend, NOT_SERVING};
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

/// A gRPC call over HTTP/1.1 (chunked, trailers asked for with `TE`), on a connection
/// that closes after it: the status, the body decoded, and the trailer lines.
async fn call_over_http1<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    authority: &str,
    path: &str,
    msg: &[u8],
) -> (u16, Vec<u8>, Vec<(String, String)>) {
    let framed = vigil_tests::grpc::frame(msg);
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/grpc\r\nte: trailers\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n",
        framed.len()
    )
    .into_bytes();
    req.extend_from_slice(&framed);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    s.write_all(&req).await.unwrap();
    // To the close (a missing TLS close_notify is no matter: the answer is framed).
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all).await;
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&all[..end]).to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let status = head[9..12].parse().unwrap();
    let (mut rest, mut body) = (&all[end..], Vec::new());
    loop {
        let line = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line]).unwrap(), 16).unwrap();
        rest = &rest[line + 2..];
        if size == 0 {
            break;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    let trailers = String::from_utf8_lossy(rest)
        .split("\r\n")
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
        .collect();
    (status, body, trailers)
}

/// One pipeline for `protocol: h2` pools too (issue #26): the same call from an HTTP/2
/// client and from an HTTP/1.1 client reaches the backend with the same head (gRPC's
/// `te: trailers` included) and comes back whole with its trailers — HTTP/2 trailers
/// to the one, the chunked body's trailer lines to the other; a message larger than
/// every flow-control window comes back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_is_the_same_call_from_http1_and_http2_clients() {
    let ca = TestCa::new("grpc-both");
    let edge = ca.leaf("edge", &["grpc.test"]);
    let backend_leaf = ca.leaf("backend", &["127.0.0.1"]);
    let b = GrpcBackend::start(&backend_leaf).await;
    let (listen, admin) = free_ports();
    let pool = format!(
        "  - name: grpc\n    protocol: h2\n    tls: {{ca: {}}}\n    backends:\n      - address: {}\n    health_check:\n      type: grpc\n      interval: 1s\n",
        ca.cert.display(),
        b.addr
    );
    let mut v = Vigil::start(
        &tls_config(listen, admin, &[&edge], "", &[pool]),
        listen,
        admin,
    );
    v.wait_ready().await;

    let msg = b"same call".to_vec();
    let s = connect(listen, "grpc.test", client_config(&ca.cert, &["h2"]))
        .await
        .unwrap();
    let (status, body, trailers) = call(s, "grpc.test", "/echo.Echo/Say", &msg).await.unwrap();
    assert_eq!((status, body), (200, frame(&msg).to_vec()));
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("x-trailer").unwrap(), "intact");

    let s = connect(listen, "grpc.test", client_config(&ca.cert, &["http/1.1"]))
        .await
        .unwrap();
    let (status, body, trailers) = call_over_http1(s, "grpc.test", "/echo.Echo/Say", &msg).await;
    assert_eq!((status, body), (200, frame(&msg).to_vec()));
    for (name, value) in [
        ("grpc-status", "0"),
        ("grpc-message", "ok"),
        ("x-trailer", "intact"),
    ] {
        assert!(
            trailers.contains(&(name.to_string(), value.to_string())),
            "{name} in the HTTP/1.1 client's trailers: {trailers:?}"
        );
    }

    let seen = b.stats.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let sorted = |s: &vigil_tests::grpc::Seen| {
        let mut h = s.headers.clone();
        h.sort();
        (s.authority.clone(), s.path.clone(), h)
    };
    assert_eq!(
        sorted(&seen[0]),
        sorted(&seen[1]),
        "the same head from both clients"
    );
    assert!(
        seen[0].headers.contains(&("te".into(), "trailers".into())),
        "gRPC's te: trailers reaches the backend: {:?}",
        seen[0].headers
    );

    // 1 MiB each way: the client's and vigil's windows (64 KiB by default) fill and open.
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let s = connect(listen, "grpc.test", client_config(&ca.cert, &["h2"]))
        .await
        .unwrap();
    let (status, body, trailers) = call(s, "grpc.test", "/echo.Echo/Say", &big).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body == frame(&big).to_vec(),
        "1 MiB came back whole ({} bytes)",
        body.len()
    );
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    let s = connect(listen, "grpc.test", client_config(&ca.cert, &["http/1.1"]))
        .await
        .unwrap();
    let (status, body, _) = call_over_http1(s, "grpc.test", "/echo.Echo/Say", &big).await;
    assert_eq!(status, 200);
    assert!(
        body == frame(&big).to_vec(),
        "1 MiB came back whole over HTTP/1.1 ({} bytes)",
        body.len()
    );
    // The calls on one connection to the backend per worker thread at most, the checks
    // on their own.
    let connections = b.stats.connections.load(Ordering::SeqCst);
    assert!(
        connections <= 3,
        "{connections} connections for checks and four calls"
    );
}

/// HTTP/2 to HTTP/2, an answer's body and trailers go from codec to codec without the
/// chunked framing between them (`H2Upstream::through`): a backend's reset mid-answer
/// still reaches the client as a reset, not as an answer that ended, and a load report
/// in its trailers is still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_backend_s_reset_and_trailer_report_reach_an_h2_client_as_they_were() {
    let ca = TestCa::new("grpc-through");
    let edge = ca.leaf("edge", &["grpc.test"]);
    let backend_leaf = ca.leaf("backend", &["127.0.0.1"]);
    let b = GrpcBackend::start(&backend_leaf).await;
    let (listen, admin) = free_ports();
    let pool = format!(
        "  - name: grpc\n    protocol: h2\n    balance: load_report\n    load_report:\n      blackout: 0s\n    tls: {{ca: {}}}\n    backends:\n      - address: {}\n    health_check:\n      type: grpc\n      interval: 1s\n",
        ca.cert.display(),
        b.addr
    );
    let mut v = Vigil::start(
        &tls_config(listen, admin, &[&edge], "", &[pool]),
        listen,
        admin,
    );
    v.wait_ready().await;
    let h2 = || connect(listen, "grpc.test", client_config(&ca.cert, &["h2"]));

    let reset = call(h2().await.unwrap(), "grpc.test", "/echo.Echo/Reset", b"cut").await;
    assert!(
        reset.is_err(),
        "a reset answer reached the client as whole: {reset:?}"
    );

    let (status, body, trailers) = call(
        h2().await.unwrap(),
        "grpc.test",
        "/echo.Echo/Report",
        b"load",
    )
    .await
    .unwrap();
    assert_eq!((status, body), (200, frame(b"load").to_vec()));
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    let reported = format!(
        "vigil_backend_reported_utilization{{backend=\"{}\",pool=\"grpc\"}}",
        b.addr
    );
    assert_eq!(v.metric(&reported).await, Some(0.3));
}
