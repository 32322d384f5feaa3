//! Issue #26: one request pipeline, two codecs. The same requests sent over HTTP/1.1
//! and over HTTP/2 (h2c) through one vigil reach a recording backend with the same
//! head and body, and come back to the client with the same status, headers, body and
//! trailers, save what the protocols themselves change (`Connection`,
//! `Transfer-Encoding`, and HTTP/2's split cookies); their access lines differ only in
//! the protocol.

use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vigil_tests::config::FAST_CHECKS;
use vigil_tests::{free_ports, wait_for, Vigil};

/// A request as the backend received it: method, target, headers (names lower-cased,
/// sorted), body (decoded when chunked).
type Seen = (String, String, Vec<(String, String)>, Vec<u8>);

/// What the backend answers, by path.
fn answer_for(path: &str) -> &'static [u8] {
    if path.starts_with("/t/chunked") {
        b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\nContent-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\ngrpc-message: fine\r\n\r\n"
    } else if path.starts_with("/t/nolength") {
        b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\nConnection: close\r\n\r\nuntil the close"
    } else if path.starts_with("/t/nodate") {
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    } else {
        b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\nContent-Length: 5\r\nX-A: 1\r\nConnection: x-secret\r\nX-Secret: s\r\nCache-Control: no-store\r\n\r\nhello"
    }
}

/// A backend that records every request under `/t/` and answers `answer_for` it.
async fn recorder() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some((req, rest)) = read_request(&mut s, buf).await {
                    buf = rest;
                    let close = answer_for(&req.1)
                        .windows(17)
                        .any(|w| w == b"Connection: close");
                    if req.1.starts_with("/t/") {
                        log.lock().unwrap().push(req.clone());
                    }
                    let answer = answer_for(&req.1);
                    let answer = if req.0 == "HEAD" {
                        let end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        &answer[..end]
                    } else {
                        answer
                    };
                    if s.write_all(answer).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Reads one request from `s` (`buf`: bytes already read): None at the end.
async fn read_request(s: &mut TcpStream, mut buf: Vec<u8>) -> Option<(Seen, Vec<u8>)> {
    let (len, method, target, headers) = loop {
        let mut h = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Request::new(&mut h);
        if let Ok(httparse::Status::Complete(len)) = r.parse(&buf) {
            let mut headers: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value).into_owned();
                    (h.name.to_ascii_lowercase(), value)
                })
                .collect();
            headers.sort();
            break (len, r.method?.to_string(), r.path?.to_string(), headers);
        }
        read_some(s, &mut buf).await?;
    };
    buf.drain(..len);
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if header("transfer-encoding").is_some() {
        body = chunked(s, &mut buf).await?.0;
    } else if let Some(n) = header("content-length") {
        let n: usize = n.parse().ok()?;
        while buf.len() < n {
            read_some(s, &mut buf).await?;
        }
        body = buf.drain(..n).collect();
    }
    Some(((method, target, headers, body), buf))
}

/// A line (without its CRLF) from `buf`, reading more from `s` as needed.
async fn line(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buf.drain(..i + 2).collect();
            return Some(line[..i].to_vec());
        }
        read_some(s, buf).await?;
    }
}

