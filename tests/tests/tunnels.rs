//! Protocol upgrades (WebSocket) through vigil with raw sockets (issue #7): both
//! directions, tunnels as load for `least_requests`, idle tunnels closing, and tunnels
//! drained on SIGTERM.

use std::time::Duration;
use vigil_tests::config::{config, pool, FAST_CHECKS};
use vigil_tests::raw::RawConn;
use vigil_tests::{free_ports, get, start_vigil, traffic, wait_for, FakeBackend, Vigil};

const UPGRADE: &str = "GET /chat HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A masked WebSocket text frame from the client (RFC 6455 §5.2), as a browser sends it.
fn client_frame(text: &str) -> Vec<u8> {
    let key = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&key);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_tunnels_both_ways() {
    let a = FakeBackend::start("a").await;
    let v = start_vigil("", &[pool("web", &[(&a, 1)], FAST_CHECKS)]).await;
    let mut c = RawConn::connect(v.listen).await;
    c.send(UPGRADE.as_bytes()).await.unwrap();
    let head = c.head().await.unwrap();
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(head.header("upgrade"), Some("websocket"));
    assert!(head
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
    let seen = a.stats.last_request.lock().unwrap().clone().unwrap();
    assert_eq!(seen.header("upgrade"), Some("websocket"), "{seen:?}");
    for text in ["hello", "and again, after the first"] {
        let frame = client_frame(text);
        c.send(&frame).await.unwrap();
        assert_eq!(c.bytes(frame.len()).await.unwrap(), frame);
    }
    // Closing the client's side closes the backend's side of the tunnel.
    let open = a.stats.open();
    drop(c);
    wait_for(
        "the backend's tunnel end closed",
        Duration::from_secs(5),
        || a.stats.open() < open,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_is_load_for_least_requests() {
    let (a, b) = (FakeBackend::start("a").await, FakeBackend::start("b").await);
    let extra = format!("    balance: least_requests\n{FAST_CHECKS}");
    let v = start_vigil("", &[pool("web", &[(&a, 1), (&b, 1)], &extra)]).await;
    let mut c = RawConn::connect(v.listen).await;
    c.send(UPGRADE.as_bytes()).await.unwrap();
    let head = c.head().await.unwrap();
    assert_eq!(head.status, 101);
    let (tunnel, other) = match head.header("x-backend") {
        Some("a") => (&a, &b),
        _ => (&b, &a),
    };
    let before = traffic(tunnel);
    for _ in 0..20 {
        let r = get(v.listen, "app", "/").await.unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        traffic(tunnel),
        before,
        "requests went to the backend holding the tunnel"
    );
    assert_eq!(traffic(other), 20);
    // Closed, it is no longer load: requests reach that backend again.
    drop(c);
    let listen = v.listen;
    vigil_tests::wait_for_async(
        "traffic to the tunnel's backend again",
        Duration::from_secs(10),
        || async move {
            let _ = get(listen, "app", "/").await;
            traffic(tunnel) > before
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnel_closes_after_read_timeout_and_a_busy_one_stays() {
    let a = FakeBackend::start("a").await;
    let extra = format!("    read_timeout: 1s\n{FAST_CHECKS}");
    let v = start_vigil("", &[pool("web", &[(&a, 1)], &extra)]).await;

    let mut busy = RawConn::connect(v.listen).await;
    busy.send(UPGRADE.as_bytes()).await.unwrap();
    assert_eq!(busy.head().await.unwrap().status, 101);
    let mut idle = RawConn::connect(v.listen).await;
    idle.send(UPGRADE.as_bytes()).await.unwrap();
    assert_eq!(idle.head().await.unwrap().status, 101);
    // Traffic every 300 ms for 2 s keeps one tunnel open past its 1 s read timeout.
    for i in 0..7 {
        let frame = client_frame(&format!("tick {i}"));
        busy.send(&frame).await.unwrap();
        assert_eq!(busy.bytes(frame.len()).await.unwrap(), frame);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        idle.closed_within(Duration::from_secs(5)).await,
        "an idle tunnel outlived read_timeout"
    );
    let frame = client_frame("still here");
    busy.send(&frame).await.unwrap();
    assert_eq!(busy.bytes(frame.len()).await.unwrap(), frame);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tunnel_drains_on_sigterm_then_vigil_exits() {
    let a = FakeBackend::start("a").await;
    let (listen, admin) = free_ports();
    let cfg = config(listen, admin, "", &[pool("web", &[(&a, 1)], FAST_CHECKS)])
        .replace("grace_period: 5s", "grace_period: 30s");
    let mut v = Vigil::start(&cfg, listen, admin);
    v.wait_ready().await;
    let mut c = RawConn::connect(listen).await;
    c.send(UPGRADE.as_bytes()).await.unwrap();
    assert_eq!(c.head().await.unwrap().status, 101);

    v.signal(libc::SIGTERM);
    v.wait_log(&["draining"]).await;
    // The tunnel is in flight: it keeps working while vigil drains...
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frame = client_frame("during drain");
    c.send(&frame).await.unwrap();
    assert_eq!(c.bytes(frame.len()).await.unwrap(), frame);
    assert!(v.wait_exit(Duration::from_millis(100)).await.is_none());
    // ...and once the client closes it, vigil exits long before the grace period ends.
    drop(c);
    let status = v
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("vigil did not exit once the tunnel closed");
    assert!(status.success());
}

/// Found by the chaos soak (issue #28): a tunnel is answered (101), not a request
/// waiting for its answer. A quiet one, while the pool's other backend answers, made
/// the stall watcher call its backend suspect and cut it after a few hundred ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_tunnel_is_no_stuck_request() {
    let (a, b) = (FakeBackend::start("a").await, FakeBackend::start("b").await);
    let extra = format!("    balance: least_requests\n{FAST_CHECKS}");
    let v = start_vigil("", &[pool("web", &[(&a, 1), (&b, 1)], &extra)]).await;
    let mut c = RawConn::connect(v.listen).await;
    c.send(UPGRADE.as_bytes()).await.unwrap();
    assert_eq!(c.head().await.unwrap().status, 101);
    // Well past the stall threshold (at least 50 ms), with the other backend answering.
    for _ in 0..40 {
        assert_eq!(get(v.listen, "app", "/").await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let frame = client_frame("still there");
    c.send(&frame).await.unwrap();
    assert_eq!(c.bytes(frame.len()).await.unwrap(), frame);
    assert!(
        !v.logs().iter().any(|l| l.contains("backend is suspect")),
        "{:#?}",
        v.logs()
    );
}

/// WebSockets over HTTP/2 (RFC 8441; issue #26 item 5): vigil offers extended CONNECT,
/// carries it to the HTTP/1.1 backend as the upgrade it stands for (`GET`, `Upgrade:
/// websocket`, a key of its own), answers `200` once the backend switches, and tunnels
/// the frames both ways as the stream's DATA; the client ending its side ends the
/// tunnel and the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_is_an_upgrade_to_an_http1_backend() {
    let a = FakeBackend::start("a").await;
    let v = vigil_tests::start_h2c_vigil(&[pool("web", &[(&a, 1)], FAST_CHECKS)]).await;
    let tcp = tokio::net::TcpStream::connect(v.listen).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    // Known once vigil's SETTINGS have come.
    let started = tokio::time::Instant::now();
    while !client.is_extended_connect_protocol_enabled() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "vigil offers extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL)"
        );
        client = client.ready().await.unwrap();
        tokio::task::yield_now().await;
    }
    let mut req = http::Request::builder()
        .method("CONNECT")
        .uri("http://app/chat")
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let (resp, mut send) = client.send_request(req, false).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200, "{resp:?}");
    assert!(resp.headers().get("sec-websocket-accept").is_none());
    assert!(resp.headers().get("upgrade").is_none());
    let seen = a.stats.last_request.lock().unwrap().clone().unwrap();
    assert_eq!(seen.method, "GET", "{seen:?}");
    assert_eq!(seen.header("upgrade"), Some("websocket"), "{seen:?}");
    assert_eq!(seen.header("sec-websocket-version"), Some("13"));
    assert_eq!(
        seen.header("sec-websocket-key").map(str::len),
        Some(24),
        "a key of 16 bytes in base64: {seen:?}"
    );
    let mut body = resp.into_body();
    for text in ["hello", "and again, after the first"] {
        let frame = client_frame(text);
        send.send_data(frame.clone().into(), false).unwrap();
        let mut got = Vec::new();
        while got.len() < frame.len() {
            let data = tokio::time::timeout(Duration::from_secs(5), body.data())
                .await
                .expect("the echo within 5 s")
                .expect("the stream open")
                .unwrap();
            let _ = body.flow_control().release_capacity(data.len());
            got.extend_from_slice(&data);
        }
        assert_eq!(got, frame);
    }
    send.send_data(bytes::Bytes::new(), true).unwrap();
    // END_STREAM, maybe on an empty DATA frame, and nothing more.
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut rest = Vec::new();
        while let Some(data) = body.data().await {
            rest.extend_from_slice(&data.unwrap());
        }
        rest
    })
    .await;
    assert_eq!(
        rest.ok(),
        Some(Vec::new()),
        "the stream ends with the tunnel"
    );
}
