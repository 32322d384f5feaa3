//! A fleet of real `vigil` processes sharing health through a real etcd on loopback
//! ports; fake backends count the probes they receive.

use std::time::Duration;
use tokio::time::Instant;
use vigil_tests::config::config;
use vigil_tests::etcd::Etcd;
use vigil_tests::{free_ports, get, wait_for, wait_for_async, FakeBackend, Vigil};

const INTERVAL: Duration = Duration::from_millis(200);
const LEASE_TTL: Duration = Duration::from_secs(2);

struct Fleet {
    backends: Vec<FakeBackend>,
    members: Vec<Vigil>,
    /// The members' `fleet.prefix` in etcd.
    prefix: String,
}

/// `n` members named m0.. over `backends` fake backends, all checked every 200 ms.
async fn fleet(etcd: &Etcd, n: usize, backends: usize, copies: usize) -> Fleet {
    let mut list = Vec::new();
    for i in 0..backends {
        list.push(FakeBackend::start(&format!("b{i}")).await);
    }
    let mut pool = "  - name: api\n    backends:\n".to_string();
    for b in &list {
        pool += &format!("      - address: {}\n", b.addr);
    }
    pool += "    health_check:\n      interval: 200ms\n      fast_interval: 200ms\n      down_interval: 200ms\n      max_down_interval: 200ms\n      timeout: 150ms\n      rise: 1\n      fall: 1\n";
    // A prefix of its own, so tests sharing nothing but etcd's binary never meet.
    let prefix = format!("/vigil-{}-{}", std::process::id(), list[0].addr.port());
    let mut members = Vec::new();
    for i in 0..n {
        let (listen, admin) = free_ports();
        let top = format!(
            "fleet:\n  etcd: [\"{}\"]\n  prefix: {prefix}\n  node: m{i}\n  lease_ttl: 2s\n  copies: {copies}\n",
            etcd.url()
        );
        let mut v = Vigil::start(&config(listen, admin, &top, &[pool.clone()]), listen, admin);
        v.wait_ready().await;
        members.push(v);
    }
    Fleet {
        backends: list,
        members,
        prefix,
    }
}

async fn detailed(v: &Vigil) -> serde_json::Value {
    v.admin_get("/health/detailed").await.json()
}

/// Waits until every member in `members` is shared with exactly those live members.
async fn joined(f: &Fleet, members: &[usize]) {
    let want: Vec<String> = members.iter().map(|i| format!("m{i}")).collect();
    wait_for_async("members joined", Duration::from_secs(15), || async {
        for &i in members {
            let d = detailed(&f.members[i]).await;
            if d["fleet"]["mode"] != "shared" || d["fleet"]["members"] != serde_json::json!(want) {
                return false;
            }
        }
        true
    })
    .await;
}