/// A chunked body from `buf` and `s`: its payload and its trailers (names lower-cased,
/// sorted).
async fn chunked(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Vec<u8>, Vec<(String, String)>)> {
    let mut body = Vec::new();
    loop {
        let size = line(s, buf).await?;
        let size = usize::from_str_radix(std::str::from_utf8(&size).ok()?, 16).ok()?;
        if size == 0 {
            break;
        }
        while buf.len() < size + 2 {
            read_some(s, buf).await?;
        }
        body.extend(buf.drain(..size + 2).take(size));
    }
    let mut trailers = Vec::new();
    loop {
        let l = line(s, buf).await?;
        if l.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(&l).into_owned();
        let (n, v) = text.split_once(':')?;
        trailers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    trailers.sort();
    Some((body, trailers))
}

/// An answer as the client got it: status, headers (lower-cased, sorted, without
/// what only HTTP/1.1 has), body, trailers.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

fn comparable(mut headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers.retain(|(n, _)| {
        !matches!(
            n.as_str(),
            "connection" | "transfer-encoding" | "keep-alive"
        )
    });
    headers.sort();
    headers
}

/// One request over HTTP/1.1 on a connection of its own.
async fn over_h1(
    listen: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[&[u8]]>,
) -> Answer {
    let mut s = TcpStream::connect(listen).await.unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: app\r\n");
    let mut cookies = Vec::new();
    for (n, v) in headers {
        if *n == "cookie" {
            cookies.push(*v);
        } else {
            req += &format!("{n}: {v}\r\n");
        }
    }
    if !cookies.is_empty() {
        req += &format!("cookie: {}\r\n", cookies.join("; "));
    }
    let mut out = Vec::new();
    match body {
        Some([whole]) => {
            req += &format!("content-length: {}\r\n\r\n", whole.len());
            out.extend_from_slice(req.as_bytes());
            out.extend_from_slice(whole);
        }
        Some(parts) => {
            req += "transfer-encoding: chunked\r\n\r\n";
            out.extend_from_slice(req.as_bytes());
            for p in parts {
                out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
                out.extend_from_slice(p);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        None => {
            req += "\r\n";
            out.extend_from_slice(req.as_bytes());
        }
    }
    s.write_all(&out).await.unwrap();
    let mut buf = Vec::new();
    let (len, status, headers) = loop {
        let mut h = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut h);
        if let Ok(httparse::Status::Complete(len)) = r.parse(&buf) {
            let headers: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            break (len, r.code.unwrap(), headers);
        }
        read_some(&mut s, &mut buf).await.expect("an answer head");
    };
    buf.drain(..len);
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    if method == "HEAD" {
    } else if header("transfer-encoding").is_some() {
        (body, trailers) = chunked(&mut s, &mut buf).await.expect("a chunked body");
    } else if let Some(n) = header("content-length") {
        let n: usize = n.parse().unwrap();
        while buf.len() < n {
            read_some(&mut s, &mut buf).await.expect("the body");
        }
        body = buf[..n].to_vec();
    } else {
        while read_some(&mut s, &mut buf).await.is_some() {}
        body = buf;
    }
    Answer {
        status,
        headers: comparable(headers),
        body,
        trailers,
    }
}

async fn read_some(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 8192];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) => None,
        Ok(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(n)
        }
        Err(_) => panic!("no answer in 10 s"),
    }
}

/// An HTTP/2 connection by prior knowledge to `listen`, ready for a request.
async fn h2c_client(listen: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let s = TcpStream::connect(listen).await.unwrap();
    let (client, conn) = h2::client::handshake(s).await.unwrap();
    tokio::spawn(conn);
    client.ready().await.unwrap()
}

