//! Issue #25: request bodies of every framing on vigil's request loop, the same as on
//! Pingora's proxy (`VIGIL_FAST_PATH=off`): long and chunked bodies streamed whole to
//! the backend, `Expect: 100-continue`, the body limit and the body timeout, a backend
//! that answers before the body ends, HTTP/1.0 keep-alive.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vigil_tests::config::{config, pool, FAST_CHECKS};
use vigil_tests::raw::RawConn;
use vigil_tests::{free_ports, FakeBackend, Vigil};

const PATHS: [(&str, &[(&str, &str)]); 2] = [
    ("request loop", &[]),
    ("Pingora's proxy", &[("VIGIL_FAST_PATH", "off")]),
];

async fn on_path(b: &FakeBackend, env: &'static [(&str, &str)], top: &str) -> Vigil {
    let (listen, admin) = free_ports();
    let cfg = config(listen, admin, top, &[pool("web", &[(b, 1)], FAST_CHECKS)]);
    let mut v = Vigil::start_with_env(&cfg, listen, admin, env);
    v.wait_ready().await;
    v
}

/// `n` bytes that are not all alike, so that a byte lost or moved shows.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i * 7 % 26) as u8).collect()
}

/// `body` chunked in uneven pieces, with a chunk extension on one.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    for (i, size) in [1usize, 4093, 65536, 7, 100_000].iter().cycle().enumerate() {
        if at == body.len() {
            break;
        }
        let n = (*size).min(body.len() - at);
        let ext = if i == 2 { ";name=value" } else { "" };
        out.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
        out.extend_from_slice(&body[at..at + n]);
        out.extend_from_slice(b"\r\n");
        at += n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn last_body(b: &FakeBackend) -> Vec<u8> {
    b.stats.last_request.lock().unwrap().clone().unwrap().body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_and_chunked_bodies_reach_the_backend_whole() {
    let b = FakeBackend::start("b").await;
    for (path, env) in PATHS {
        let v = on_path(&b, env, "").await;
        let mut c = RawConn::connect(v.listen).await;

        // Past the retry buffer: streamed as it arrives.
        let body = pattern(1 << 20);
        let head = format!(
            "POST /long HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        c.send(head.as_bytes()).await.unwrap();
        c.send(&body).await.unwrap();
        let r = c.response().await.unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(
            last_body(&b) == body,
            "{path}: the 1 MiB body arrived changed"
        );

        // Chunked, on the same connection.
        let body = pattern(300_000);
        c.send(b"PUT /chunked HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        c.send(&chunked(&body)).await.unwrap();
        let r = c.response().await.unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(
            last_body(&b) == body,
            "{path}: the chunked body arrived changed"
        );

        // Expect: 100-continue: vigil says 100 before any body byte is sent, and the
        // connection carries the next request.
        let body = pattern(200_000);
        let head = format!(
            "POST /expect HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        c.send(head.as_bytes()).await.unwrap();
        let r = c.head().await.unwrap();
        assert_eq!(r.status, 100, "{path}: {r:?}");
        c.send(&body).await.unwrap();
        let r = c.response().await.unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let seen = b.stats.last_request.lock().unwrap().clone().unwrap();
        assert_eq!(seen.header("expect"), None, "{path}: Expect was forwarded");
        assert!(seen.body == body, "{path}");
        c.send(b"GET /after HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(c.response().await.unwrap().status, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413_and_close() {
    let b = FakeBackend::start("b").await;
    for (path, env) in PATHS {
        let v = on_path(&b, env, "limits:\n  body_bytes: 10000\n").await;
        // Announced by its length: refused before anything goes upstream.
        let before = b.stats.requests();
        let mut c = RawConn::connect(v.listen).await;
        c.send(b"POST /big HTTP/1.1\r\nHost: app\r\nContent-Length: 20000\r\n\r\n")
            .await
            .unwrap();
        let r = c.response().await.unwrap();
        assert_eq!(r.status, 413, "{path}: {r:?}");
        assert!(c.closed_within(Duration::from_secs(5)).await, "{path}");
        // Chunked: refused as its bytes pass the limit.
        let mut c = RawConn::connect(v.listen).await;
        c.send(b"POST /big HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let _ = c.send(&chunked(&pattern(50_000))).await;
        let r = c.response().await.unwrap();
        assert_eq!(r.status, 413, "{path}: {r:?}");
        assert!(c.closed_within(Duration::from_secs(5)).await, "{path}");
        assert_eq!(
            b.stats.requests(),
            before,
            "{path}: an over-long body reached the backend whole"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_is_cut_with_408_and_counted() {
    // On the request loop, which carries every HTTP/1 request (Pingora's proxy, which
    // now carries HTTP/2 alone, has no whole-body deadline yet: issue #26).
    let b = FakeBackend::start("b").await;
    for (path, env) in &PATHS[..1] {
        let v = on_path(&b, env, "limits:\n  body_timeout: 500ms\n").await;
        // A body held whole (short) and one streamed (long), each stopping half-way.
        for length in [1000, 200_000] {
            let mut c = RawConn::connect(v.listen).await;
            let head =
                format!("POST /slow HTTP/1.1\r\nHost: app\r\nContent-Length: {length}\r\n\r\n");
            c.send(head.as_bytes()).await.unwrap();
            c.send(&pattern(length / 2)).await.unwrap();
            let r = tokio::time::timeout(Duration::from_secs(5), c.response())
                .await
                .unwrap_or_else(|_| panic!("{path}: a trickling body of {length} was never cut"));
            assert_eq!(r.unwrap().status, 408, "{path}: {length}");
            assert!(c.closed_within(Duration::from_secs(5)).await, "{path}");
        }
        let series = format!(
            "vigil_client_timeouts_total{{kind=\"body\",listener=\"{}\"}}",
            v.listen
        );
        v.wait_metric(&series, 2.0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_answers_before_the_body_ends_is_heard() {
    // A backend that refuses an upload from its head alone and never reads the body.
    let refuser = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = refuser.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = refuser.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                if head.starts_with(b"GET /health") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await;
                } else {
                    let _ = s
                        .write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\ndenied")
                        .await;
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            });
        }
    });
    let (listen, admin) = free_ports();
    let backend = format!("  - name: web\n    backends:\n      - address: {addr}\n{FAST_CHECKS}");
    let cfg = config(listen, admin, "", &[backend]);
    let mut v = Vigil::start(&cfg, listen, admin);
    v.wait_ready().await;
    let mut c = RawConn::connect(listen).await;
    c.send(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 8000000\r\n\r\n")
        .await
        .unwrap();
    // The client sends on meanwhile, as an uploading client does (what vigil does not
    // read stays in the socket buffers).
    let body = pattern(256 * 1024);
    let _ = tokio::time::timeout(Duration::from_millis(500), c.send(&body)).await;
    let r = tokio::time::timeout(Duration::from_secs(5), c.response())
        .await
        .expect("the backend's early answer never reached the client")
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (401, "denied"), "{r:?}");
    // Its body unread, the connection cannot carry another request.
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert!(c.closed_within(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_keeps_its_connection_only_when_it_asks() {
    let b = FakeBackend::start("b").await;
    for (path, env) in PATHS {
        let v = on_path(&b, env, "").await;
        let mut c = RawConn::connect(v.listen).await;
        c.send(b"GET /a HTTP/1.0\r\nHost: app\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let r = c.response().await.unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.header("connection"), Some("keep-alive"), "{path}: {r:?}");
        c.send(b"GET /b HTTP/1.0\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        let r = c.response().await.unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(c.closed_within(Duration::from_secs(5)).await, "{path}");
        // The backend always gets HTTP/1.1.
        let seen = b.stats.last_request.lock().unwrap().clone().unwrap();
        assert_eq!(seen.path, "/b");
    }
}
