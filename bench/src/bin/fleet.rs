//! `fleet --count N --out FILE [--flap SECS] [--delay-ms MS] [--bind ADDR]
//! [--limit N --service-ms MS] [--fail-ratio R [--fail-seed S]] [--report-load]`: N HTTP/1.1
//! backends on loopback (ports from 127.0.0.1:0, or the first on ADDR: a backend brought
//! back on its port), their addresses written to FILE one per line. Health
//! paths (`GET /health…`) answer `200 ok` at once, whatever the options below;
//! anything else answers the backend's name. With `--flap`,
//! the first backend fails (503 everywhere, health too) every other SECS seconds. A request with
//! `Upgrade: websocket` is switched (101), then every byte is echoed.
//!
//! An overloadable backend: with `--service-ms MS` each request takes MS ms (a sleep);
//! with `--limit N` as well, each backend serves at most N at once and a request above
//! that waits inside the backend (FIFO, as in a thread pool's queue) until one finishes.
//! `--fail-ratio R`: a share R of the requests answer `500` (counted per backend:
//! 0.5 is every other request; with `--fail-seed S`, each fails with probability R
//! from a seeded generator instead). `--report-load`: every answer carries
//! `endpoint-load-metrics: TEXT application_utilization=U, cpu_utilization=C,
//! rps_fractional=Q, eps=E` (ORCA's text form): U the requests held on average over the
//! last second over the limit (1 without `--limit`), above 1 when requests wait inside;
//! C the same clamped to 0..1; Q the answers of the last second, E the 5xx among them
//! (from 100 ms ticks).
//!
//! Every second FILE.stats is replaced (written aside, then renamed) by a line of totals,
//! `connections C requests R app_requests A failed F peak_held H peak_served S`, then a
//! line per backend, `backend ADDR connections C requests R app_requests A failed F
//! peak_held H peak_served S`: `requests` counts every request, health checks too;
//! `app_requests` the others; `failed` the 5xx answers; `peak_held` the most requests
//! held at once (served and waiting inside), `peak_served` the most served at once (the
//! totals line has the largest of the backends').

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// One backend's counters, read by the stats writer and the load reports.
#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    app_requests: AtomicU64,
    /// 5xx answers.
    failed: AtomicU64,
    /// Non-health answers written.
    answered: AtomicU64,
    held: AtomicU64,
    served: AtomicU64,
    peak_held: AtomicU64,
    peak_served: AtomicU64,
    /// Nanoseconds spent holding requests, summed (the busy share without a limit).
    held_ns: AtomicU64,
    /// The last second's answers, 5xx and busy share (parts per million), from the ticker.
    rps_last: AtomicU64,
    eps_last: AtomicU64,
    busy_ppm_last: AtomicU64,
    /// Non-health requests seen by `--fail-ratio`, or the seeded generator's state.
    fail_state: AtomicU64,
}

/// What every backend of this fleet does with a non-health request.
struct Behaviour {
    delay: Duration,
    service: Duration,
    limit: usize,
    fail_ratio: f64,
    fail_seed: Option<u64>,
    report_load: bool,
}

