//! The checker's timing under paused time, with scripted probes: backoff spacing,
//! timeouts without overlapping checks, the global bound, start-up spread and passive
//! ejection. Virtual time only moves when every task waits, so these assertions are
//! exact and cannot flake on a busy machine. (The same checker against real sockets:
//! `tests/tests/checker.rs`.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use vigil_healthcheck::*;

/// How a scripted backend answers.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Pass,
    Status(u16),
    /// Never answers.
    Hang,
    /// Passes after this long.
    Slow(Duration),
}

#[derive(Default)]
struct Script {
    replies: Mutex<HashMap<SocketAddr, Reply>>,
    /// When each check of each backend started.
    calls: Mutex<HashMap<SocketAddr, Vec<Instant>>>,
    /// Checks running now, per backend and in all, with their peaks.
    busy: Mutex<(HashMap<SocketAddr, usize>, usize)>,
    peaks: Mutex<(HashMap<SocketAddr, usize>, usize)>,
}

impl Script {
    fn set(&self, addr: SocketAddr, reply: Reply) {
        self.replies.lock().unwrap().insert(addr, reply);
    }

    fn calls(&self, addr: SocketAddr) -> Vec<Instant> {
        self.calls
            .lock()
            .unwrap()
            .get(&addr)
            .cloned()
            .unwrap_or_default()
    }

    fn total_calls(&self) -> usize {
        self.calls.lock().unwrap().values().map(Vec::len).sum()
    }

    fn enter(&self, addr: SocketAddr) {
        let mut busy = self.busy.lock().unwrap();
        let mine = busy.0.entry(addr).or_default();
        *mine += 1;
        let mine = *mine;
        busy.1 += 1;
        let mut peaks = self.peaks.lock().unwrap();
        let p = peaks.0.entry(addr).or_default();
        *p = (*p).max(mine);
        peaks.1 = peaks.1.max(busy.1);
    }

    fn leave(&self, addr: SocketAddr) {
        let mut busy = self.busy.lock().unwrap();
        *busy.0.entry(addr).or_default() -= 1;
        busy.1 -= 1;
    }
}

/// Leaves the script's busy count however the check ends (a timed-out one is dropped).
struct Busy(Arc<Script>, SocketAddr);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

struct Scripted {
    addr: SocketAddr,
    script: Arc<Script>,
}

impl Probe for Scripted {
    fn check<'a>(&'a mut self, _spec: &'a ProbeSpec) -> BoxFuture<'a, Outcome> {
        let (addr, script) = (self.addr, self.script.clone());
        Box::pin(async move {
            script
                .calls
                .lock()
                .unwrap()
                .entry(addr)
                .or_default()
                .push(Instant::now());
            script.enter(addr);
            let _busy = Busy(script.clone(), addr);
            let reply = *script
                .replies
                .lock()
                .unwrap()
                .get(&addr)
                .unwrap_or(&Reply::Pass);
            match reply {
                Reply::Pass => Outcome::success(),
                Reply::Status(s) => Outcome::Failure(format!("HTTP {s}")),
                Reply::Hang => std::future::pending().await,
                Reply::Slow(d) => {
                    tokio::time::sleep(d).await;
                    Outcome::success()
                }
            }
        })
    }

    fn connections_opened(&self) -> u64 {
        0
    }

    fn retarget(&mut self, addr: SocketAddr) {
        self.addr = addr;
    }
}

struct ScriptProbes(Arc<Script>);

impl Probes for ScriptProbes {
    fn probe(&self, addr: SocketAddr) -> Box<dyn Probe> {
        Box::new(Scripted {
            addr,
            script: self.0.clone(),
        })
    }
}

/// Keeps the last membership it is handed.
#[derive(Default)]
struct Last(Mutex<Option<Arc<Membership>>>);

impl Publish for Last {
    fn publish(&self, m: Arc<Membership>) {
        *self.0.lock().unwrap() = Some(m);
    }
}

