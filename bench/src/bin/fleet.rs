//! `fleet --count N --out FILE [--flap SECS] [--delay-ms MS] [--bind ADDR]`: N HTTP/1.1
//! backends on loopback (ports from 127.0.0.1:0, or the first on ADDR: a backend brought
//! back on its port), their addresses written to FILE one per line. Health
//! paths answer `200 ok`; anything else answers the backend's name. With `--flap`,
//! the first backend fails (503 everywhere) every other SECS seconds. A request with
//! `Upgrade: websocket` is switched (101), then every byte is echoed.
//! Every second FILE.stats gets `connections REQUESTS requests N`.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count: usize = arg(&args, "--count")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let out = arg(&args, "--out").unwrap_or_else(|| "fleet.txt".into());
    let flap: Option<u64> = arg(&args, "--flap").and_then(|v| v.parse().ok());
    // Every answer but health checks waits this long (a slow backend).
    let delay_ms: u64 = arg(&args, "--delay-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let threads: usize = arg(&args, "--threads")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let bind: Option<std::net::SocketAddr> = arg(&args, "--bind").and_then(|v| v.parse().ok());
    vigil_bench::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let counters = Arc::new(Counters::default());
        let born = Instant::now();
        let mut lines = String::new();
        for i in 0..count {
            let at = bind
                .filter(|_| i == 0)
                .unwrap_or_else(|| ([127, 0, 0, 1], 0).into());
            let listener = TcpListener::bind(at).await.expect("bind");
            lines += &format!("{}\n", listener.local_addr().unwrap());
            let c = counters.clone();
            let flapping = flap.filter(|_| i == 0);
            tokio::spawn(async move {
                while let Ok((mut sock, _)) = listener.accept().await {
                    c.connections.fetch_add(1, Ordering::Relaxed);
                    let c = c.clone();
                    tokio::spawn(async move {
                        let _ = sock.set_nodelay(true);
                        let mut buf = vec![0u8; 4096];
                        let mut have = 0;
                        loop {
                            let Ok(n) = sock.read(&mut buf[have..]).await else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            have += n;
                            while let Some(end) =
                                buf[..have].windows(4).position(|w| w == b"\r\n\r\n")
                            {
                                // A request body (Content-Length) is read and dropped.
                                let len = body_length(&buf[..end]);
                                if have < end + 4 + len {
                                    if buf.len() < end + 4 + len {
                                        buf.resize(end + 4 + len, 0);
                                    }
                                    break;
                                }
                                let end = end + len;
                                c.requests.fetch_add(1, Ordering::Relaxed);
                                if is_websocket(&buf[..end]) {
                                    // A WebSocket: switched, then every byte echoed.
                                    let switched = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
                                    if sock.write_all(switched).await.is_err() {
                                        return;
                                    }
                                    let rest = buf[end + 4..have].to_vec();
                                    if sock.write_all(&rest).await.is_err() {
                                        return;
                                    }
                                    loop {
                                        match sock.read(&mut buf).await {
                                            Ok(0) | Err(_) => return,
                                            Ok(n) => {
                                                if sock.write_all(&buf[..n]).await.is_err() {
                                                    return;
                                                }
                                            }
                                        }
                                    }
                                }
                                let failing = flapping
                                    .is_some_and(|s| (born.elapsed().as_secs() / s) % 2 == 1);
                                let health = buf.starts_with(b"GET /health");
                                if delay_ms > 0 && !health {
                                    tokio::time::sleep(std::time::Duration::from_millis(delay_ms))
                                        .await;
                                }
                                let body: &[u8] = if failing {
                                    b"failing"
                                } else if health {
                                    b"ok"
                                } else {
                                    b"hello from the fleet\n"
                                };
                                let status = if failing {
                                    "503 Service Unavailable"
                                } else {
                                    "200 OK"
                                };
                                let resp = format!(
                                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n",
                                    body.len()
                                );
                                let mut r = resp.into_bytes();
                                r.extend_from_slice(body);
                                if sock.write_all(&r).await.is_err() {
                                    return;
                                }
                                buf.copy_within(end + 4..have, 0);
                                have -= end + 4;
                            }
                            if have == buf.len() {
                                return;
                            }
                        }
                    });
                }
            });
        }
        std::fs::write(&out, lines).expect("write addresses");
        let stats = format!("{out}.stats");
        loop {
            let s = format!(
                "connections {} requests {}\n",
                counters.connections.load(Ordering::Relaxed),
                counters.requests.load(Ordering::Relaxed)
            );
            let _ = std::fs::write(&stats, s);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// A request head asking for a WebSocket (`Upgrade: websocket`).
fn is_websocket(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').any(|line| {
        std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.split_once(':'))
            .is_some_and(|(n, v)| {
                n.trim().eq_ignore_ascii_case("upgrade")
                    && v.trim().eq_ignore_ascii_case("websocket")
            })
    })
}

/// The `Content-Length` of a request head (0 without one).
fn body_length(head: &[u8]) -> usize {
    head.split(|&b| b == b'\n')
        .filter_map(|line| {
            let line = std::str::from_utf8(line).ok()?;
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .next()
        .unwrap_or(0)
}
