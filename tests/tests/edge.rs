//! Edge HTTP correctness with raw sockets (issue #7): pipelining,
//! limits on request heads and bodies, `Expect: 100-continue`, request smuggling, and
//! the access log. Everything refused must never reach a backend.

use std::time::Duration;
use tokio::io::AsyncReadExt;
use vigil_tests::config::{pool, FAST_CHECKS};
use vigil_tests::raw::RawConn;
use vigil_tests::{get, start_vigil, traffic, wait_for, wait_for_async, FakeBackend, Vigil};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let a = FakeBackend::start("a").await;
    let v = start_vigil("", &[pool("web", &[(&a, 1)], FAST_CHECKS)]).await;
    let mut c = RawConn::connect(v.listen).await;
    let three: String = ["/one", "/two", "/three"]
        .iter()
        .map(|p| format!("GET {p} HTTP/1.1\r\nHost: app\r\n\r\n"))
        .collect();
    c.send(three.as_bytes()).await.unwrap();
    for p in ["/one", "/two", "/three"] {
        let r = c.response().await.unwrap();
        assert_eq!((r.status, r.header("x-path")), (200, Some(p)), "{r:?}");
    }
    // The connection still serves: nothing was left unanswered on it.
    c.send(b"GET /four HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.response().await.unwrap().header("x-path"), Some("/four"));
    assert!(c.closed_within(Duration::from_secs(5)).await);
    assert_eq!(
        *a.stats.paths.lock().unwrap(),
        ["/one", "/two", "/three", "/four"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_posts_with_bodies_keep_their_bodies_apart() {
    let a = FakeBackend::start("a").await;
    let v = start_vigil("", &[pool("web", &[(&a, 1)], FAST_CHECKS)]).await;
    let mut c = RawConn::connect(v.listen).await;
    let two = "POST /p1 HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nfirstPOST /p2 HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nsecond\r\n0\r\n\r\n";
    c.send(two.as_bytes()).await.unwrap();
    assert_eq!(c.response().await.unwrap().header("x-path"), Some("/p1"));
    assert_eq!(c.response().await.unwrap().header("x-path"), Some("/p2"));
    let last = a.stats.last_request.lock().unwrap().clone().unwrap();
    assert_eq!(
        (last.path.as_str(), last.body.as_slice()),
        ("/p2", &b"second"[..])
    );
}

/// Plain `GET`s and `HEAD`s take vigil's own request loop, a `POST` Pingora's proxy with
/// its head put back unread (third_party patch 5): pipelined on one connection they are
/// answered in order, each with its own body, and the connection goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_other_requests_pipelined_on_one_connection() {
    let a = FakeBackend::start("a").await;
    let v = start_vigil("", &[pool("web", &[(&a, 1)], FAST_CHECKS)]).await;
    let mut c = RawConn::connect(v.listen).await;
    let mixed = "GET /g1 HTTP/1.1\r\nHost: app\r\n\r\n\
        POST /p HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\n\r\nabc\
        HEAD /h HTTP/1.1\r\nHost: app\r\nConnection: keep-alive\r\n\r\n\
        GET /g2 HTTP/1.1\r\nHost: app\r\n\r\n";
    c.send(mixed.as_bytes()).await.unwrap();
    for p in ["/g1", "/p"] {
        let r = c.response().await.unwrap();
        assert_eq!((r.status, r.header("x-path")), (200, Some(p)), "{r:?}");
        assert_eq!(r.body, "a", "{r:?}");
    }
    // The backend may have the pipelined HEAD already: the POST is looked up by path.
    let post = a
        .stats
        .seen
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.path == "/p")
        .cloned();
    assert_eq!(post.map(|r| r.body), Some(b"abc".to_vec()));
    // A HEAD answer has a length and no body: the next answer follows at once.
    let r = c.head().await.unwrap();
    assert_eq!((r.status, r.header("x-path")), (200, Some("/h")), "{r:?}");
    let r = c.response().await.unwrap();
    assert_eq!(
        (r.status, r.header("x-path"), r.body.as_str()),
        (200, Some("/g2"), "a")
    );
    c.send(b"POST /p2 HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\n\r\nGET /g3 HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.response().await.unwrap().header("x-path"), Some("/p2"));
    assert_eq!(c.response().await.unwrap().header("x-path"), Some("/g3"));
    assert_eq!(
        *a.stats.paths.lock().unwrap(),
        ["/g1", "/p", "/h", "/g2", "/p2", "/g3"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_431_and_never_reach_a_backend() {
    let a = FakeBackend::start("a").await;
    let v = start_vigil("", &[pool("web", &[(&a, 1)], FAST_CHECKS)]).await;

    // 200 KB in one header.
    let mut c = RawConn::connect(v.listen).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: app\r\nX-Big: {}\r\n\r\n",
        "b".repeat(200 * 1024)
    );
    let _ = c.send(big.as_bytes()).await;
    let r = c.head().await.unwrap();
    assert_eq!(r.status, 431, "{r:?}");
    assert!(c.closed_within(Duration::from_secs(5)).await);

    // 33 KB spread over small headers: over the 32 KiB default too.
    let mut c = RawConn::connect(v.listen).await;
    let mut many = String::from("GET / HTTP/1.1\r\nHost: app\r\n");
    for i in 0..66 {
        many += &format!("X-H{i}: {}\r\n", "v".repeat(500));
    }
    c.send(format!("{many}\r\n").as_bytes()).await.unwrap();
    assert_eq!(c.head().await.unwrap().status, 431);

    // 101 headers: over the count limit of 100, though small.
    let mut c = RawConn::connect(v.listen).await;
    let mut count = String::from("GET / HTTP/1.1\r\nHost: app\r\n");
    for i in 0..100 {
        count += &format!("X-C{i}: 1\r\n");
    }
    c.send(format!("{count}\r\n").as_bytes()).await.unwrap();
    assert_eq!(c.head().await.unwrap().status, 431);

    // 100 headers exactly (Host included) is fine.
    let mut c = RawConn::connect(v.listen).await;
    let mut ok = String::from("GET / HTTP/1.1\r\nHost: app\r\n");
    for i in 0..99 {
        ok += &format!("X-C{i}: 1\r\n");
    }
    c.send(format!("{ok}\r\n").as_bytes()).await.unwrap();
    assert_eq!(c.response().await.unwrap().status, 200);

    assert_eq!(traffic(&a), 1, "a refused request reached the backend");
    v.wait_metric(r#"vigil_requests_total{pool="-",status_class="4xx"}"#, 3.0)
        .await;
    v.assert_quiet();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_is_cut_by_header_timeout_with_408() {
    let a = FakeBackend::start("a").await;
    let v = start_vigil(
        "limits:\n  header_timeout: 1s\n",
        &[pool("web", &[(&a, 1)], FAST_CHECKS)],
    )
    .await;
    let mut c = RawConn::connect(v.listen).await;
    c.send(b"GET / HTTP/1.1\r\n").await.unwrap();
    // One byte every 100 ms: each read is quick, the whole head never arrives.
    for b in "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".bytes() {
        if c.send(&[b]).await.is_err()
            || c.closed_within(Duration::from_millis(100)).await
            || c.buffered() > 0
        {
            break;
        }
    }
    let r = c.head().await.expect("an answer before the trickle ends");
    assert_eq!(r.status, 408, "{r:?}");
    assert!(c.closed_within(Duration::from_secs(5)).await);
    assert_eq!(traffic(&a), 0);
    v.wait_metric(r#"vigil_requests_total{pool="-",status_class="4xx"}"#, 1.0)
        .await;
    v.assert_quiet();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_without_host_is_400_and_smuggling_is_not_two_requests() {
    let a = FakeBackend::start("a").await;
    let v = start_vigil("", &[pool("web", &[(&a, 1)], FAST_CHECKS)]).await;
    let mut c = RawConn::connect(v.listen).await;
    c.send(b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.response().await.unwrap().status, 400);
    let mut c = RawConn::connect(v.listen).await;
    c.send(b"GET / HTTP/1.1\r\nHost: app\r\nHost: other\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.response().await.unwrap().status, 400);
    assert_eq!(traffic(&a), 0);

    // Content-Length and Transfer-Encoding together: the chunked framing wins, and the
    // "request" hidden in the body is never a request of its own.
    let mut c = RawConn::connect(v.listen).await;
    let smuggle = "POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n";
    c.send(smuggle.as_bytes()).await.unwrap();
    let r = c.response().await.unwrap();
    assert!(r.status == 200 || r.status == 400, "{r:?}");
    let _ = c.closed_within(Duration::from_secs(2)).await;
    // A later request, on a connection of its own, that the backend has seen: a
    // smuggled request, forwarded as soon as the first was answered, came before it.
    let after = get(v.listen, "app", "/after-smuggling").await.unwrap();
    assert_eq!(after.status, 200);
    let paths = a.stats.paths.lock().unwrap().clone();
    assert!(paths.iter().any(|p| p == "/after-smuggling"), "{paths:?}");
    assert!(
        !paths.iter().any(|p| p == "/smuggled"),
        "a smuggled request reached the backend: {paths:?}"
    );
    v.wait_metric(r#"vigil_requests_total{pool="-",status_class="4xx"}"#, 2.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_at_once() {
    let a = FakeBackend::start("a").await;
    let v = start_vigil(
        "limits:\n  body_bytes: 1000\n",
        &[pool("web", &[(&a, 1)], FAST_CHECKS)],
    )
    .await;
    let mut c = RawConn::connect(v.listen).await;
    c.send(b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    // The client waits for this before it sends its body.
    let r = c.head().await.unwrap();
    assert_eq!(r.status, 100, "{r:?}");
    c.send(b"hello").await.unwrap();
    let r = c.response().await.unwrap();
    assert_eq!(r.status, 200);
    let seen = a.stats.last_request.lock().unwrap().clone().unwrap();
    assert_eq!(seen.body, b"hello");
    assert_eq!(
        seen.header("expect"),
        None,
        "Expect went upstream: {seen:?}"
    );
    // Issue #25 (pingora-core patch 10): the connection carries the next request.
    assert_eq!(r.header("connection"), Some("keep-alive"), "{r:?}");
    c.send(b"GET /next HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.response().await.unwrap().status, 200);

    // Over the body limit the final status comes instead of 100, and nothing goes upstream.
    let mut c = RawConn::connect(v.listen).await;
    c.send(
        b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(c.head().await.unwrap().status, 413);
    assert_eq!(traffic(&a), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413_without_the_backend() {
    let a = FakeBackend::start("a").await;
    let v = start_vigil(
        "limits:\n  body_bytes: 10\n",
        &[pool("web", &[(&a, 1)], FAST_CHECKS)],
    )
    .await;
    let r = vigil_tests::request(v.listen, "POST", "app", "/", &[], &"x".repeat(11))
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(traffic(&a), 0);
    let r = vigil_tests::request(v.listen, "POST", "app", "/", &[], &"x".repeat(10))
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    // Chunked: no length up front, so the bytes are counted as they come.
    let mut c = RawConn::connect(v.listen).await;
    c.send(b"POST /chunky HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.response().await.unwrap().status, 413);
    let paths = a.stats.paths.lock().unwrap().clone();
    assert!(
        !paths.iter().any(|p| p == "/chunky")
            || a.stats
                .last_request
                .lock()
                .unwrap()
                .as_ref()
                .unwrap()
                .body
                .len()
                <= 10,
        "an oversized chunked body was delivered: {paths:?}"
    );
    v.wait_metric(
        r#"vigil_requests_total{pool="web",status_class="4xx"}"#,
        2.0,
    )
    .await;
    v.assert_quiet();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_is_502() {
    let a = FakeBackend::start("a").await;
    let v = start_vigil(
        "",
        &[pool(
            "web",
            &[(&a, 1)],
            &format!("    retries: 0\n{FAST_CHECKS}").replace("interval: 1s", "interval: 1h"),
        )],
    )
    .await;
    a.kill();
    let r = get(v.listen, "app", "/").await.unwrap();
    assert_eq!(r.status, 502, "{r:?}");
}

fn access_log_config(format: &str, path: &std::path::Path) -> String {
    format!(
        "access_log:\n  format: {format}\n  path: {}\n",
        path.display()
    )
}

fn read_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_json_has_every_field_and_reopens_on_sigusr1() {
    let a = FakeBackend::start("a").await;
    let path = Vigil::temp_path("access.json.log");
    let v = start_vigil(
        &access_log_config("json", &path),
        &[pool("web", &[(&a, 1)], FAST_CHECKS)],
    )
    .await;
    a.ctl.set_delay(Duration::from_millis(100));
    let sent = tokio::time::Instant::now();
    let r = vigil_tests::request(
        v.listen,
        "POST",
        "app",
        "/submit?x=1",
        &[("x-request-id", "req-42")],
        "hello",
    )
    .await
    .unwrap();
    let around = sent.elapsed();
    a.ctl.set_delay(Duration::ZERO);
    assert_eq!(r.status, 200);
    wait_for("one access line", Duration::from_secs(5), || {
        !read_lines(&path).is_empty()
    })
    .await;
    let line: serde_json::Value = serde_json::from_str(&read_lines(&path)[0]).unwrap();
    assert_eq!(line["method"], "POST");
    assert_eq!(line["host"], "app");
    assert_eq!(line["path"], "/submit?x=1");
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream_status"], 200);
    assert_eq!(line["bytes_in"], 5);
    assert_eq!(line["bytes_out"], 1);
    assert_eq!(line["pool"], "web");
    assert_eq!(line["backend"], a.addr.to_string());
    assert_eq!(line["attempts"], 1);
    assert_eq!(line["request_id"], "req-42");
    assert!(line["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
    // From the request's first byte to its answer's last: the backend's 100 ms are in
    // it, and it is within what the client measured around the whole exchange.
    let duration = line["duration_ms"]
        .as_f64()
        .expect("duration_ms is a number");
    let around_ms = around.as_secs_f64() * 1e3;
    assert!(
        (100.0..=around_ms).contains(&duration),
        "duration_ms {duration}, the client measured {around_ms:.3} ms"
    );

    // logrotate: rename, then SIGUSR1; the next line lands in a new file at the old path.
    let rotated = path.with_extension("1");
    std::fs::rename(&path, &rotated).unwrap();
    v.signal(libc::SIGUSR1);
    let _ = get(v.listen, "app", "/after").await.unwrap();
    wait_for(
        "a line in the reopened file",
        Duration::from_secs(5),
        || read_lines(&path).iter().any(|l| l.contains("/after")),
    )
    .await;
    assert_eq!(
        read_lines(&rotated).len(),
        1,
        "the rotated file kept growing"
    );
    // Requests vigil answers itself are logged too; generated ids go upstream.
    let _ = get(v.listen, "app", "/x").await.unwrap();
    let sent_id = a
        .stats
        .last_request
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|r| r.header("x-request-id").map(str::to_string))
        .expect("a generated x-request-id upstream");
    wait_for(
        "the generated id in the log",
        Duration::from_secs(5),
        || read_lines(&path).iter().any(|l| l.contains(&sent_id)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_text_line_and_refused_heads() {
    let a = FakeBackend::start("a").await;
    let path = Vigil::temp_path("access.text.log");
    let v = start_vigil(
        &access_log_config("text", &path),
        &[pool("web", &[(&a, 1)], FAST_CHECKS)],
    )
    .await;
    let _ = get(v.listen, "app", "/page").await.unwrap();
    let mut c = RawConn::connect(v.listen).await;
    let _ = c
        .send(
            format!(
                "GET / HTTP/1.1\r\nHost: app\r\nX-Big: {}\r\n\r\n",
                "b".repeat(40_000)
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(c.head().await.unwrap().status, 431);
    wait_for("two access lines", Duration::from_secs(5), || {
        read_lines(&path).len() >= 2
    })
    .await;
    let lines = read_lines(&path);
    let page = lines.iter().find(|l| l.contains("/page")).unwrap();
    assert!(
        page.contains("\"GET /page HTTP/1.1\" 200 in=0 out=1 "),
        "{page}"
    );
    for field in [
        "host=app",
        "pool=web",
        &format!("backend={}", a.addr),
        "attempts=1",
        "upstream_status=200",
        "id=",
    ] {
        assert!(page.contains(field), "{field} missing: {page}");
    }
    assert!(page.contains(" 127.0.0.1:"), "{page}");
    let refused = lines
        .iter()
        .find(|l| l.contains(" 431 "))
        .expect("a 431 line");
    assert!(refused.contains("pool=-"), "{refused}");
}

/// The writer writes every 10 ms; the lines of the last requests before a SIGINT (the
/// quickest way out) are still written before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_access_line_is_lost_at_exit() {
    let a = FakeBackend::start("a").await;
    let path = Vigil::temp_path("access.exit.log");
    let mut v = start_vigil(
        &access_log_config("text", &path),
        &[pool("web", &[(&a, 1)], FAST_CHECKS)],
    )
    .await;
    let mut c = RawConn::connect(v.listen).await;
    let requests = 300;
    for i in 0..requests {
        c.send(format!("GET /n/{i} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(c.response().await.unwrap().status, 200);
    }
    drop(c);
    v.signal(libc::SIGINT);
    assert!(v.wait_exit(Duration::from_secs(10)).await.is_some());
    let lines = read_lines(&path);
    for i in 0..requests {
        let needle = format!("\"GET /n/{i} HTTP/1.1\" 200 ");
        assert!(
            lines.iter().any(|l| l.contains(&needle)),
            "no line for /n/{i}"
        );
    }
    assert_eq!(lines.len(), requests);
}

/// The sum of every series of `family` in vigil's metrics.
async fn metric_sum(v: &Vigil, family: &str) -> f64 {
    let text = v.admin_get("/metrics").await.body;
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// vigil in front of `a` with at most 128 open descriptors (`prlimit`), this test
/// process allowed many more.
async fn vigil_with_128_descriptors(a: &FakeBackend) -> Vigil {
    vigil_tests::raise_fd_limit(4096);
    let (listen, admin) = vigil_tests::free_ports();
    let cfg =
        vigil_tests::config::config(listen, admin, "", &[pool("web", &[(a, 1)], FAST_CHECKS)]);
    let mut v = Vigil::start_with_nofile(&cfg, listen, admin, 128);
    v.wait_ready().await;
    v
}

/// Issue #28: with few descriptors and more clients than they allow, vigil keeps the
/// clients it has, its checks and its admin listener, says so once, and recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_vigil_keeps_its_clients_checks_and_admin() {
    let a = FakeBackend::start("a").await;
    let v = vigil_with_128_descriptors(&a).await;
    let listen = v.listen;
    v.wait_log(&[
        "descriptor limit bounds client connections",
        "\"client_connections\":23",
    ])
    .await;
    let mut kept = RawConn::served(listen, "/before").await;
    let mut others = Vec::new();
    for _ in 0..300 {
        others.push(tokio::net::TcpStream::connect(listen).await.unwrap());
    }
    wait_for_async("clients refused", Duration::from_secs(10), || async {
        metric_sum(&v, "vigil_client_connections_refused_total").await >= 200.0
    })
    .await;
    // Out of room, vigil does not spin: under a fifth of a core while the flood holds on.
    let ticks = |pid: i32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.get(11..13)
            .map_or(0, |f| f.iter().filter_map(|x| x.parse::<u64>().ok()).sum())
    };
    let before = ticks(v.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = ticks(v.pid()) - before;
    assert!(
        used < 20,
        "vigil used {used} ticks of 100 in a second with the flood held"
    );
    // The client it had, the admin listener and the checks go on.
    kept.send(b"GET /kept HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(kept.response().await.unwrap().status, 200);
    assert_eq!(v.admin_get("/health").await.status, 200);
    let checks = a.stats.health_requests();
    wait_for("a check after the flood", Duration::from_secs(5), || {
        a.stats.health_requests() > checks
    })
    .await;
    // Refused clients are closed at once: they read end of stream, not an answer.
    let mut buf = [0u8; 1];
    let last = others.last_mut().unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), last.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    // Descriptors freed: new clients are served again.
    drop(others);
    wait_for_async("a new client served", Duration::from_secs(10), || async {
        get(listen, "app", "/after")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    v.wait_log(&["under the descriptor budget again"]).await;
    let logs = v.logs();
    let episodes = logs
        .iter()
        .filter(|l| l.contains("at the descriptor budget"))
        .count();
    assert_eq!(episodes, 1, "one line per episode");
    // The flood's connections hold descriptors for the moment between accept and
    // refusal: accept() may still fail now and then, said once, never per failure.
    let accept_lines = logs
        .iter()
        .filter(|l| l.contains("accepting connections fails"))
        .count();
    assert!(accept_lines <= 1, "{logs:#?}");
    assert!(
        !logs.iter().any(|l| l.contains("Accept() failed")),
        "{logs:#?}"
    );
}

/// Issue #28 (pingora-core patch 14): when `accept()` itself fails for want of
/// descriptors — here, the admin listener, which has no client budget, flooded — the
/// failures are counted and said once an episode, not once each, and accepting resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_failures_are_counted_and_said_once_an_episode() {
    let a = FakeBackend::start("a").await;
    let v = vigil_with_128_descriptors(&a).await;
    let (listen, admin) = (v.listen, v.admin);
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    v.wait_log(&["accepting connections fails", "descriptors"])
        .await;
    // A few more rounds of failing accepts (one each 100 ms) within the episode.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(flood);
    wait_for_async("accept errors counted", Duration::from_secs(10), || async {
        metric_sum(&v, "vigil_accept_errors_total").await >= 2.0
    })
    .await;
    // The episode ends at the first accept a second after the last failure.
    wait_for_async(
        "the episode's end said",
        Duration::from_secs(10),
        || async {
            let _ = v.admin_get("/health/live").await;
            v.logs()
                .iter()
                .any(|l| l.contains("accepting connections again"))
        },
    )
    .await;
    let logs = v.logs();
    let began = logs
        .iter()
        .filter(|l| l.contains("accepting connections fails"))
        .count();
    assert_eq!(began, 1, "{logs:#?}");
    assert!(
        !logs.iter().any(|l| l.contains("Accept() failed")),
        "{logs:#?}"
    );
    assert_eq!(get(listen, "app", "/").await.unwrap().status, 200);
}
