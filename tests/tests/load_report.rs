//! Backends that say how loaded they are (issue #30): with `balance: load_report` each
//! backend's weight follows the ORCA reports in its answers (header or trailer, TEXT
//! or JSON), on the configured weights' scale; a malformed report changes nothing and
//! is counted; and the checker stays in charge: a backend reporting itself idle but
//! failing its checks gets nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vigil_tests::{get, start_vigil, wait_for_async, Vigil};

/// A backend that puts a load report in every answer: `report` as a header, or as a
/// trailer of a chunked answer.
struct Reporting {
    addr: std::net::SocketAddr,
    served: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
    /// Its answers to requests are `503`, reports and all.
    failing: Arc<AtomicBool>,
}

impl Reporting {
    async fn start(report: &'static str, in_trailer: bool) -> Reporting {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let failing = Arc::new(AtomicBool::new(false));
        let (s, h, f) = (served.clone(), healthy.clone(), failing.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (s, h, f) = (s.clone(), h.clone(), f.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match sock.read(&mut chunk).await {
                                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                                _ => return,
                            }
                            continue;
                        };
                        let health = buf.starts_with(b"GET /health");
                        let status = if f.load(Ordering::SeqCst) { 503 } else { 200 };
                        buf.drain(..end + 4);
                        let answer = if health {
                            let status = if h.load(Ordering::SeqCst) { 200 } else { 503 };
                            format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok")
                        } else if in_trailer {
                            s.fetch_add(1, Ordering::SeqCst);
                            format!("HTTP/1.1 {status} X\r\ntransfer-encoding: chunked\r\ntrailer: endpoint-load-metrics\r\n\r\n2\r\nok\r\n0\r\nendpoint-load-metrics: {report}\r\n\r\n")
                        } else {
                            s.fetch_add(1, Ordering::SeqCst);
                            format!("HTTP/1.1 {status} X\r\nendpoint-load-metrics: {report}\r\ncontent-length: 2\r\n\r\nok")
                        };
                        if sock.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Reporting {
            addr,
            served,
            healthy,
            failing,
        }
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

fn pool(name: &str, backends: &[&Reporting]) -> String {
    let mut s = format!("  - name: {name}\n    balance: load_report\n    load_report:\n      blackout: 0s\n    routes:\n      - host: {name}\n    backends:\n");
    for b in backends {
        s += &format!("      - address: {}\n", b.addr);
    }
    s + "    health_check:\n      interval: 100ms\n      fast_interval: 50ms\n      timeout: 100ms\n      rise: 1\n      fall: 1\n"
}

async fn gauge(v: &Vigil, family: &str, pool: &str, b: &Reporting) -> Option<f64> {
    v.metric(&format!(
        "{family}{{backend=\"{}\",pool=\"{pool}\"}}",
        b.addr
    ))
    .await
}

/// `n` requests to `host`, one after another, each answered 200.
async fn send(v: &Vigil, host: &str, n: usize) {
    for _ in 0..n {
        assert_eq!(get(v.listen, host, "/").await.unwrap().status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_are_weighted_by_the_load_they_report() {
    // At the same rate, the first reports a quarter of the others' load: it can take
    // four times what each of them takes. Its report comes in a JSON trailer.
    let light = Reporting::start(
        r#"JSON {"cpu_utilization": 0.2, "rps_fractional": 100}"#,
        true,
    )
    .await;
    let busy = [
        Reporting::start("TEXT cpu_utilization=0.8, rps_fractional=100", false).await,
        Reporting::start("TEXT cpu_utilization=0.8,rps_fractional=100", false).await,
    ];
    let broken = Reporting::start("TEXT cpu_utilization=lots", false).await;
    let plain = Reporting::start("TEXT cpu_utilization=0.1, rps_fractional=100", false).await;
    let v = start_vigil(
        "",
        &[
            pool("r", &[&light, &busy[0], &busy[1]]),
            pool("m", &[&broken, &plain]),
        ],
    )
    .await;
    // Until reports arrive, the configured weights (equal).
    send(&v, "r", 6).await;
    assert_eq!(light.served(), 2);
    // The weights are read again every second (and at each scrape).
    wait_for_async(
        "the reports to set the weights",
        Duration::from_secs(10),
        || async {
            send(&v, "r", 3).await;
            gauge(&v, "vigil_backend_effective_weight", "r", &light)
                .await
                .is_some_and(|w| w > 1.9)
        },
    )
    .await;
    assert_eq!(
        gauge(&v, "vigil_backend_reported_utilization", "r", &light).await,
        Some(0.2)
    );
    let busy_weight = gauge(&v, "vigil_backend_effective_weight", "r", &busy[0]).await;
    assert!(
        busy_weight.is_some_and(|w| (w - 0.5).abs() < 1e-6),
        "on the configured scale, the mean staying 1: {busy_weight:?}"
    );
    let before = light.served();
    send(&v, "r", 60).await;
    assert_eq!(light.served() - before, 40, "four of every six");

    // A malformed report is ignored and counted; its backend keeps its weight.
    send(&v, "m", 10).await;
    assert!(
        v.metric(r#"vigil_load_reports_malformed_total{pool="m"}"#)
            .await
            >= Some(5.0)
    );
    assert!(broken.served() >= 1);

    // Passive ejection stays in charge: answering 503s, however idle it says it is,
    // the light backend is ejected (retried elsewhere meanwhile) and gets nothing.
    light.failing.store(true, Ordering::SeqCst);
    send(&v, "r", 30).await;
    assert_eq!(
        gauge(&v, "vigil_backend_effective_weight", "r", &light).await,
        Some(0.0),
        "ejected"
    );
    let before = light.served();
    send(&v, "r", 20).await;
    assert_eq!(light.served(), before, "nothing to an ejected backend");
    light.failing.store(false, Ordering::SeqCst);

    // The checker stays in charge: the light backend fails its checks and gets
    // nothing, however idle it says it is.
    light.healthy.store(false, Ordering::SeqCst);
    wait_for_async(
        "the light backend down",
        Duration::from_secs(10),
        || async { gauge(&v, "vigil_backend_effective_weight", "r", &light).await == Some(0.0) },
    )
    .await;
    let before = light.served();
    send(&v, "r", 20).await;
    assert_eq!(light.served(), before, "nothing to a backend held down");
}