/// Checks member `v` has made of the backend at `addr`, whatever their result.
async fn checks_by(v: &Vigil, addr: &str) -> u64 {
    let label = format!("backend=\"{addr}\"");
    let text = v.admin_get("/metrics").await.body;
    text.lines()
        .filter(|l| l.starts_with("vigil_health_checks_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits (polling) until each of `backends` has received `n` more probes.
async fn probed(backends: &[&FakeBackend], n: u64, limit: Duration) {
    let before: Vec<u64> = backends.iter().map(|b| b.stats.health_requests()).collect();
    wait_for(&format!("{n} more probes of each backend"), limit, || {
        backends
            .iter()
            .zip(&before)
            .all(|(b, was)| b.stats.health_requests() >= was + n)
    })
    .await;
}

/// Probes of `backends` over a window that ends, not after a fixed time, but once each
/// has received `min` more (polled, for at most `limit`: the one bound left on the
/// wall clock, loose); `members` are the live members.
struct Window {
    took: Duration,
    /// Probes each backend received.
    probes: Vec<u64>,
    /// For each backend, the members whose checks of it were counted meanwhile.
    probers: Vec<Vec<usize>>,
}

async fn probe_window(
    f: &Fleet,
    members: &[usize],
    backends: &[&FakeBackend],
    min: u64,
    limit: Duration,
) -> Window {
    let addrs: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let mut checks = Vec::new();
    for &m in members {
        for a in &addrs {
            checks.push(checks_by(&f.members[m], a).await);
        }
    }
    let before: Vec<u64> = backends.iter().map(|b| b.stats.health_requests()).collect();
    let start = Instant::now();
    wait_for(&format!("{min} probes of each backend"), limit, || {
        backends
            .iter()
            .zip(&before)
            .all(|(b, was)| b.stats.health_requests() >= was + min)
    })
    .await;
    let probes = backends
        .iter()
        .zip(&before)
        .map(|(b, was)| b.stats.health_requests() - was)
        .collect();
    let took = start.elapsed();
    let mut probers = vec![Vec::new(); backends.len()];
    let mut was = checks.into_iter();
    for &m in members {
        for (j, a) in addrs.iter().enumerate() {
            if checks_by(&f.members[m], a).await > was.next().unwrap() {
                probers[j].push(m);
            }
        }
    }
    Window {
        took,
        probes,
        probers,
    }
}

impl Window {
    /// Each backend was probed by exactly `copies` of the members, and received no more
    /// probes than `copies` members can send in the time the window took: checks of one
    /// member are at least 0.9 interval apart (the default jitter, 0.1), plus one at
    /// either edge of the window. (No fixed window, so a slow machine stretches `took`
    /// and the bound with it, never the count past it.)
    fn assert_probed_by(&self, copies: usize, what: &str) {
        let spacing = INTERVAL.as_secs_f64() * 0.9;
        let most = (copies as f64 * (self.took.as_secs_f64() / spacing + 1.0)) as u64 + 1;
        eprintln!(
            "{what}: probes per backend in {:?}: {:?} (at most {most}); probed by {:?}",
            self.took, self.probes, self.probers
        );
        for (i, (n, by)) in self.probes.iter().zip(&self.probers).enumerate() {
            assert_eq!(
                by.len(),
                copies,
                "{what}: backend {i} probed by members {by:?}"
            );
            assert!(
                *n <= most,
                "{what}: backend {i}: {n} probes in {:?}, at most {most} from {copies} \
                 member(s) ({:?})",
                self.took,
                self.probes
            );
        }
    }
}

/// One backend of pool `api` in a `/health/detailed` answer.
fn backend_of(d: &serde_json::Value, addr: &str) -> serde_json::Value {
    d["pools"]["api"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr)
        .cloned()
        .unwrap()
}

async fn owned(v: &Vigil) -> f64 {
    v.metric("vigil_fleet_owned_backends").await.unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_probe_each_backend_about_copies_times_per_interval_and_agree() {
    let etcd = Etcd::start();
    let f = fleet(&etcd, 3, 6, 1).await;
    joined(&f, &[0, 1, 2]).await;
    let mut total = 0.0;
    for v in &f.members {
        assert_eq!(v.metric("vigil_fleet_mode").await, Some(1.0));
        total += owned(v).await;
    }
    assert_eq!(total, 6.0, "each backend owned once");

    // At 200 ms, one copy: about one probe a backend per interval, by its one owner;
    // three if every member probed. Settled first: a check a member began before the
    // fleet formed has ended once each backend had four more.
    let all: Vec<&FakeBackend> = f.backends.iter().collect();
    probed(&all, 4, Duration::from_secs(10)).await;
    let w = probe_window(&f, &[0, 1, 2], &all, 10, Duration::from_secs(15)).await;
    w.assert_probed_by(1, "3 members, copies 1");

    // Every member shows the same owner for each backend, and routes to all six.
    let d0 = detailed(&f.members[0]).await;
    for v in &f.members[1..] {
        let d = detailed(v).await;
        for (a, b) in d0["pools"]["api"]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .zip(d["pools"]["api"]["backends"].as_array().unwrap())
        {
            assert_eq!(a["owner"], b["owner"]);
            assert_eq!(b["state"], "up");
        }
    }

    // One backend fails: every member shows it down within about a second.
    let failed = Instant::now();
    f.backends[0].ctl.set_health(500);
    let addr = f.backends[0].addr.to_string();
    wait_for_async("down on every member", Duration::from_secs(3), || async {
        for v in &f.members {
            if backend_of(&detailed(v).await, &addr)["state"] != "down" {
                return false;
            }
        }
        true
    })
    .await;
    let took = failed.elapsed();
    eprintln!("a failed backend down on every member after {took:?}");
    assert!(
        took < Duration::from_millis(1200),
        "down everywhere after {took:?}"
    );
    // The members that do not own it say who does and how old that word is.
    let mut followers = 0;
    for (i, v) in f.members.iter().enumerate() {
        let b = backend_of(&detailed(v).await, &addr);
        if b["owner"] == format!("m{i}").as_str() {
            continue;
        }
        followers += 1;
        assert!(b["shared_age_ms"].as_f64().is_some(), "{b}");
        let why = b["last_error"].as_str().unwrap_or_default();
        assert!(why.starts_with("fleet: m"), "{b}");
    }
    assert_eq!(followers, 2, "one owner, two followers");
    for v in &f.members {
        for _ in 0..12 {
            let r = get(v.listen, "api", "/").await.unwrap();
            assert_eq!(r.status, 200);
            assert_ne!(r.body, "b0");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_die_freeze_or_lose_etcd_hand_over_without_a_503() {
    let mut etcd = Etcd::start();
    let mut f = fleet(&etcd, 3, 6, 1).await;
    joined(&f, &[0, 1, 2]).await;

    // m2 killed: its backends are re-owned within lease_ttl + an interval.
    let killed = Instant::now();
    f.members[2].signal(libc::SIGKILL);
    wait_for_async("m2's backends re-owned", Duration::from_secs(6), || async {
        owned(&f.members[0]).await + owned(&f.members[1]).await == 6.0
    })
    .await;
    let took = killed.elapsed();
    eprintln!("a killed member's backends re-owned after {took:?}");
    assert!(
        took <= LEASE_TTL + INTERVAL + Duration::from_millis(500),
        "re-owned after {took:?}"
    );
    joined(&f, &[0, 1]).await;
    let all: Vec<&FakeBackend> = f.backends.iter().collect();
    probed(&all, 4, Duration::from_secs(10)).await;
    let w = probe_window(&f, &[0, 1], &all, 6, Duration::from_secs(15)).await;
    w.assert_probed_by(1, "after m2 died");

    // m1 frozen: m0 stops trusting it within the freshness bound (2 x 200 ms + 1 s)
    // and probes everything itself.
    let frozen = Instant::now();
    f.members[1].signal(libc::SIGSTOP);
    wait_for_async("m0 owns everything", Duration::from_secs(5), || async {
        owned(&f.members[0]).await == 6.0
    })
    .await;
    let took = frozen.elapsed();
    eprintln!("a frozen member distrusted after {took:?}");
    f.members[1].signal(libc::SIGCONT);
    assert!(
        took <= Duration::from_millis(1400 + 500),
        "m1 distrusted after {took:?}"
    );
    joined(&f, &[0, 1]).await;

    // etcd killed: every member checks everything locally, and keeps serving.
    let lost = Instant::now();
    etcd.kill();
    wait_for_async("both local", Duration::from_secs(5), || async {
        f.members[0].metric("vigil_fleet_mode").await == Some(0.0)
            && f.members[1].metric("vigil_fleet_mode").await == Some(0.0)
    })
    .await;
    let took = lost.elapsed();
    eprintln!("local after etcd was killed: {took:?}");
    assert!(took <= LEASE_TTL, "local after {took:?}");
    for v in &f.members[..2] {
        assert_eq!(owned(v).await, 6.0);
        for _ in 0..30 {
            let r = get(v.listen, "api", "/").await.unwrap();
            assert_eq!(r.status, 200, "while etcd is down: {}", r.body);
        }
    }
    probed(&all, 4, Duration::from_secs(10)).await;
    let w = probe_window(&f, &[0, 1], &all, 14, Duration::from_secs(15)).await;
    w.assert_probed_by(2, "local: both members probe all");
    let d = detailed(&f.members[0]).await;
    assert!(
        d["pools"]["api"]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["state"] == "up"),
        "a backend flapped while the fleet went local: {d}"
    );

    // etcd back: shared again, and each backend probed by one member again.
    etcd.restart();
    joined(&f, &[0, 1]).await;
    probed(&all, 4, Duration::from_secs(10)).await;
    let w = probe_window(&f, &[0, 1], &all, 6, Duration::from_secs(15)).await;
    w.assert_probed_by(1, "after etcd came back");
    let warned = f.members[0]
        .logs()
        .iter()
        .filter(|l| l.contains("etcd unreachable"))
        .count();
    assert_eq!(warned, 1, "one warning for the outage");
    f.members.truncate(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_probe_twice_and_a_reload_recomputes_ownership() {
    let etcd = Etcd::start();
    let mut f = fleet(&etcd, 3, 4, 2).await;
    joined(&f, &[0, 1, 2]).await;
    let all: Vec<&FakeBackend> = f.backends.iter().collect();
    probed(&all, 4, Duration::from_secs(10)).await;
    let w = probe_window(&f, &[0, 1, 2], &all, 22, Duration::from_secs(15)).await;
    w.assert_probed_by(2, "3 members, copies 2");
    let mut total = 0.0;
    for v in &f.members {
        total += owned(v).await;
    }
    assert_eq!(total, 8.0, "each of 4 backends owned twice");

    // Two backends added by reload on every member: owned by two members each.
    let extra = [
        FakeBackend::start("x0").await,
        FakeBackend::start("x1").await,
    ];
    for (i, v) in f.members.iter().enumerate() {
        let text = std::fs::read_to_string(&v.config_path).unwrap();
        let lines: String = extra
            .iter()
            .map(|b| format!("      - address: {}\n", b.addr))
            .collect();
        let text = text.replacen("    backends:\n", &format!("    backends:\n{lines}"), 1);
        std::fs::write(&v.config_path, text).unwrap();
        let r = v.post_reload(None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        if i == 0 {
            // A rolling change, one member done: m0 alone has six backends, so it
            // shares ownership with nobody and probes them all; m1 and m2 share their
            // four (two copies of two members: each owns all four). No backend is owned
            // by a member that does not have it.
            wait_for_async("m0 alone in its set", Duration::from_secs(3), || async {
                owned(&f.members[0]).await == 6.0
                    && owned(&f.members[1]).await == 4.0
                    && owned(&f.members[2]).await == 4.0
            })
            .await;
            let d = detailed(&f.members[0]).await;
            assert_eq!(
                d["fleet"]["members"],
                serde_json::json!(["m0"]),
                "{}",
                d["fleet"]
            );
            let new = extra[0].addr.to_string();
            wait_for_async("a new backend up on m0", Duration::from_secs(3), || async {
                backend_of(&detailed(&f.members[0]).await, &new)["state"] == "up"
            })
            .await;
        }
    }
    wait_for_async(
        "new backends owned twice",
        Duration::from_secs(3),
        || async {
            let mut total = 0.0;
            for v in &f.members {
                total += owned(v).await;
            }
            total == 12.0
        },
    )
    .await;
    let added: Vec<&FakeBackend> = extra.iter().collect();
    probed(&added, 4, Duration::from_secs(10)).await;
    let w = probe_window(&f, &[0, 1, 2], &added, 14, Duration::from_secs(15)).await;
    w.assert_probed_by(2, "added backends");

    // m2 stopped with SIGTERM: it revokes its lease, so the others own its backends
    // at once, well before the freshness bound (1.4 s) or the lease (2 s) would.
    let key = format!("{}/members/m2", f.prefix);
    assert!(etcd.has_key(&key).await, "m2 is not registered as {key}");
    let stopped = Instant::now();
    f.members[2].signal(libc::SIGTERM);
    f.members[2]
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("m2 exits after SIGTERM");
    let exited = Instant::now();
    // Its lease went with it: revoked, not left to expire. Kept alive until m2 exited
    // (every third of lease_ttl), it would hold m2's key for over a second more.
    let key = format!("{}/members/m2", f.prefix);
    assert!(
        !etcd.has_key(&key).await,
        "{key} outlived m2: lease not revoked"
    );
    wait_for_async(
        "m0 and m1 own everything",
        Duration::from_secs(5),
        || async { owned(&f.members[0]).await == 6.0 && owned(&f.members[1]).await == 6.0 },
    )
    .await;
    let (took, after_exit) = (stopped.elapsed(), exited.elapsed());
    eprintln!(
        "a member stopped with SIGTERM handed over after {took:?} ({after_exit:?} after it exited)"
    );
    // Without the revocation the others would wait for m2's heartbeat to go stale: at
    // least 1.2 s after its last (the freshness bound, 1.4 s, less one heartbeat).
    assert!(
        after_exit < Duration::from_millis(1000),
        "handed over {after_exit:?} after m2 exited ({took:?} after SIGTERM)"
    );
}