fn policy(interval_ms: u64) -> CheckPolicy {
    let d = Duration::from_millis(interval_ms);
    CheckPolicy {
        probe: ProbeSpec::Tcp,
        thresholds: Thresholds::new(1, 1),
        schedule: Schedule {
            interval: d,
            fast_interval: d,
            down_interval: d,
            backoff_multiplier: 1.0,
            max_down_interval: d,
            jitter: 0.0,
        },
        timeout: Duration::from_secs(2),
        passive: PassivePolicy::default(),
        skip_while_serving: false,
        agent: false,
    }
}

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10_000 + i))
}

fn spec(i: u16, policy: &Arc<CheckPolicy>) -> BackendSpec {
    BackendSpec {
        pool: "p".into(),
        address: addr(i).to_string(),
        socket_addr: addr(i),
        weight: 1,
        slow_start: Duration::ZERO,
        policy: policy.clone(),
    }
}

fn checker(max: usize) -> (Checker, Arc<Script>, Arc<Last>) {
    let script = Arc::new(Script::default());
    let last = Arc::new(Last::default());
    let c = Checker::with_probes(
        tokio::runtime::Handle::current(),
        CheckerOptions {
            max_concurrent_checks: max,
            per_backend_metrics: true,
        },
        last.clone(),
        &prometheus::Registry::new(),
        Arc::new(ScriptProbes(script.clone())),
    )
    .unwrap();
    (c, script, last)
}

