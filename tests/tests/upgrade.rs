//! Zero-downtime upgrade (issue #12): `vigil run --upgrade` takes over the listening
//! sockets and the backend health of the running vigil, which then drains and exits.
//! A request stream across it loses nothing, and no backend flaps to unknown.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vigil_tests::config::pool;
use vigil_tests::{get, start_vigil, wait_for, FakeBackend, Vigil};

/// `vigil run --upgrade` on the config `running` was started with.
fn upgrade(running: &Vigil) -> Vigil {
    let path = running.config_path.clone();
    Vigil::spawn(
        &[
            "run",
            "--upgrade",
            "-c",
            path.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        running.listen,
        running.admin,
        path.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_traffic_loses_no_request() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let checks = "    health_check:
      interval: 1s
      fast_interval: 1s
      jitter: 0
";
    let mut old = start_vigil("", &[pool("web", &[(&a, 1), (&b, 1)], checks)]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, done, failed, listen) = (stop.clone(), done.clone(), failed.clone(), old.listen);
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match get(listen, "app", "/").await {
                    Ok(r) if r.status == 200 => {}
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    wait_for("traffic", Duration::from_secs(10), || {
        done.load(Ordering::SeqCst) > 200
    })
    .await;

    let mut new = upgrade(&old);
    new.wait_log(&["took over the listening sockets"]).await;
    let status = old
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the old process exited after the handover");
    assert!(status.success(), "old process: {status:?}");
    old.wait_log(&["a new vigil took over"]).await;

    // The new process serves alone now, with every backend up from its first moment.
    let served = done.load(Ordering::SeqCst);
    wait_for(
        "traffic on the new process",
        Duration::from_secs(10),
        || done.load(Ordering::SeqCst) > served + 300,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed across the upgrade"
    );
    let d = new.admin_get("/health/detailed").await.json();
    for backend in d["pools"]["web"]["backends"].as_array().unwrap() {
        assert_eq!(backend["state"], "up", "{backend}");
    }
    let pid = new.pid();

    // And the new one can be upgraded in turn.
    let third = upgrade(&new);
    third.wait_log(&["took over the listening sockets"]).await;
    assert!(
        new.wait_exit(Duration::from_secs(15)).await.is_some(),
        "pid {pid} kept running"
    );
    assert_eq!(get(third.listen, "app", "/").await.unwrap().status, 200);

    // What the new process said while it served: its stderr up to the line it wrote
    // when the third took over. That line is here (and with it every line before it:
    // one pipe, read in order), so a state change it logged cannot still be on its way.
    let logs = new.logs();
    let handed = logs
        .iter()
        .position(|l| l.contains("a new vigil took over"))
        .unwrap_or_else(|| panic!("no handover line from pid {pid}: {logs:#?}"));
    let served: Vec<serde_json::Value> = logs[..handed]
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        served.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("took over the listening sockets"))),
        "{logs:#?}"
    );
    let transitions: Vec<_> = served
        .iter()
        .filter(|v| v["fields"]["from"].is_string() && v["fields"]["to"].is_string())
        .collect();
    assert!(
        transitions.is_empty(),
        "the new process changed backend states: {transitions:?}"
    );
    assert!(
        logs[..handed].iter().all(|l| !l.contains("\"ERROR\"")),
        "{:?}",
        &logs[..handed]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_loses_no_request_of_keepalive_clients() {
    // Issue #25: clients that keep their connections open and send the next request at
    // once. The old process answers what arrives on a connection it is closing, told
    // `Connection: close`, instead of closing between two requests.
    let a = FakeBackend::start("a").await;
    let old = start_vigil("", &[pool("web", &[(&a, 1)], "")]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (done, lost) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, done, lost, listen) = (stop.clone(), done.clone(), lost.clone(), old.listen);
        clients.push(tokio::spawn(async move {
            let mut conn: Option<vigil_tests::raw::RawConn> = None;
            while !stop.load(Ordering::SeqCst) {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => conn.insert(vigil_tests::raw::RawConn::connect(listen).await),
                };
                let sent = c.send(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
                match (sent, c.response().await) {
                    (Ok(()), Ok(r)) if r.status == 200 => {
                        done.fetch_add(1, Ordering::SeqCst);
                        if r.header("connection") == Some("close") {
                            conn = None;
                        }
                    }
                    other => {
                        eprintln!("lost: {other:?}");
                        lost.fetch_add(1, Ordering::SeqCst);
                        conn = None;
                    }
                }
            }
        }));
    }
    wait_for("traffic", Duration::from_secs(10), || {
        done.load(Ordering::SeqCst) > 500
    })
    .await;
    let mut old = old;
    let new = upgrade(&old);
    new.wait_log(&["took over the listening sockets"]).await;
    assert!(old.wait_exit(Duration::from_secs(15)).await.is_some());
    let served = done.load(Ordering::SeqCst);
    wait_for(
        "traffic on the new process",
        Duration::from_secs(10),
        || done.load(Ordering::SeqCst) > served + 500,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        lost.load(Ordering::SeqCst),
        0,
        "keep-alive requests lost across the upgrade"
    );
}

#[tokio::test]
async fn an_upgrade_with_nothing_running_is_a_clear_error() {
    let (listen, admin) = vigil_tests::free_ports();
    let a = FakeBackend::start("a").await;
    let path = Vigil::temp_path("vigil.yaml");
    std::fs::write(
        &path,
        vigil_tests::config::config(listen, admin, "", &[pool("web", &[(&a, 1)], "")]),
    )
    .unwrap();
    let out = std::process::Command::new(Vigil::binary())
        .args(["run", "--upgrade", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no running vigil answers on the upgrade socket"),
        "{err}"
    );
}