/// One backend: its counters and, with `--limit`, its places.
struct Backend {
    c: Counters,
    places: Option<Semaphore>,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |name: &str| arg(&args, name).and_then(|v| v.parse::<u64>().ok());
    let count = num("--count").unwrap_or(3) as usize;
    let out = arg(&args, "--out").unwrap_or_else(|| "fleet.txt".into());
    let flap: Option<u64> = num("--flap");
    let behaviour = Arc::new(Behaviour {
        // Every answer but health checks waits this long (a slow backend).
        delay: Duration::from_millis(num("--delay-ms").unwrap_or(0)),
        service: Duration::from_millis(num("--service-ms").unwrap_or(0)),
        limit: num("--limit").unwrap_or(0) as usize,
        fail_ratio: arg(&args, "--fail-ratio")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        fail_seed: num("--fail-seed"),
        report_load: args.iter().any(|a| a == "--report-load"),
    });
    let threads = num("--threads").unwrap_or(1) as usize;
    let bind: Option<std::net::SocketAddr> = arg(&args, "--bind").and_then(|v| v.parse().ok());
    vigil_bench::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let born = Instant::now();
        let mut lines = String::new();
        let mut backends = Vec::new();
        for i in 0..count {
            let at = bind
                .filter(|_| i == 0)
                .unwrap_or_else(|| ([127, 0, 0, 1], 0).into());
            let listener = TcpListener::bind(at).await.expect("bind");
            let addr = listener.local_addr().unwrap();
            lines += &format!("{addr}\n");
            let backend = Arc::new(Backend {
                c: Counters {
                    fail_state: AtomicU64::new(behaviour.fail_seed.map_or(0, |s| seed(s, i))),
                    ..Counters::default()
                },
                places: (behaviour.limit > 0).then(|| Semaphore::new(behaviour.limit)),
            });
            backends.push((addr, backend.clone()));
            if behaviour.report_load {
                tokio::spawn(tick_load(backend.clone()));
            }
            let flapping = flap.filter(|_| i == 0);
            let behaviour = behaviour.clone();
            tokio::spawn(async move {
                while let Ok((mut sock, _)) = listener.accept().await {
                    backend.c.connections.fetch_add(1, Ordering::Relaxed);
                    let b = backend.clone();
                    let behaviour = behaviour.clone();
                    tokio::spawn(async move {
                        let c = &b.c;
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
                                let health = buf.starts_with(b"GET /health");
                                let flap_failing = flapping
                                    .is_some_and(|s| (born.elapsed().as_secs() / s) % 2 == 1);
                                let r = if health && flap_failing {
                                    answer("503 Service Unavailable", b"failing", None)
                                } else if health {
                                    answer("200 OK", b"ok", None)
                                } else {
                                    serve(&b, &behaviour, flapping, born).await
                                };
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
        let aside = format!("{out}.stats.tmp");
        loop {
            let _ = std::fs::write(&aside, stats_text(&backends));
            let _ = std::fs::rename(&aside, &stats);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// A non-health request: held (waiting for a place, then served), then answered.
/// Its place and its count in `held` are given back before the answer is written, so a
/// proxy that sends the next request as soon as it reads this answer never finds more
/// than the limit held here.
async fn serve(b: &Backend, how: &Behaviour, flapping: Option<u64>, born: Instant) -> Vec<u8> {
    let c = &b.c;
    c.app_requests.fetch_add(1, Ordering::Relaxed);
    if !how.delay.is_zero() {
        tokio::time::sleep(how.delay).await;
    }
    let since = Instant::now();
    let held = c.held.fetch_add(1, Ordering::Relaxed) + 1;
    c.peak_held.fetch_max(held, Ordering::Relaxed);
    let place = match &b.places {
        Some(s) => Some(s.acquire().await.expect("never closed")),
        None => None,
    };
    let served = c.served.fetch_add(1, Ordering::Relaxed) + 1;
    c.peak_served.fetch_max(served, Ordering::Relaxed);
    if !how.service.is_zero() {
        tokio::time::sleep(how.service).await;
    }
    c.served.fetch_sub(1, Ordering::Relaxed);
    drop(place);
    let held_now = c.held.fetch_sub(1, Ordering::Relaxed) - 1;
    c.held_ns
        .fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    let flap_failing = flapping.is_some_and(|s| (born.elapsed().as_secs() / s) % 2 == 1);
    let (status, body): (&str, &[u8]) = if flap_failing {
        ("503 Service Unavailable", b"failing")
    } else if how.fail_ratio > 0.0 && fails(c, how) {
        ("500 Internal Server Error", b"failed on purpose\n")
    } else {
        ("200 OK", b"hello from the fleet\n")
    };
    if status.starts_with('5') {
        c.failed.fetch_add(1, Ordering::Relaxed);
    }
    c.answered.fetch_add(1, Ordering::Relaxed);
    let report = how.report_load.then(|| {
        // The requests held on average over the last second (a time average, as a
        // CPU utilization is), over the places: above 1 when requests wait inside.
        let held = c.busy_ppm_last.load(Ordering::Relaxed) as f64 / 1e6;
        let u = held / how.limit.max(1) as f64;
        let _ = held_now;
        format!(
            "endpoint-load-metrics: TEXT application_utilization={u:.3}, cpu_utilization={:.3}, rps_fractional={}, eps={}\r\n",
            u.clamp(0.0, 1.0),
            c.rps_last.load(Ordering::Relaxed),
            c.eps_last.load(Ordering::Relaxed)
        )
    });
    answer(status, body, report.as_deref())
}

/// Whether this request fails under `--fail-ratio`: every request whose count crosses a
/// whole multiple of 1/R, or with `--fail-seed`, a draw below R (xorshift64*).
fn fails(c: &Counters, how: &Behaviour) -> bool {
    let r = how.fail_ratio;
    if how.fail_seed.is_some() {
        let step = |mut x: u64| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x
        };
        let old = c
            .fail_state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(step(x)))
            .unwrap();
        let x = step(old);
        let draw = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
        draw < r
    } else {
        let n = c.fail_state.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * r).floor() > (n * r).floor()
    }
}

/// A non-zero xorshift state for backend `i` from `--fail-seed`.
fn seed(s: u64, i: usize) -> u64 {
    (s ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(i as u64 * 2 + 1) | 1
}

fn answer(status: &str, body: &[u8], extra: Option<&str>) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\n{}\r\n",
        body.len(),
        extra.unwrap_or("")
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Every 100 ms, the last second's answers, 5xx and busy share, for the load reports.
async fn tick_load(b: Arc<Backend>) {
    let c = &b.c;
    let mut ring = std::collections::VecDeque::with_capacity(11);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let now = (
            c.answered.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            c.held_ns.load(Ordering::Relaxed),
        );
        ring.push_back(now);
        if ring.len() > 11 {
            ring.pop_front();
        }
        let then = ring[0];
        // Less than a second behind us at the start: scaled up to a second.
        let span = (ring.len() - 1).max(1) as u64;
        c.rps_last
            .store((now.0 - then.0) * 10 / span, Ordering::Relaxed);
        c.eps_last
            .store((now.1 - then.1) * 10 / span, Ordering::Relaxed);
        c.busy_ppm_last
            .store((now.2 - then.2) / 100 / span, Ordering::Relaxed);
    }
}

/// FILE.stats: the totals, then a line per backend.
fn stats_text(backends: &[(std::net::SocketAddr, Arc<Backend>)]) -> String {
    let get = |b: &Backend| {
        let c = &b.c;
        [
            &c.connections,
            &c.requests,
            &c.app_requests,
            &c.failed,
            &c.peak_held,
            &c.peak_served,
        ]
        .map(|a| a.load(Ordering::Relaxed))
    };
    let fields = |v: [u64; 6]| {
        format!(
            "connections {} requests {} app_requests {} failed {} peak_held {} peak_served {}\n",
            v[0], v[1], v[2], v[3], v[4], v[5]
        )
    };
    let mut total = [0u64; 6];
    let mut per = String::new();
    for (addr, b) in backends {
        let v = get(b);
        for k in 0..4 {
            total[k] += v[k];
        }
        for k in 4..6 {
            total[k] = total[k].max(v[k]);
        }
        per += &format!("backend {addr} {}", fields(v));
    }
    fields(total) + &per
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
