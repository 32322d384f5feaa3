//! A gRPC backend over TLS + HTTP/2 (the `h2` crate, no generated code): the standard
//! health service, answering SERVING or NOT_SERVING as the test says, and any other
//! method echoing its request message back with trailers.

use crate::certs::Leaf;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const SERVING: u64 = 1;
pub const NOT_SERVING: u64 = 2;

#[derive(Default)]
pub struct GrpcStats {
    pub connections: AtomicU64,
    pub health_checks: AtomicU64,
    pub calls: AtomicU64,
    /// Every call but the health checks, as it arrived.
    pub seen: std::sync::Mutex<Vec<Seen>>,
}

/// A call's head as the backend saw it: `:authority`, `:path`, and its fields in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub authority: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

pub struct GrpcBackend {
    pub addr: SocketAddr,
    /// HealthCheckResponse.status it answers.
    pub status: Arc<AtomicU64>,
    pub stats: Arc<GrpcStats>,
    /// While true, every stream (health checks too) is accepted and never answered:
    /// a frozen backend whose HTTP/2 connection still stands.
    pub hang: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A gRPC message frame around `msg`.
pub fn frame(msg: &[u8]) -> Bytes {
    let mut out = vec![0u8];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out.into()
}

impl GrpcBackend {
    pub async fn start(leaf: &Leaf) -> GrpcBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor =
            tokio_rustls::TlsAcceptor::from(crate::tls::server_config_alpn(leaf, &["h2"]));
        let status = Arc::new(AtomicU64::new(SERVING));
        let stats = Arc::new(GrpcStats::default());
        let hang = Arc::new(AtomicBool::new(false));
        let (stop, mut stopped) = watch::channel(false);
        let (st, sx, hg) = (status.clone(), stats.clone(), hang.clone());
        tokio::spawn(async move {
            loop {
                let sock = tokio::select! {
                    a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
                    _ = stopped.changed() => return,
                };
                let (acceptor, st, sx, hg) = (acceptor.clone(), st.clone(), sx.clone(), hg.clone());
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let Ok(mut conn) = h2::server::handshake(tls).await else {
                        return;
                    };
                    sx.connections.fetch_add(1, Ordering::SeqCst);
                    while let Some(Ok((req, respond))) = conn.accept().await {
                        if hg.load(Ordering::SeqCst) {
                            // Hold the stream until the test ends.
                            let mut stopped = stopped.clone();
                            tokio::spawn(async move {
                                let _held = (req, respond);
                                let _ = stopped.changed().await;
                            });
                            continue;
                        }
                        tokio::spawn(answer(req, respond, st.clone(), sx.clone()));
                    }
                });
            }
        });
        GrpcBackend {
            addr,
            status,
            stats,
            hang,
            stop,
        }
    }
}

async fn answer(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    status: Arc<AtomicU64>,
    stats: Arc<GrpcStats>,
) {
    let health = req.uri().path() == "/grpc.health.v1.Health/Check";
    // `/echo.Echo/Reset` resets its stream 100 ms after the answer's first bytes (a
    // reset at once would take them back, unsent);
    // `/echo.Echo/Report` reports its load in a trailer (cpu_utilization 0.3).
    let reset = req.uri().path() == "/echo.Echo/Reset";
    let report = req.uri().path() == "/echo.Echo/Report";
    if !health {
        let seen = Seen {
            authority: req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            path: req.uri().path().to_string(),
            headers: req
                .headers()
                .iter()
                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect(),
        };
        stats.seen.lock().unwrap().push(seen);
    }
    let mut body = req.into_body();
    let mut got = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    let reply = if health {
        stats.health_checks.fetch_add(1, Ordering::SeqCst);
        frame(&[0x08, status.load(Ordering::SeqCst) as u8])
    } else {
        stats.calls.fetch_add(1, Ordering::SeqCst);
        Bytes::from(got)
    };
    let resp = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let Ok(mut send) = respond.send_response(resp, false) else {
        return;
    };
    // No empty DATA frames: the h2 crate counts them as abuse and drops the connection.
    if !reply.is_empty() && send.send_data(reply, false).is_err() {
        return;
    }
    if reset {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        send.send_reset(h2::Reason::INTERNAL_ERROR);
        return;
    }
    let mut trailers = http::HeaderMap::new();
    if report {
        let load = "TEXT cpu_utilization=0.3".parse().unwrap();
        trailers.insert("endpoint-load-metrics", load);
    }
    trailers.insert("grpc-status", "0".parse().unwrap());
    trailers.insert("grpc-message", "ok".parse().unwrap());
    trailers.insert("x-trailer", "intact".parse().unwrap());
    let _ = send.send_trailers(trailers);
}

/// One unary call on `s` (an HTTP/2 connection to vigil): the answer's status, body
/// and trailers.
pub async fn call<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>(
    s: S,
    authority: &str,
    path: &str,
    msg: &[u8],
) -> Result<(u16, Vec<u8>, http::HeaderMap), h2::Error> {
    let (client, conn) = h2::client::handshake(s).await?;
    tokio::spawn(conn);
    let mut client = client.ready().await?;
    let req = http::Request::post(format!("https://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut send) = client.send_request(req, false)?;
    send.send_data(frame(msg), true)?;
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let out = crate::tls::read_body(&mut body).await?;
    let trailers = body.trailers().await?.unwrap_or_default();
    Ok((status, out, trailers))
}
