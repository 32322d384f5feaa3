//! Backends from DNS (a real dnsmasq on a loopback port) and one probe per backend
//! however many pools name it. The real `vigil` binary; fake backends count what they
//! receive.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use vigil_tests::config::{config, FAST_CHECKS};
use vigil_tests::dns::{Dnsmasq, Record};
use vigil_tests::{free_ports, get, traffic, wait_for_async, FakeBackend, Vigil};

const SRV: &str = "_http._tcp.api.test";

/// The pool's backends as `/health/detailed` lists them: (address, source).
async fn backends(v: &Vigil, pool: &str) -> BTreeSet<(String, String)> {
    let d = v.admin_get("/health/detailed").await.json();
    d["pools"][pool]["backends"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|b| {
                    (
                        b["address"].as_str().unwrap_or_default().to_string(),
                        b["source"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn dns_backends(list: &[&FakeBackend]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|b| (b.addr.to_string(), "dns".to_string()))
        .collect()
}

fn start(dns: &Dnsmasq, discovery: &str, extra_backends: &[&FakeBackend]) -> Vigil {
    let (listen, admin) = free_ports();
    let mut pool = "  - name: api\n".to_string();
    if !extra_backends.is_empty() {
        pool += "    backends:\n";
        for b in extra_backends {
            pool += &format!("      - address: {}\n", b.addr);
        }
    }
    pool += &format!("    discovery: {discovery}\n    retries: 2\n{FAST_CHECKS}");
    let top = format!("dns:\n  nameservers: [\"{}\"]\n", dns.addr);
    Vigil::start(&config(listen, admin, &top, &[pool]), listen, admin)
}

/// Sends `n` requests; every one must be answered 200 (no 503 while a backend is up).
async fn all_ok(v: &Vigil, n: usize) {
    for i in 0..n {
        let r = get(v.listen, "api", "/").await.expect("request");
        assert_eq!(r.status, 200, "request {i}: {} {}", r.status, r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_bring_backends_the_pool_follows_and_keeps_when_dns_fails() {
    let a = FakeBackend::start("a").await;
    let b = FakeBackend::start("b").await;
    let c = FakeBackend::start("c").await;
    let records = |list: &[(&str, &FakeBackend)]| {
        let mut r = Vec::new();
        for (name, backend) in list {
            let target = format!("{name}.test");
            r.push(Record::srv(SRV, &target, backend.addr.port(), 10));
            r.push(Record::a(&target, "127.0.0.1"));
        }
        r
    };
    let mut dns = Dnsmasq::start(&records(&[("a", &a), ("b", &b)]));
    let mut v = start(&dns, &format!("{{srv: {SRV}, refresh: 300ms}}"), &[]);
    v.wait_ready().await;

    // Both SRV targets get traffic.
    wait_for_async("a and b discovered", Duration::from_secs(10), || async {
        backends(&v, "api").await == dns_backends(&[&a, &b])
    })
    .await;
    wait_for_async("a and b up", Duration::from_secs(10), || async {
        let r = get(v.listen, "api", "/").await;
        r.is_ok_and(|r| r.status == 200) && traffic(&a) > 0 && traffic(&b) > 0
    })
    .await;
    all_ok(&v, 40).await;
    assert!(
        traffic(&a) >= 10 && traffic(&b) >= 10,
        "a {} b {}",
        traffic(&a),
        traffic(&b)
    );
    let d = v.admin_get("/health/detailed").await.json();
    let disc = &d["pools"]["api"]["discovery"];
    assert_eq!(disc["name"], format!("SRV {SRV}"));
    assert!(disc["last_error"].is_null(), "{disc}");
    assert!(disc["last_success_unix"].as_f64().unwrap() > 1.0e9);
    assert!(
        v.metric("vigil_discovery_lookups_total{pool=\"api\",result=\"ok\"}")
            .await
            .unwrap()
            >= 1.0
    );
    assert!(
        v.metric("vigil_discovery_last_success_timestamp_seconds{pool=\"api\"}")
            .await
            .unwrap()
            > 1.0e9
    );
    let checks_of_a = |d: &serde_json::Value| {
        d["pools"]["api"]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["address"] == a.addr.to_string())
            .map(|x| x["checks"].as_u64().unwrap())
            .unwrap()
    };
    let a_checks = checks_of_a(&d);

    // The records change: b goes, c comes. The pool follows within refresh (300 ms)
    // plus c's first check; a keeps its state (its check count goes on).
    dns.restart(&records(&[("a", &a), ("c", &c)]));
    let changed = Instant::now();
    wait_for_async("b replaced by c", Duration::from_secs(5), || async {
        backends(&v, "api").await == dns_backends(&[&a, &c])
    })
    .await;
    let followed = changed.elapsed();
    eprintln!("the pool followed a record change (refresh 300ms) after {followed:?}");
    // refresh, plus the lookup and the apply, plus scheduling on a loaded machine
    // (measured ~250 ms).
    assert!(
        followed < Duration::from_secs(2),
        "followed in {followed:?}"
    );
    wait_for_async("c gets traffic", Duration::from_secs(5), || async {
        let _ = get(v.listen, "api", "/").await;
        traffic(&c) > 0
    })
    .await;
    let d = v.admin_get("/health/detailed").await.json();
    assert!(checks_of_a(&d) >= a_checks, "a's state was reset");
    let b_before = traffic(&b);
    all_ok(&v, 40).await;
    assert_eq!(
        traffic(&b),
        b_before,
        "b was removed from DNS but still got traffic"
    );
    v.wait_log(&["discovered backends changed"]).await;

    // DNS goes away: the last good set keeps serving, one warning for the outage.
    dns.stop();
    wait_for_async("two failed lookups", Duration::from_secs(15), || async {
        v.metric("vigil_discovery_lookups_total{pool=\"api\",result=\"error\"}")
            .await
            .is_some_and(|n| n >= 2.0)
    })
    .await;
    all_ok(&v, 40).await;
    assert_eq!(backends(&v, "api").await, dns_backends(&[&a, &c]));
    let d = v.admin_get("/health/detailed").await.json();
    assert!(d["pools"]["api"]["discovery"]["last_error"].is_string());
    let warnings = v
        .logs()
        .iter()
        .filter(|l| l.contains("discovery lookup failed"))
        .count();
    assert_eq!(warnings, 1, "one warning per outage");

    // Back: lookups succeed again (one line), nothing changes.
    dns.restart(&records(&[("a", &a), ("c", &c)]));
    v.wait_log(&["discovery lookups succeed again"]).await;
    assert_eq!(backends(&v, "api").await, dns_backends(&[&a, &c]));

    // A reload keeps the discovered backends (and their state): nothing removed.
    let r = v.post_reload(None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["changes"]["backends"]["removed"],
        serde_json::json!([]),
        "{}",
        r.body
    );
    assert_eq!(backends(&v, "api").await, dns_backends(&[&a, &c]));
    let d = v.admin_get("/health/detailed").await.json();
    assert!(checks_of_a(&d) >= a_checks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_on_other_loopback_addresses_merge_with_the_files_backends() {
    // Two backends on the same port at 127.0.0.2 and 127.0.0.3, named by one A name.
    let one = FakeBackend::start("one").await;
    let port = one.addr.port();
    let stats = || Arc::new(vigil_tests::Stats::default());
    let ctl = || Arc::new(vigil_tests::Control::default());
    let two = FakeBackend::start_at("two", ([127, 0, 0, 2], port).into(), stats(), ctl()).await;
    let three = FakeBackend::start_at("three", ([127, 0, 0, 3], port).into(), stats(), ctl()).await;
    let dns = Dnsmasq::start(&[
        Record::a("api.test", "127.0.0.2"),
        Record::a("api.test", "127.0.0.3"),
    ]);
    let mut v = start(
        &dns,
        &format!("{{a: \"api.test:{port}\", refresh: 1s}}"),
        &[&one],
    );
    v.wait_ready().await;
    let mut want = dns_backends(&[&two, &three]);
    want.insert((one.addr.to_string(), "file".into()));
    wait_for_async(
        "both A records discovered",
        Duration::from_secs(10),
        || async { backends(&v, "api").await == want },
    )
    .await;
    wait_for_async("traffic to all three", Duration::from_secs(10), || async {
        let _ = get(v.listen, "api", "/").await;
        traffic(&one) > 0 && traffic(&two) > 0 && traffic(&three) > 0
    })
    .await;
    all_ok(&v, 30).await;

    // `vigil validate` names what the pool resolves.
    let out = std::process::Command::new(Vigil::binary())
        .arg("validate")
        .arg(&v.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("backends from DNS: A/AAAA api.test (port {port})")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_answer_empties_the_pool_only_when_it_repeats() {
    let a = FakeBackend::start("a").await;
    let mut dns = Dnsmasq::start(&[
        Record::srv(SRV, "a.test", a.addr.port(), 1),
        Record::a("a.test", "127.0.0.1"),
    ]);
    let mut v = start(&dns, &format!("{{srv: {SRV}, refresh: 300ms}}"), &[]);
    v.wait_ready().await;
    wait_for_async("a discovered", Duration::from_secs(10), || async {
        backends(&v, "api").await == dns_backends(&[&a])
    })
    .await;
    let empty = "vigil_discovery_lookups_total{pool=\"api\",result=\"empty\"}";

    // The name is gone (NXDOMAIN): one or two such answers keep the backend...
    dns.restart(&[]);
    wait_for_async("an empty answer", Duration::from_secs(5), || async {
        v.metric(empty).await.is_some_and(|n| n >= 1.0)
    })
    .await;
    let kept = backends(&v, "api").await;
    let empties = v.metric(empty).await.unwrap();
    if empties < 3.0 {
        assert_eq!(
            kept,
            dns_backends(&[&a]),
            "emptied after {empties} empty answers"
        );
    }
    // ...the third in a row empties the pool.
    wait_for_async("the pool emptied", Duration::from_secs(5), || async {
        backends(&v, "api").await.is_empty()
    })
    .await;
    assert!(v.metric(empty).await.unwrap() >= 3.0);
    let r = get(v.listen, "api", "/").await.unwrap();
    assert_eq!(r.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_probe_per_backend_however_many_pools_name_it() {
    // Three pools name the same backend with the same check (checks every 100 ms);
    // a fourth checks it differently (another path). Probes are counted at the backend.
    let shared = FakeBackend::start("shared").await;
    let alone = FakeBackend::start("alone").await;
    let check = |path: &str| {
        format!(
            "    health_check:\n      interval: 100ms\n      fast_interval: 100ms\n      path: {path}\n      rise: 1\n      fall: 2\n"
        )
    };
    let pool = |name: &str, b: &FakeBackend, path: &str| {
        format!(
            "  - name: {name}\n    routes: [{{host: {name}}}]\n    backends:\n      - address: {}\n{}",
            b.addr,
            check(path)
        )
    };
    let pools = [
        pool("p1", &shared, "/health"),
        pool("p2", &shared, "/health"),
        pool("p3", &shared, "/health"),
        pool("p4", &shared, "/other"),
        pool("solo", &alone, "/health"),
    ];
    let (listen, admin) = free_ports();
    let mut v = Vigil::start(&config(listen, admin, "", &pools), listen, admin);
    v.wait_ready().await;
    // Fake backends count requests under /health as checks; /other is a check too.
    let other = |b: &FakeBackend| b.stats.requests() - b.stats.health_requests();
    let (s0, o0, a0) = (
        shared.stats.health_requests(),
        other(&shared),
        alone.stats.health_requests(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let solo = alone.stats.health_requests() - a0;
    let health = shared.stats.health_requests() - s0;
    let others = other(&shared) - o0;
    // Three pools checking /health probe it as often as one pool does; p4's /other
    // is its own probe, at the same rate.
    for (what, n) in [("/health for p1-p3", health), ("/other for p4", others)] {
        let ratio = n as f64 / solo as f64;
        assert!(
            (0.7..=1.4).contains(&ratio),
            "{what}: {n} probes, a single-pool backend {solo} (ratio {ratio:.2})"
        );
    }
    let d = v.admin_get("/health/detailed").await.json();
    let shared_with = |pool: &str| d["pools"][pool]["backends"][0]["shared_with"].clone();
    assert_eq!(shared_with("p1"), serde_json::json!(["p2", "p3"]));
    assert_eq!(shared_with("p4"), serde_json::json!([]));
    assert_eq!(d["checker"]["probes"], 3);
    for p in ["p1", "p2", "p3"] {
        assert_eq!(d["pools"][p]["backends"][0]["state"], "up");
        let series = format!(
            "vigil_health_checks_total{{backend=\"{}\",pool=\"{p}\",result=\"success\"}}",
            shared.addr
        );
        let n = v.metric(&series).await.unwrap_or(0.0);
        assert!(
            n >= solo as f64 * 0.7,
            "{p} counted {n} checks, solo {solo}"
        );
    }

    // /health failing: down in every pool sharing that probe; p4's /other still up.
    shared.ctl.set_health(500);
    wait_for_async("down in p1-p3", Duration::from_secs(5), || async {
        let d = v.admin_get("/health/detailed").await.json();
        ["p1", "p2", "p3"]
            .iter()
            .all(|p| d["pools"][*p]["backends"][0]["state"] == "down")
    })
    .await;
    let d = v.admin_get("/health/detailed").await.json();
    assert_eq!(d["pools"]["p4"]["backends"][0]["state"], "up");
}
