//! vigil's own request loop (`proxy/src/fast.rs`) copies answers as they come from a
//! backend: every way an HTTP/1.1 answer can be framed (a length, chunked with
//! trailers, to the end of the connection, none at all) must reach the client whole,
//! without the backend's hop-by-hop headers, and leave both connections in step. The
//! backend here is a script on a real socket, so that it can answer in ways the test
//! backend never does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vigil_tests::config::FAST_CHECKS;
use vigil_tests::raw::RawConn;
use vigil_tests::start_vigil;

const BIG: usize = 1 << 20;
/// More than the sockets between the backend and a client that reads nothing can hold.
const HUGE: usize = 64 << 20;

/// A backend that answers each path its own way; health checks and unknown paths get
/// a short 200. Counts the connections that carried proxied requests (not checks).
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
}

impl Scripted {
    async fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, count.clone()));
            }
        });
        Scripted { addr, connections }
    }

    fn pool(&self) -> String {
        format!(
            "  - name: web\n    backends:\n      - address: {}\n{FAST_CHECKS}",
            self.addr
        )
    }
}

/// Writes `parts` one write each, so that vigil reads them in pieces.
async fn write_parts(sock: &mut TcpStream, parts: &[&[u8]]) -> std::io::Result<()> {
    for p in parts {
        sock.write_all(p).await?;
        sock.flush().await?;
    }
    Ok(())
}

