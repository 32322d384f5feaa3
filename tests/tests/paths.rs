//! Issue #28: routing sees the path the backend will see. Paths are normalized (dot
//! segments, `//`, encoded unreserved characters) before a pool is chosen, on HTTP/1
//! and HTTP/2 alike; a path that cannot be normalized is 400 without a backend.

use vigil_tests::config::{pool, FAST_CHECKS};
use vigil_tests::raw::RawConn;
use vigil_tests::tls::get2;
use vigil_tests::{traffic, FakeBackend, Vigil};

struct Setup {
    vigil: Vigil,
    public: FakeBackend,
    internal: FakeBackend,
    original: FakeBackend,
}

/// Pools `/public`, `/internal` and `/raw` (the last with `forward_original_path`), on
/// a listener that speaks HTTP/1 and h2c.
async fn setup() -> Setup {
    let public = FakeBackend::start("public").await;
    let internal = FakeBackend::start("internal").await;
    let original = FakeBackend::start("original").await;
    let route = |prefix: &str, extra: &str| {
        format!("    routes:\n      - path_prefix: {prefix}\n    fail_open: false\n{extra}{FAST_CHECKS}")
    };
    let vigil = vigil_tests::start_h2c_vigil(&[
        pool("public", &[(&public, 1)], &route("/public", "")),
        pool("internal", &[(&internal, 1)], &route("/internal", "")),
        pool(
            "raw",
            &[(&original, 1)],
            &route("/raw", "    forward_original_path: true\n"),
        ),
    ])
    .await;
    Setup {
        vigil,
        public,
        internal,
        original,
    }
}

fn last_path(b: &FakeBackend) -> String {
    b.stats
        .last_request
        .lock()
        .unwrap()
        .as_ref()
        .map(|r| r.path.clone())
        .unwrap_or_default()
}

/// The status and body of `GET target` over HTTP/1.1 (`h2: false`) or h2c.
async fn get(s: &Setup, target: &str, h2: bool) -> (u16, String) {
    if h2 {
        let tcp = tokio::net::TcpStream::connect(s.vigil.listen)
            .await
            .unwrap();
        return get2(tcp, "app", target).await.unwrap();
    }
    let mut c = RawConn::connect(s.vigil.listen).await;
    c.send(format!("GET {target} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let r = c.response().await.unwrap();
    (r.status, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_and_the_backend_see_the_normalized_path() {
    let s = setup().await;
    for h2 in [false, true] {
        let how = if h2 { "HTTP/2" } else { "HTTP/1.1" };
        for (target, backend, sent) in [
            ("/public/../internal/x", "internal", "/internal/x"),
            ("/public/%2e%2e/internal/x", "internal", "/internal/x"),
            (
                "/internal/../public/x?q=/../y",
                "public",
                "/public/x?q=/../y",
            ),
            ("//internal//./a/", "internal", "/internal/a/"),
            ("/%70ublic/%7Euser", "public", "/public/~user"),
            ("/public/a%2Fb", "public", "/public/a%2Fb"),
            ("/public/plain?x=1", "public", "/public/plain?x=1"),
        ] {
            let (status, body) = get(&s, target, h2).await;
            assert_eq!((status, body.as_str()), (200, backend), "{how} {target}");
            let b = if backend == "public" {
                &s.public
            } else {
                &s.internal
            };
            assert_eq!(last_path(b), sent, "{how} {target}");
        }
        // Routed by the normalized path, sent as the client wrote it.
        let (status, body) = get(&s, "/public/../raw/%41/./b", h2).await;
        assert_eq!((status, body.as_str()), (200, "original"), "{how}");
        assert_eq!(last_path(&s.original), "/public/../raw/%41/./b", "{how}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_cannot_be_normalized_is_400_without_a_backend() {
    let s = setup().await;
    let before = traffic(&s.public) + traffic(&s.internal) + traffic(&s.original);
    for h2 in [false, true] {
        for target in [
            "/..",
            "/public/../../internal",
            "/public/%2e%2e/%2E%2E/x",
            "/public/%zz",
            "/public/%4",
            "/public/..%2F..%2Finternal",
        ] {
            let (status, _) = get(&s, target, h2).await;
            assert_eq!(status, 400, "h2 {h2}: {target}");
        }
    }
    let after = traffic(&s.public) + traffic(&s.internal) + traffic(&s.original);
    assert_eq!(after, before, "a refused path reached a backend");
}