/// Lets every task that is ready run, without moving virtual time.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Lets virtual time run in 1 ms steps until `cond` holds; panics after `limit`.
async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn gaps_ms(times: &[Instant]) -> Vec<u128> {
    times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn failing_backend_is_probed_with_growing_spacing_up_to_the_cap() {
    let (c, script, _) = checker(16);
    script.set(addr(0), Reply::Status(500));
    let mut p = policy(10);
    p.schedule.down_interval = Duration::from_millis(20);
    p.schedule.backoff_multiplier = 2.0;
    p.schedule.max_down_interval = Duration::from_millis(160);
    c.apply(vec![spec(0, &Arc::new(p))]);
    until("8 checks", Duration::from_secs(10), || {
        script.calls(addr(0)).len() >= 8
    })
    .await;
    // Down after the first failure (fall 1), then 20, 40, 80, 160, 160… ms exactly.
    assert_eq!(
        gaps_ms(&script.calls(addr(0)))[..7],
        [20, 40, 80, 160, 160, 160, 160]
    );
    let st = c.status().remove(0);
    assert_eq!(st.health, Health::Down);
    assert_eq!(st.last_error.as_deref(), Some("HTTP 500"));
    assert!(c.shutdown(Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn hanging_backend_times_out_and_never_has_two_checks_in_flight() {
    let (c, script, _) = checker(16);
    script.set(addr(0), Reply::Hang);
    let mut p = policy(5);
    p.timeout = Duration::from_millis(30);
    c.apply(vec![spec(0, &Arc::new(p))]);
    until("10 checks", Duration::from_secs(10), || {
        script.calls(addr(0)).len() >= 10
    })
    .await;
    // Each check waits out its 30 ms, then the next one is 5 ms after its end.
    assert!(gaps_ms(&script.calls(addr(0))).iter().all(|&g| g == 35));
    assert_eq!(
        script.peaks.lock().unwrap().0[&addr(0)],
        1,
        "two checks overlapped"
    );
    let st = c.status().remove(0);
    assert_eq!(st.health, Health::Down);
    assert_eq!(st.last_error.as_deref(), Some("no answer within 30ms"));
    assert!(c.shutdown(Duration::from_secs(1)).await);
    assert_eq!(c.tasks_alive(), 0);
}

#[tokio::test(start_paused = true)]
async fn global_bound_holds_and_is_reached() {
    let (c, script, last) = checker(8);
    let p = Arc::new(policy(50));
    for i in 0..200 {
        script.set(addr(i), Reply::Slow(Duration::from_millis(20)));
    }
    c.apply((0..200).map(|i| spec(i, &p)).collect());
    until("2,000 checks", Duration::from_secs(60), || {
        script.total_calls() >= 2000
    })
    .await;
    // 200 backends every 50 ms with 20 ms answers need 80 at once; 8 are allowed.
    assert_eq!(script.peaks.lock().unwrap().1, 8);
    assert_eq!(c.peak_in_flight(), 8);
    let m = last.0.lock().unwrap().clone().unwrap();
    assert!(
        m.pool("p")
            .unwrap()
            .iter()
            .all(|m| m.state.health == Health::Up),
        "a healthy backend was marked down while waiting for a permit"
    );
    assert!(c.shutdown(Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn first_backends_are_spread_later_ones_checked_at_once() {
    let (c, script, _) = checker(64);
    let mut p = policy(50);
    p.schedule.fast_interval = Duration::from_millis(1000);
    let p = Arc::new(p);
    let t0 = Instant::now();
    c.apply((0..20).map(|i| spec(i, &p)).collect());
    until("every first check", Duration::from_secs(2), || {
        (0..20).all(|i| !script.calls(addr(i)).is_empty())
    })
    .await;
    let firsts: Vec<Duration> = (0..20).map(|i| script.calls(addr(i))[0] - t0).collect();
    // Drawn within [0, fast_interval); tokio's timer fires on whole milliseconds, so a
    // draw of 999.6 ms fires at 1 s.
    assert!(
        firsts.iter().all(|d| *d <= Duration::from_millis(1000)),
        "{firsts:?}"
    );
    let at_once = firsts.iter().filter(|d| d.is_zero()).count();
    assert!(
        at_once <= 1,
        "{at_once} of 20 start-up backends checked at once"
    );
    let spread = firsts
        .iter()
        .max()
        .unwrap()
        .saturating_sub(*firsts.iter().min().unwrap());
    assert!(
        spread >= Duration::from_millis(500),
        "first checks within {spread:?}"
    );

    let t1 = Instant::now();
    c.apply((0..22).map(|i| spec(i, &p)).collect());
    until("the added backends checked", Duration::from_secs(1), || {
        !script.calls(addr(20)).is_empty() && !script.calls(addr(21)).is_empty()
    })
    .await;
    assert_eq!(script.calls(addr(20))[0], t1);
    assert_eq!(script.calls(addr(21))[0], t1);
    assert!(c.shutdown(Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn passive_ejection_doubles_ends_on_time_and_respects_the_pool_share() {
    let (c, _script, last) = two_up_with(PassivePolicy {
        consecutive_failures: 3,
        ejection_time: Duration::from_millis(300),
        max_ejection_time: Duration::from_secs(2),
        max_ejected_percent: 50.0,
        ..PassivePolicy::default()
    })
    .await;
    let endpoint = |i: usize| {
        last.0.lock().unwrap().clone().unwrap().pool("p").unwrap()[i]
            .endpoint
            .clone()
    };
    let (a, b) = (endpoint(0), endpoint(1));
    let fail = |e: &Endpoint| (0..3).for_each(|_| e.report_failure());

    fail(&a);
    settle().await;
    let ejected_at = Instant::now();
    let st = c.status();
    assert!(st[0].ejected, "three failures in a row did not eject");
    assert_eq!(st[0].ejected_for, Some(Duration::from_millis(300)));
    // b may not be ejected too: that would be 100% of the pool, above 50%.
    fail(&b);
    settle().await;
    assert!(
        !c.status()[1].ejected,
        "ejected more than max_ejected_percent of the pool"
    );
    let checks = c.status()[0].checks;
    tokio::time::sleep_until(ejected_at + Duration::from_millis(299)).await;
    settle().await;
    let st = c.status().remove(0);
    assert!(
        st.checks >= checks + 5,
        "active checks stopped while ejected"
    );
    assert!(
        st.ejected && st.health == Health::Up,
        "an active success ended the ejection early"
    );
    tokio::time::sleep_until(ejected_at + Duration::from_millis(300)).await;
    settle().await;
    assert!(!c.status()[0].ejected, "the ejection did not end on time");
    until("a routable again", Duration::from_millis(50), || {
        last.0.lock().unwrap().as_ref().unwrap().pool("p").unwrap()[0]
            .state
            .routable()
    })
    .await;

    // Ejected again at once: the series has not decayed, so twice as long.
    fail(&a);
    settle().await;
    assert_eq!(c.status()[0].ejected_for, Some(Duration::from_millis(600)));
    assert!(c.shutdown(Duration::from_secs(1)).await);
}

fn in_pool(pool: &str, i: u16, policy: &Arc<CheckPolicy>) -> BackendSpec {
    BackendSpec {
        pool: pool.into(),
        ..spec(i, policy)
    }
}

#[tokio::test(start_paused = true)]
async fn pools_naming_the_same_backend_and_check_share_one_probe() {
    let (c, script, _) = checker(16);
    // Same address, same check, different rise/fall and jitter: one probe.
    let mut a = policy(100);
    a.schedule.jitter = 0.1;
    let mut b = a.clone();
    b.thresholds = Thresholds::new(3, 2);
    let (a, b) = (Arc::new(a), Arc::new(b));
    c.apply(vec![in_pool("a", 0, &a), in_pool("b", 0, &b)]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    // One pool alone: ~100 checks in 10 s (jitter ±10%). Two unshared: ~200.
    let n = script.calls(addr(0)).len();
    assert!(
        (90..=115).contains(&n),
        "{n} probes in 10 s for two pools at 100 ms"
    );
    assert_eq!(c.probes(), 1);
    let st = c.status();
    assert_eq!(st.len(), 2);
    for s in &st {
        assert_eq!(s.health, Health::Up, "{}", s.pool);
        // Each pool took (nearly) every result: its own rise/fall saw them all.
        assert!(
            s.checks as usize >= n - 5,
            "{} took {} of {n}",
            s.pool,
            s.checks
        );
    }
    assert_eq!(st[0].shared_with, vec!["b".to_string()]);
    assert_eq!(st[1].shared_with, vec!["a".to_string()]);

    // A failure reaches both pools through one probe; each applies its own fall.
    script.set(addr(0), Reply::Status(500));
    until("a down", Duration::from_secs(2), || {
        c.status()[0].health == Health::Down
    })
    .await;
    let st = c.status();
    assert!(st[0].consecutive_failures >= 1);
    // b needs 2 in a row; it is down by its own second failure, not a's first.
    until("b down", Duration::from_secs(2), || {
        c.status()[1].health == Health::Down
    })
    .await;
    assert!(c.status()[1].consecutive_failures >= 2);

    // A different check (timeout) is a different probe.
    let mut other = (*a).clone();
    other.timeout = Duration::from_secs(1);
    c.apply(vec![
        in_pool("a", 0, &a),
        in_pool("b", 0, &b),
        in_pool("c", 0, &Arc::new(other)),
    ]);
    settle().await;
    assert_eq!(c.probes(), 2);
    assert!(c
        .status()
        .iter()
        .find(|s| s.pool == "c")
        .unwrap()
        .shared_with
        .is_empty());
    assert!(c.shutdown(Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn a_backend_in_maintenance_lets_go_of_a_shared_probe_only_when_alone() {
    let (c, script, _) = checker(16);
    let p = Arc::new(policy(100));
    c.apply(vec![in_pool("a", 0, &p), in_pool("b", 0, &p)]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.set_admin("a", &addr(0).to_string(), AdminState::Maintenance);
    settle().await;
    assert_eq!(c.probes(), 1, "b still checks through it");
    let before = script.calls(addr(0)).len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = script.calls(addr(0)).len() - before;
    assert!((9..=11).contains(&n), "{n} probes in 1 s at 100 ms");
    c.set_admin("b", &addr(0).to_string(), AdminState::Maintenance);
    settle().await;
    assert_eq!(c.probes(), 0);
    assert!(c.shutdown(Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn a_backend_owned_elsewhere_is_not_probed_and_takes_shared_results() {
    let (c, script, last) = checker(16);
    let mut events = c.transitions();
    let p = Arc::new(policy(100));
    c.apply(vec![spec(0, &p), spec(1, &p)]);
    until("both up", Duration::from_secs(2), || {
        c.status().iter().all(|s| s.health == Health::Up)
    })
    .await;
    // Transitions of backends probed here are reported (for the fleet to publish).
    let mut ups = [events.recv().await.unwrap(), events.recv().await.unwrap()];
    ups.sort_by(|a, b| a.address.cmp(&b.address));
    assert_eq!(ups[0].address, addr(0).to_string());
    assert_eq!(ups[1].address, addr(1).to_string());
    assert!(ups.iter().all(|e| e.health == Health::Up));

    // Backend 1 is owned by another member: not probed any more.
    let a1 = addr(1).to_string();
    let other = a1.clone();
    assert_eq!(c.set_owned(Arc::new(move |_, a| a != other)), 1);
    settle().await;
    let before = script.calls(addr(1)).len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        script.calls(addr(1)).len(),
        before,
        "probed while owned elsewhere"
    );
    assert!(script.calls(addr(0)).len() >= 10);
    // Its owner's results apply here, once per change, and reach the membership.
    assert!(c.set_shared_health("p", &a1, Health::Down, "member b: HTTP 500"));
    assert!(!c.set_shared_health("p", &a1, Health::Down, "member b: HTTP 500"));
    let st = c.status().into_iter().find(|s| s.address == a1).unwrap();
    assert_eq!(st.health, Health::Down);
    assert_eq!(st.last_error.as_deref(), Some("member b: HTTP 500"));
    until("published", Duration::from_secs(1), || {
        let m = last.0.lock().unwrap().clone().unwrap();
        !m.pool("p").unwrap()[1].state.routable()
    })
    .await;
    // A result for a backend probed here is ignored: its own checks decide.
    assert!(!c.set_shared_health("p", &addr(0).to_string(), Health::Down, "x"));
    while let Ok(e) = events.try_recv() {
        assert_ne!(
            e.address, a1,
            "a shared result was reported as this process's own"
        );
    }

    // Taken back: probed at once, from the shared state (down), and up by its checks.
    let at = Instant::now();
    assert_eq!(c.set_owned(Arc::new(|_, _| true)), 2);
    until("backend 1 probed again", Duration::from_secs(1), || {
        script.calls(addr(1)).len() > before
    })
    .await;
    assert!(Instant::now() - at < Duration::from_millis(5));
    until("backend 1 up", Duration::from_secs(1), || {
        c.status()[1].health == Health::Up
    })
    .await;
    let e = events.recv().await.unwrap();
    assert_eq!((e.address.as_str(), e.health), (a1.as_str(), Health::Up));

    // Owned elsewhere, then in maintenance; ownership comes back while in maintenance:
    // when it ends the backend is probed (the wake-up was taken by maintenance).
    let other = a1.clone();
    c.set_owned(Arc::new(move |_, a| a != other));
    c.set_admin("p", &a1, AdminState::Maintenance);
    settle().await;
    c.set_owned(Arc::new(|_, _| true));
    settle().await;
    let before = script.calls(addr(1)).len();
    c.set_admin("p", &a1, AdminState::Ready);
    until(
        "probed after maintenance",
        Duration::from_millis(50),
        || script.calls(addr(1)).len() > before,
    )
    .await;

    // A backend owned elsewhere keeps the owner's word through maintenance.
    let other = a1.clone();
    c.set_owned(Arc::new(move |_, a| a != other));
    settle().await;
    c.set_shared_health("p", &a1, Health::Up, "member b: ok");
    c.set_admin("p", &a1, AdminState::Maintenance);
    c.set_admin("p", &a1, AdminState::Ready);
    assert_eq!(
        c.status()[1].health,
        Health::Up,
        "reset to unknown with nobody to check it"
    );
    assert!(c.shutdown(Duration::from_secs(1)).await);
}

/// Two backends of pool "p" checked every 5 ms with `passive`, once both are up.
async fn two_up_with(passive: PassivePolicy) -> (Checker, Arc<Script>, Arc<Last>) {
    let (c, script, last) = checker(16);
    let mut p = policy(5);
    p.passive = passive;
    let p = Arc::new(p);
    c.apply(vec![spec(0, &p), spec(1, &p)]);
    until("both up", Duration::from_secs(1), || {
        c.status().iter().all(|s| s.health == Health::Up)
    })
    .await;
    (c, script, last)
}

/// Issue #24: an ejection never leaves a pool without a backend that passes its checks.
#[tokio::test(start_paused = true)]
async fn held_out_backends_are_routed_while_nothing_else_is_and_their_ejection_runs_on() {
    let (c, script, last) = two_up_with(PassivePolicy {
        consecutive_failures: 3,
        ejection_time: Duration::from_secs(10),
        max_ejection_time: Duration::from_secs(60),
        max_ejected_percent: 50.0,
        ..PassivePolicy::default()
    })
    .await;
    let members = || {
        last.0
            .lock()
            .unwrap()
            .clone()
            .unwrap()
            .pool("p")
            .unwrap()
            .to_vec()
    };
    let a = members()[0].endpoint.clone();

    // A dies: live failures eject it, its checks mark it down.
    script.set(addr(0), Reply::Status(503));
    (0..3).for_each(|_| a.report_failure());
    settle().await;
    let ejected_at = Instant::now();
    assert!(c.status()[0].ejected);
    // (Down in the published table too: an `up` read there before would be the
    // table from before the ejection.)
    until("a down", Duration::from_millis(100), || {
        c.status()[0].health == Health::Down && members()[0].state.health == Health::Down
    })
    .await;
    // A comes back: up by its checks, still ejected, and not routed while B is.
    script.set(addr(0), Reply::Pass);
    until("a up", Duration::from_millis(100), || {
        members()[0].state.health == Health::Up
    })
    .await;
    let m = members();
    assert!(
        m[0].state.ejected && !m[0].state.routable() && !m[0].state.rescued,
        "a: {:?}; b: {:?}; status {:?}",
        m[0].state,
        m[1].state,
        c.status()
    );
    assert!(m[1].state.routable());

    // B dies: A alone passes its checks and is routed again, its ejection running on.
    script.set(addr(1), Reply::Status(503));
    until("a routed again", Duration::from_millis(100), || {
        members()[0].state.routable()
    })
    .await;
    let m = members();
    assert!(!m[1].state.routable(), "b is down");
    assert!(m[0].state.rescued && m[0].state.ejected);
    assert_eq!(
        c.status()[0].ejected_for,
        Some(ejected_at + Duration::from_secs(10) - Instant::now()),
        "routing it again ended or moved its ejection"
    );

    // B comes back: A is held out again until its ejection ends, on time.
    script.set(addr(1), Reply::Pass);
    until("b routable", Duration::from_millis(100), || {
        members()[1].state.routable()
    })
    .await;
    assert!(!members()[0].state.routable(), "a routed while b is");
    tokio::time::sleep_until(ejected_at + Duration::from_millis(9_990)).await;
    settle().await;
    assert!(c.status()[0].ejected && !members()[0].state.routable());
    tokio::time::sleep_until(ejected_at + Duration::from_secs(10)).await;
    settle().await;
    until(
        "a routable after its ejection",
        Duration::from_millis(50),
        || {
            let m = members();
            m[0].state.routable() && !m[0].state.rescued
        },
    )
    .await;

    // A backend that fails its checks is never routed by this rule: with both down
    // (A ejected again), nothing is routable.
    (0..3).for_each(|_| a.report_failure());
    script.set(addr(0), Reply::Status(503));
    script.set(addr(1), Reply::Status(503));
    until("both down", Duration::from_millis(100), || {
        members().iter().all(|m| m.state.health == Health::Down)
    })
    .await;
    assert!(members().iter().all(|m| !m.state.routable()));
    assert!(c.shutdown(Duration::from_secs(1)).await);
}

/// Issue #24: `max_ejected_percent` counts what the pool has lost, not ejections alone.
#[tokio::test(start_paused = true)]
async fn max_ejected_percent_counts_backends_down_by_their_checks() {
    let (c, script, last) = two_up_with(PassivePolicy {
        consecutive_failures: 3,
        max_ejected_percent: 50.0,
        ..PassivePolicy::default()
    })
    .await;
    script.set(addr(0), Reply::Status(503));
    until("a down", Duration::from_millis(100), || {
        c.status()[0].health == Health::Down
    })
    .await;
    let b = last.0.lock().unwrap().clone().unwrap().pool("p").unwrap()[1]
        .endpoint
        .clone();
    (0..3).for_each(|_| b.report_failure());
    settle().await;
    assert!(
        !c.status()[1].ejected,
        "ejected the last backend up in a pool that has lost half"
    );
    // With A up again the same failures eject B.
    script.set(addr(0), Reply::Pass);
    until("a up", Duration::from_millis(100), || {
        c.status()[0].health == Health::Up
    })
    .await;
    (0..3).for_each(|_| b.report_failure());
    settle().await;
    assert!(c.status()[1].ejected);
    assert!(c.shutdown(Duration::from_secs(1)).await);
}