async fn serve(mut sock: TcpStream, proxied: Arc<AtomicU64>) {
    let mut buf = Vec::new();
    let mut counted = false;
    // `/stale-next` was answered: the next request on this connection finds it closed.
    let mut close_next = false;
    loop {
        let (head, path, len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let head = req.method == Some("HEAD");
                break (head, req.path.unwrap_or("").to_string(), n);
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..len);
        if std::mem::take(&mut close_next) {
            // The keep-alive race: an idle connection closed as a request arrives.
            return;
        }
        close_next = path == "/stale-next";
        if path != "/health" && !std::mem::replace(&mut counted, true) {
            proxied.fetch_add(1, Ordering::Relaxed);
        }
        let ok = match path.as_str() {
            "/chunked" => write_parts(
                &mut sock,
                &[
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                    b"5\r\nhello\r\n",
                    b"6;ext=1\r\n, worl\r\n1\r",
                    b"\nd\r\n0\r\nx-trailer: t\r\n\r\n",
                ],
            )
            .await,
            "/hop" => write_parts(
                &mut sock,
                &[b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\nUpgrade: h2c\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\nContent-Length: 3\r\n\r\nhop"],
            )
            .await,
            "/named" => write_parts(
                &mut sock,
                &[b"HTTP/1.1 200 OK\r\nConnection: x-secret, keep-alive\r\nX-Secret: 1\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok"],
            )
            .await,
            "/ws-reset" => {
                // A tunnel the backend ends with a reset.
                let _ = write_parts(
                    &mut sock,
                    &[b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nhi"],
                )
                .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = sock.set_zero_linger();
                return;
            }
            "/reset-lengthless" => {
                // An answer delimited by the close that the backend ends with a reset
                // instead: cut short.
                let _ = write_parts(&mut sock, &[b"HTTP/1.1 200 OK\r\n\r\npartial"]).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = sock.set_zero_linger();
                return;
            }
            "/informational" => write_parts(
                &mut sock,
                &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"],
            )
            .await,
            "/not-modified" => write_parts(
                &mut sock,
                &[b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"],
            )
            .await,
            "/huge" => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {HUGE}\r\n\r\n");
                let mut ok = write_parts(&mut sock, &[head.as_bytes()]).await;
                let chunk = vec![b'h'; 1 << 16];
                for _ in 0..HUGE / chunk.len() {
                    if ok.is_ok() {
                        ok = sock.write_all(&chunk).await;
                    }
                }
                ok
            }
            "/big" => {
                let body = if head { Vec::new() } else { vec![b'x'; BIG] };
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
                write_parts(&mut sock, &[head.as_bytes(), &body]).await
            }
            "/until-close" => {
                let _ = write_parts(
                    &mut sock,
                    &[b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of ", b"it"],
                )
                .await;
                return;
            }
            "/garbage" => {
                let _ = write_parts(&mut sock, &[b"HTTP/1.1 two hundred\r\n\r\n"]).await;
                return;
            }
            "/cut" => {
                let _ = write_parts(&mut sock, &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"]).await;
                return;
            }
            _ => write_parts(&mut sock, &[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]).await,
        };
        if ok.is_err() {
            return;
        }
    }
}

/// vigil's own request loop, and Pingora's proxy for every request.
const ON_BOTH_PATHS: [&str; 2] = ["request loop", "VIGIL_FAST_PATH=off"];

/// vigil in front of `b` with `path` one of [`ON_BOTH_PATHS`]; `top` is more top-level
/// YAML.
async fn on_path(b: &Scripted, path: &str, top: &str) -> vigil_tests::Vigil {
    let env: &[(&str, &str)] = match path {
        "VIGIL_FAST_PATH=off" => &[("VIGIL_FAST_PATH", "off")],
        _ => &[],
    };
    let (listen, admin) = vigil_tests::free_ports();
    let cfg = vigil_tests::config::config(listen, admin, top, &[b.pool()]);
    let mut v = vigil_tests::Vigil::start_with_env(&cfg, listen, admin, env);
    v.wait_ready().await;
    v
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_reaches_the_client_whole_on_one_connection() {
    let b = Scripted::start().await;
    let v = start_vigil("", &[b.pool()]).await;
    let mut c = RawConn::connect(v.listen).await;

    c.send(&get("/chunked")).await.unwrap();
    let r = c.response().await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "hello, world"), "{r:?}");
    assert_eq!(
        c.buffered(),
        0,
        "nothing follows the last chunk and trailers"
    );

    c.send(&get("/hop")).await.unwrap();
    let r = c.response().await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "hop"));
    assert_eq!(r.header("x-kept"), Some("yes"));
    for h in ["keep-alive", "upgrade", "proxy-connection"] {
        assert_eq!(r.header(h), None, "{h} is hop-by-hop: {r:?}");
    }
    assert_eq!(r.header("connection"), Some("keep-alive"));

    // Informational answers before the final one are not passed on.
    c.send(&get("/informational")).await.unwrap();
    let r = c.response().await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "final"), "{r:?}");

    // 304 and HEAD answers carry a length and no body.
    c.send(&get("/not-modified")).await.unwrap();
    let r = c.head().await.unwrap();
    assert_eq!((r.status, r.header("content-length")), (304, Some("99")));
    c.send(b"HEAD /big HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let r = c.head().await.unwrap();
    let big = BIG.to_string();
    assert_eq!(
        (r.status, r.header("content-length")),
        (200, Some(big.as_str()))
    );

    // A body larger than any buffer, then a short answer right behind it.
    c.send(&get("/big")).await.unwrap();
    let r = c.response().await.unwrap();
    assert_eq!(r.body.len(), BIG);
    assert!(r.body.bytes().all(|b| b == b'x'));
    c.send(&get("/after")).await.unwrap();
    assert_eq!(c.response().await.unwrap().body, "ok");

    // All of that on one backend connection: each answer ended where its framing said.
    let used = b.connections.load(Ordering::Relaxed);
    assert_eq!(used, 1, "backend connections for framed answers");

    // An answer that ends with its connection ends the client's too, told so.
    c.send(&get("/until-close")).await.unwrap();
    let r = c.head().await.unwrap();
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert_eq!(c.bytes(9).await.unwrap(), b"all of it");
    assert!(c.closed_within(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_answers_are_502_or_a_closed_connection() {
    let b = Scripted::start().await;
    let v = start_vigil("", &[b.pool()]).await;

    let mut c = RawConn::connect(v.listen).await;
    c.send(&get("/garbage")).await.unwrap();
    let r = c.response().await.unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert!(c.closed_within(Duration::from_secs(5)).await);

    // Cut mid-body: the client has the head already, and sees the connection close
    // before the length it was promised.
    let mut c = RawConn::connect(v.listen).await;
    c.send(&get("/cut")).await.unwrap();
    let r = c.head().await.unwrap();
    assert_eq!((r.status, r.header("content-length")), (200, Some("10")));
    assert_eq!(c.bytes(4).await.unwrap(), b"half");
    assert!(c.closed_within(Duration::from_secs(5)).await);

    // Issue #25: a 101 to a request that asked for no upgrade is a broken answer, not a
    // tunnel (the two HTTP/1 paths differed: 502 on the loop, a tunnel on Pingora's).
    let mut c = RawConn::connect(v.listen).await;
    c.send(&get("/ws-reset")).await.unwrap();
    let r = c.response().await.unwrap();
    assert_eq!(r.status, 502, "{r:?}");

    // vigil still serves.
    let mut c = RawConn::connect(v.listen).await;
    c.send(&get("/fine")).await.unwrap();
    assert_eq!(c.response().await.unwrap().body, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_drop_what_connection_names_and_end_tunnels_quietly() {
    let b = Scripted::start().await;
    for top in ON_BOTH_PATHS {
        let v = on_path(&b, top, "").await;
        let mut c = RawConn::connect(v.listen).await;
        c.send(&get("/named")).await.unwrap();
        let r = c.response().await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{top}: {r:?}");
        assert_eq!(r.header("x-kept"), Some("yes"));
        assert_eq!(
            r.header("x-secret"),
            None,
            "{top}: named by Connection: {r:?}"
        );

        // Issue #25: an HTTP/1.0 client gets a chunked answer's body as it is, ended by
        // the close of its connection (RFC 9112 §6.1).
        let mut c = RawConn::connect(v.listen).await;
        c.send(b"GET /chunked HTTP/1.0\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        let r = c.head().await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("transfer-encoding"), None, "{top}: {r:?}");
        assert_eq!(c.bytes(12).await.unwrap(), b"hello, world");
        assert!(c.closed_within(Duration::from_secs(5)).await);

        // Issue #25: a tunnel's end is no error, reset or not.
        let mut c = RawConn::connect(v.listen).await;
        c.send(b"GET /ws-reset HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(c.head().await.unwrap().status, 101);
        assert_eq!(c.bytes(2).await.unwrap(), b"hi");
        assert!(c.closed_within(Duration::from_secs(5)).await);
        // One more request after it, so that a line about the tunnel is written by now.
        let mut c = RawConn::connect(v.listen).await;
        c.send(&get("/after")).await.unwrap();
        assert_eq!(c.response().await.unwrap().body, "ok");
        let errors: Vec<String> = v
            .logs()
            .into_iter()
            .filter(|l| l.contains("ERROR") || l.contains("Fail to proxy"))
            .collect();
        assert!(errors.is_empty(), "{top}: {errors:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_closed_as_the_request_arrives_is_resent_on_a_new_one() {
    // Issue #25: the backend closes its idle keep-alive connection just as the next
    // request arrives. The only backend of its pool answers on a new connection.
    let b = Scripted::start().await;
    for top in ON_BOTH_PATHS {
        let v = on_path(&b, top, "").await;
        let mut c = RawConn::connect(v.listen).await;
        for _ in 0..3 {
            c.send(&get("/stale-next")).await.unwrap();
            assert_eq!(c.response().await.unwrap().body, "ok");
            c.send(&get("/after")).await.unwrap();
            let r = c.response().await.unwrap();
            assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{top}: {r:?}");
        }
        let detail = v.admin_get("/health/detailed").await.json();
        let backend = &detail["pools"]["web"]["backends"][0];
        assert_eq!(backend["state"], "up", "{top}: {backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_answer_is_cut() {
    // Issue #25, limits.client_write_timeout: a client that asks for a large answer and
    // does not read it is cut within the timeout of the write that blocks.
    let b = Scripted::start().await;
    for path in ON_BOTH_PATHS {
        let v = on_path(&b, path, "limits:\n  client_write_timeout: 300ms\n").await;
        let mut c = RawConn::connect(v.listen).await;
        c.send(&get("/huge")).await.unwrap();
        // A client that reads nothing for a while (well past the timeout)...
        tokio::time::sleep(Duration::from_secs(2)).await;
        // ...then finds its answer cut short: what was buffered, then the end.
        let mut got = 0usize;
        let mut chunk = vec![0u8; 1 << 16];
        let read_all = async {
            loop {
                match c.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read_all)
            .await
            .unwrap_or_else(|_| panic!("{path}: the stalled client was never cut"));
        assert!(got < HUGE, "{path}: the whole answer arrived ({got} bytes)");
        if path == ON_BOTH_PATHS[0] {
            let series = format!(
                "vigil_client_timeouts_total{{kind=\"write\",listener=\"{}\"}}",
                v.listen
            );
            v.wait_metric(&series, 1.0).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lengthless_answer_cut_by_a_reset_reaches_the_client_as_a_reset() {
    // Issue #25: an answer delimited by the close of its connection cannot tell the
    // client that it was cut short, except by how the connection ends: a backend's
    // reset is passed on as a reset, never as a clean close that looks complete.
    let b = Scripted::start().await;
    let v = start_vigil("", &[b.pool()]).await;
    let mut c = RawConn::connect(v.listen).await;
    c.send(&get("/reset-lengthless")).await.unwrap();
    let r = c.head().await.unwrap();
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert_eq!(c.bytes(7).await.unwrap(), b"partial");
    let mut rest = [0u8; 64];
    let end = tokio::time::timeout(Duration::from_secs(5), c.stream.read(&mut rest))
        .await
        .expect("the connection neither closed nor reset");
    assert!(
        matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the cut answer ended as {end:?}, not as a reset"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_while_its_client_still_sends_ends_with_a_close_not_a_reset() {
    // Issue #25 (RFC 9112 §9.6): a `Connection: close` request followed by more bytes
    // than the loop reads ahead. Closing with them unread in the socket makes the kernel
    // send a reset, which can take the answer from a client that has not read it yet;
    // vigil closes its side first and reads what still comes, so the client reads the
    // whole answer and then the end of the connection.
    let b = Scripted::start().await;
    let v = start_vigil("", &[b.pool()]).await;
    let sock = TcpStream::connect(v.listen).await.unwrap();
    let (mut rx, mut tx) = sock.into_split();
    let writer = tokio::spawn(async move {
        tx.write_all(b"GET /close HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            .await?;
        tx.write_all(&vec![b'x'; 256 * 1024]).await?;
        // Held open: only vigil's side ends the connection.
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(tx);
        std::io::Result::Ok(())
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the connection did not end");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("ok"), "the whole answer: {text}");
    assert!(
        end.is_ok(),
        "the connection ended with {end:?}, not a close"
    );
    writer.abort();
}