/// The same request over HTTP/2 (h2c, a connection of its own). A body in several
/// parts is sent as that many DATA frames without a length, then an empty DATA frame
/// with END_STREAM (as Go's client sends them).
async fn over_h2(
    listen: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[&[u8]]>,
) -> Answer {
    let mut client = h2c_client(listen).await;
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://app{target}"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    if let Some([whole]) = body {
        req = req.header("content-length", whole.len());
    }
    let (resp, mut send) = client
        .send_request(req.body(()).unwrap(), body.is_none())
        .unwrap();
    match body {
        Some([whole]) => send.send_data(Bytes::copy_from_slice(whole), true).unwrap(),
        Some(parts) => {
            for p in parts {
                send.send_data(Bytes::copy_from_slice(p), false).unwrap();
            }
            send.send_data(Bytes::new(), true).unwrap();
        }
        None => {}
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("an answer")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut recv = resp.into_body();
    let body = vigil_tests::tls::read_body(&mut recv).await.unwrap();
    let mut trailers: Vec<(String, String)> = recv
        .trailers()
        .await
        .unwrap()
        .map(|t| {
            t.iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    trailers.sort();
    Answer {
        status,
        headers: comparable(headers),
        body,
        trailers,
    }
}

/// A request sent both ways: method, target, headers, body (in parts; one part is sent
/// with a length, several as chunks or DATA frames without one).
type Case<'a> = (
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    Option<Vec<&'a [u8]>>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_over_http1_and_http2_is_the_same_request() {
    let (backend, seen) = recorder().await;
    let log = Vigil::temp_path("h2pipeline-access.log");
    let (listen, admin) = free_ports();
    let yaml = format!(
        "threads: 1\ngrace_period: 5s\nlisteners:\n  - address: {listen}\n    http2: true\nadmin:\n  address: {admin}\naccess_log:\n  format: json\n  path: {}\npools:\n  - name: web\n    backends:\n      - address: {backend}\n{FAST_CHECKS}",
        log.display()
    );
    let mut v = Vigil::start(&yaml, listen, admin);
    v.wait_ready().await;

    let big = vec![b'x'; 1024];
    let with_headers: &[(&str, &str)] = &[
        ("x-custom", "v"),
        ("cookie", "a=1"),
        ("cookie", "b=2"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-request-id", "r1"),
        ("user-agent", "both/1"),
    ];
    let cases: Vec<Case> = vec![
        ("GET", "/t/plain?q=1", with_headers, None),
        (
            "POST",
            "/t/plain",
            &[("content-type", "application/octet-stream")],
            Some(vec![&big[..]]),
        ),
        (
            "POST",
            "/t/chunked",
            &[("te", "trailers")],
            Some(vec![&b"part one "[..], b"part two"]),
        ),
        ("GET", "/t/nolength", &[], None),
        ("GET", "/t/nodate", &[], None),
        ("GET", "/t/a/../plain//x", &[], None),
        ("HEAD", "/t/plain", &[], None),
        ("GET", "/t/..%2F..%2Fetc", &[], None),
    ];
    for (method, target, headers, body) in &cases {
        let body = body.as_deref();
        let h1 = over_h1(listen, method, target, headers, body).await;
        let up1 = seen.lock().unwrap().pop();
        let h2 = over_h2(listen, method, target, headers, body).await;
        let up2 = seen.lock().unwrap().pop();
        let case = format!("{method} {target}");
        // An id vigil made up for the request is new each time.
        let made_up = |up: Option<Seen>| {
            up.map(|mut up| {
                up.2.retain(|(n, v)| n != "x-request-id" || v == "r1");
                up
            })
        };
        let (up1, up2) = (made_up(up1), made_up(up2));
        assert_eq!(up1, up2, "{case}: the backend saw different requests");
        // A date vigil adds is the current one: the same when both came within a second.
        let strip_date = |a: &Answer| {
            a.headers
                .iter()
                .filter(|(n, _)| n != "date")
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            strip_date(&h1),
            strip_date(&h2),
            "{case}: different answer heads"
        );
        assert!(
            h1.headers.iter().any(|(n, _)| n == "date"),
            "{case}: no Date: {h1:?}"
        );
        if !target.contains("nodate") && h1.status != 400 {
            assert_eq!(
                h1.headers, h2.headers,
                "{case}: the backend's Date not kept"
            );
        }
        assert_eq!(
            (h1.status, &h1.body, &h1.trailers),
            (h2.status, &h2.body, &h2.trailers),
            "{case}"
        );
        match *target {
            "/t/chunked" => {
                assert_eq!(
                    h2.trailers,
                    [
                        ("grpc-message".into(), "fine".into()),
                        ("grpc-status".into(), "0".into())
                    ]
                );
                let up = up1.expect("the backend saw it");
                assert_eq!(up.3, b"part one part two", "{case}: the body upstream");
                assert!(
                    up.2.contains(&("transfer-encoding".into(), "chunked".into())),
                    "{up:?}"
                );
            }
            "/t/plain?q=1" => {
                let up = up1.expect("the backend saw it");
                assert!(
                    up.2.contains(&("cookie".into(), "a=1; b=2".into())),
                    "{up:?}"
                );
                assert!(
                    up.2.contains(&("x-forwarded-for".into(), "10.0.0.1, 127.0.0.1".into())),
                    "{up:?}"
                );
                assert!(!h1.headers.iter().any(|(n, _)| n == "x-secret"), "{h1:?}");
            }
            "/t/a/../plain//x" => assert_eq!(up1.expect("seen").1, "/t/plain/x"),
            "/t/..%2F..%2Fetc" => {
                assert_eq!(h1.status, 400);
                assert!(up1.is_none(), "a refused request reached the backend");
            }
            "/t/nolength" => assert_eq!(h2.body, b"until the close"),
            _ => {}
        }
    }
    // The access lines come in pairs, HTTP/1.1 then HTTP/2, the same but for it.
    wait_for("every access line", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 2 * cases.len())
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for pair in lines.chunks(2) {
        let [mut a, mut b] = [pair[0].clone(), pair[1].clone()];
        assert_eq!(
            (a["protocol"].as_str(), b["protocol"].as_str()),
            (Some("HTTP/1.1"), Some("HTTP/2.0")),
            "{a} {b}"
        );
        for k in ["time", "client", "duration_ms", "protocol"] {
            a[k] = serde_json::Value::Null;
            b[k] = serde_json::Value::Null;
        }
        if a["request_id"] != "r1" {
            a["request_id"] = serde_json::Value::Null;
            b["request_id"] = serde_json::Value::Null;
        }
        assert_eq!(a, b, "the same request logged differently");
    }
}

/// A connection's streams are served on its worker thread: requests one after the
/// other over one HTTP/2 connection reuse one upstream connection (each worker thread
/// keeps its own idle ones). Pingora's HTTP/2 server spawned each stream on a random
/// worker thread: with two, about every other request found no idle connection on its
/// thread and the streams shared the codec across threads. vigil's own serves them in
/// the connection's task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_s_streams_stay_on_its_thread() {
    let b = vigil_tests::FakeBackend::start("b").await;
    let (listen, admin) = free_ports();
    let yaml = vigil_tests::config::config(
        listen,
        admin,
        "",
        &[vigil_tests::config::pool("web", &[(&b, 1)], FAST_CHECKS)],
    )
    .replacen("threads: 1", "threads: 2", 1)
    .replacen(
        &format!("  - address: {listen}\n"),
        &format!("  - address: {listen}\n    http2: true\n"),
        1,
    );
    let mut v = Vigil::start(&yaml, listen, admin);
    v.wait_ready().await;
    let mut client = h2c_client(listen).await;
    let before = b.stats.connections();
    for i in 0..100 {
        let req = http::Request::get(format!("http://app/x{i}"))
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        vigil_tests::tls::read_body(&mut resp.into_body())
            .await
            .unwrap();
        client = client.ready().await.unwrap();
    }
    assert_eq!(
        b.stats.connections() - before,
        1,
        "100 requests one after the other over one HTTP/2 connection opened more than one upstream connection"
    );
}

/// What the loop does not carry is refused on its stream, with the status an HTTP/1.1
/// client gets for the same head, and reaches no backend; the connection serves on: a
/// plain `CONNECT` (vigil is no forward proxy) `405`, more headers than
/// `limits.headers` `431`, a `host` contradicting `:authority` `400`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_loop_does_not_carry_is_refused_on_its_stream() {
    let (backend, seen) = recorder().await;
    let (listen, admin) = free_ports();
    let yaml = format!(
        "threads: 1\nlisteners:\n  - address: {listen}\n    http2: true\nadmin:\n  address: {admin}\nlimits:\n  headers: 20\npools:\n  - name: web\n    backends:\n      - address: {backend}\n{FAST_CHECKS}"
    );
    let mut v = Vigil::start(&yaml, listen, admin);
    v.wait_ready().await;
    let mut client = h2c_client(listen).await;
    let mut status = |req: http::Request<()>| {
        let (resp, _) = client.send_request(req, true).unwrap();
        async move {
            let resp = tokio::time::timeout(Duration::from_secs(10), resp)
                .await
                .expect("an answer")
                .unwrap();
            resp.status().as_u16()
        }
    };
    let connect = http::Request::builder()
        .method("CONNECT")
        .uri("app:443")
        .body(())
        .unwrap();
    assert_eq!(status(connect).await, 405);
    let mut many = http::Request::get("http://app/t/many");
    for i in 0..30 {
        many = many.header(format!("x-h{i}"), "v");
    }
    assert_eq!(status(many.body(()).unwrap()).await, 431);
    let two_hosts = http::Request::get("http://app/t/hosts")
        .header("host", "other")
        .body(())
        .unwrap();
    assert_eq!(status(two_hosts).await, 400);
    let same_host = http::Request::get("http://app/t/same")
        .header("host", "APP")
        .body(())
        .unwrap();
    assert_eq!(
        status(same_host).await,
        200,
        "a host that says what :authority says"
    );
    let fine = http::Request::get("http://app/t/fine").body(()).unwrap();
    assert_eq!(status(fine).await, 200);
    // (The recorder keeps the requests for `/t/…`.)
    let paths: Vec<String> = seen.lock().unwrap().iter().map(|s| s.1.clone()).collect();
    assert_eq!(
        paths,
        ["/t/same", "/t/fine"],
        "only the carried requests reached the backend"
    );
}
