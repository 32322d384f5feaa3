//! Agent checks (`CheckPolicy::agent`) under paused time, with scripted check bodies:
//! what the words do to routing and weights, how long they last, that `down` counts
//! toward `fall` like any failed check, that the operator's word wins, and that a pool
//! without agent checks (even one sharing the probe) ignores them. (The real binary:
//! `tests/tests/agent.rs`.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use vigil_healthcheck::*;

/// What each backend's check answers: a pass with the body's words unless told
/// otherwise; and how many checks each saw.
#[derive(Default)]
struct Script {
    outcomes: Mutex<HashMap<SocketAddr, Outcome>>,
    calls: Mutex<HashMap<SocketAddr, usize>>,
    /// While set, a check takes its outcome when it starts and gives it only once the
    /// gate closes (`Semaphore::close`): a check in flight.
    gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

impl Script {
    /// Checks of `addr` pass from now on, their body `body`.
    fn say(&self, addr: SocketAddr, body: &str) {
        let outcome = Outcome::Success(AgentReply::parse(body.as_bytes()));
        self.outcomes.lock().unwrap().insert(addr, outcome);
    }

    fn calls(&self, addr: SocketAddr) -> usize {
        self.calls.lock().unwrap().get(&addr).copied().unwrap_or(0)
    }
}

struct Scripted {
    addr: SocketAddr,
    script: Arc<Script>,
}

impl Probe for Scripted {
    fn check<'a>(&'a mut self, _spec: &'a ProbeSpec) -> BoxFuture<'a, Outcome> {
        *self
            .script
            .calls
            .lock()
            .unwrap()
            .entry(self.addr)
            .or_default() += 1;
        let outcomes = self.script.outcomes.lock().unwrap();
        let outcome = outcomes.get(&self.addr).cloned();
        let gate = self.script.gate.lock().unwrap().clone();
        Box::pin(async move {
            if let Some(gate) = gate {
                let _ = gate.acquire().await;
            }
            outcome.unwrap_or_else(Outcome::success)
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

impl Last {
    /// (routable, weight, agent hold) of `addr` in `pool`.
    fn member(&self, pool: &str, addr: SocketAddr) -> Option<(bool, u32, AgentMode)> {
        let m = self.0.lock().unwrap().clone()?;
        let member = m
            .pool(pool)?
            .iter()
            .find(|m| m.endpoint.socket_addr == addr)?
            .clone();
        Some((member.state.routable(), member.weight, member.state.agent))
    }
}

/// Checks every 10 ms; up after one pass, down after three failures.
fn policy(agent: bool) -> Arc<CheckPolicy> {
    let d = Duration::from_millis(10);
    Arc::new(CheckPolicy {
        probe: ProbeSpec::Http(HttpSpec::default()),
        thresholds: Thresholds::new(1, 3),
        schedule: Schedule {
            interval: d,
            fast_interval: d,
            down_interval: d,
            backoff_multiplier: 1.0,
            max_down_interval: d,
            jitter: 0.0,
        },
        agent,
        ..CheckPolicy::default()
    })
}

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10_000 + i))
}

fn spec(pool: &str, i: u16, weight: u32, policy: &Arc<CheckPolicy>) -> BackendSpec {
    BackendSpec {
        pool: pool.into(),
        address: addr(i).to_string(),
        socket_addr: addr(i),
        weight,
        slow_start: Duration::ZERO,
        policy: policy.clone(),
    }
}

fn checker() -> (Checker, Arc<Script>, Arc<Last>) {
    let script = Arc::new(Script::default());
    let last = Arc::new(Last::default());
    let c = Checker::with_probes(
        tokio::runtime::Handle::current(),
        CheckerOptions::default(),
        last.clone(),
        &prometheus::Registry::new(),
        Arc::new(ScriptProbes(script.clone())),
    )
    .unwrap();
    (c, script, last)
}

/// Lets virtual time run in 1 ms steps until `cond` holds; panics after `limit`.
async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits for `n` more checks of `addr` to be recorded.
async fn checks(c: &Checker, script: &Script, a: SocketAddr, n: usize) {
    let target = script.calls(a) + n;
    until("more checks", Duration::from_secs(5), || {
        script.calls(a) >= target && status(c, a).checks as usize >= target
    })
    .await;
}

fn status(c: &Checker, a: SocketAddr) -> BackendStatus {
    c.status()
        .into_iter()
        .find(|s| s.address == a.to_string())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn agent_words_hold_scale_and_last_until_the_agent_says_otherwise() {
    let (c, script, last) = checker();
    let p = policy(true);
    c.apply(vec![spec("p", 0, 2, &p), spec("p", 1, 2, &p)]);
    let a = addr(0);
    until("both routable", Duration::from_secs(1), || {
        last.member("p", a) == Some((true, 2, AgentMode::Ready))
            && last.member("p", addr(1)).is_some_and(|m| m.0)
    })
    .await;

    script.say(a, "drain\n");
    until("a drained", Duration::from_secs(1), || {
        last.member("p", a) == Some((false, 2, AgentMode::Drain))
    })
    .await;
    let s = status(&c, a);
    assert_eq!((s.health, s.admin), (Health::Up, AdminState::Ready));
    let drained = AgentState {
        mode: AgentMode::Drain,
        weight_percent: 100,
    };
    assert_eq!(s.agent, Some(drained));
    // A message without a word (or with unknown ones) changes nothing.
    script.say(a, "a ok");
    checks(&c, &script, a, 3).await;
    assert_eq!(status(&c, a).agent, Some(drained));
    assert_eq!(last.member("p", a), Some((false, 2, AgentMode::Drain)));

    // `ready` ends it; `50%` halves the weight; both stay.
    script.say(a, "READY,50%");
    until("a back at half weight", Duration::from_secs(1), || {
        last.member("p", a) == Some((true, 1, AgentMode::Ready))
    })
    .await;
    script.say(a, "");
    checks(&c, &script, a, 3).await;
    assert_eq!(last.member("p", a), Some((true, 1, AgentMode::Ready)));

    // `maint`: no traffic, checks go on; `up` alone does not end it, `ready` does.
    script.say(a, "maint");
    until("a in maint", Duration::from_secs(1), || {
        last.member("p", a) == Some((false, 1, AgentMode::Maint))
    })
    .await;
    script.say(a, "up");
    checks(&c, &script, a, 3).await;
    assert_eq!(last.member("p", a), Some((false, 1, AgentMode::Maint)));
    script.say(a, "up ready 100%");
    until("a back", Duration::from_secs(1), || {
        last.member("p", a) == Some((true, 2, AgentMode::Ready))
    })
    .await;

    // 0% keeps new requests away as a drain does.
    script.say(a, "0%");
    until("a at 0%", Duration::from_secs(1), || {
        last.member("p", a) == Some((false, 0, AgentMode::Drain))
    })
    .await;
    assert_eq!(
        status(&c, a).agent.map(|s| (s.mode, s.weight_percent)),
        Some((AgentMode::Ready, 0))
    );
    assert!(last.member("p", addr(1)).unwrap().0, "b untouched");
    assert!(c.shutdown(Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn down_counts_toward_fall_and_up_never_overrides_a_failing_check() {
    let (c, script, last) = checker();
    let p = policy(true);
    c.apply(vec![spec("p", 0, 1, &p)]);
    let a = addr(0);
    until("a routable", Duration::from_secs(1), || {
        last.member("p", a).is_some_and(|m| m.0)
    })
    .await;

    // Fall 3: up after one and two `down`s, down at the third; the other words count.
    script.say(a, "stopped 50% drain");
    checks(&c, &script, a, 1).await;
    let s = status(&c, a);
    assert_eq!((s.health, s.consecutive_failures), (Health::Up, 1));
    assert_eq!(s.last_error.as_deref(), Some("the agent says stopped"));
    assert_eq!(s.agent.map(|s| s.mode), Some(AgentMode::Drain));
    checks(&c, &script, a, 1).await;
    assert_eq!(status(&c, a).health, Health::Up);
    checks(&c, &script, a, 1).await;
    assert_eq!(status(&c, a).health, Health::Down);

    // `up ready` brings it back once the check passes (rise 1).
    script.say(a, "up ready");
    until("a routable again", Duration::from_secs(1), || {
        last.member("p", a) == Some((true, 1, AgentMode::Ready))
    })
    .await;

    // A failing check stays failed whatever the agent would say.
    script
        .outcomes
        .lock()
        .unwrap()
        .insert(a, Outcome::Failure("HTTP 503".into()));
    checks(&c, &script, a, 3).await;
    assert_eq!(status(&c, a).health, Health::Down);
    assert!(!last.member("p", a).unwrap().0);
    assert!(c.shutdown(Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn the_operator_wins_and_maintenance_forgets_the_agent() {
    let (c, script, last) = checker();
    let p = policy(true);
    c.apply(vec![spec("p", 0, 1, &p)]);
    let a = addr(0);
    until("a routable", Duration::from_secs(1), || {
        last.member("p", a).is_some_and(|m| m.0)
    })
    .await;

    // An operator's drain stays a drain whatever the agent says.
    c.set_admin("p", &a.to_string(), AdminState::Drain).unwrap();
    script.say(a, "ready 100% up");
    checks(&c, &script, a, 2).await;
    assert!(!last.member("p", a).unwrap().0);
    c.set_admin("p", &a.to_string(), AdminState::Ready).unwrap();
    assert!(last.member("p", a).unwrap().0);

    // The agent's drain holds while the operator says ready.
    script.say(a, "drain");
    until("a drained", Duration::from_secs(1), || {
        last.member("p", a).is_some_and(|m| !m.0)
    })
    .await;

    // Maintenance: no checks, so what the agent said is stale when it ends.
    c.set_admin("p", &a.to_string(), AdminState::Maintenance)
        .unwrap();
    script.say(a, "");
    c.set_admin("p", &a.to_string(), AdminState::Ready).unwrap();
    assert_eq!(status(&c, a).agent, Some(AgentState::default()));
    until(
        "a routable after its first check",
        Duration::from_secs(1),
        || last.member("p", a) == Some((true, 1, AgentMode::Ready)),
    )
    .await;
    assert!(c.shutdown(Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn without_agent_the_words_mean_nothing_even_on_a_shared_probe() {
    let (c, script, last) = checker();
    let (on, off) = (policy(true), policy(false));
    // Same address and check settings in two pools: one probe, judged by each.
    c.apply(vec![spec("on", 0, 4, &on), spec("off", 0, 4, &off)]);
    let a = addr(0);
    script.say(a, "drain 50% down");
    until("each pool's view", Duration::from_secs(1), || {
        last.member("on", a)
            .is_some_and(|m| m.2 == AgentMode::Drain)
            && last.member("off", a) == Some((true, 4, AgentMode::Ready))
    })
    .await;
    assert_eq!(c.probes(), 1);
    let off_status = c.status().into_iter().find(|s| s.pool == "off").unwrap();
    assert_eq!((off_status.health, off_status.agent), (Health::Up, None));
    assert_eq!(off_status.consecutive_failures, 0);

    // Turning the agent off forgets what it said.
    script.say(a, "");
    c.apply(vec![spec("on", 0, 4, &off), spec("off", 0, 4, &off)]);
    until("the words forgotten", Duration::from_secs(1), || {
        last.member("on", a) == Some((true, 4, AgentMode::Ready))
    })
    .await;
    assert!(c.status().iter().all(|s| s.agent.is_none()));
    assert!(c.shutdown(Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn checks_are_not_skipped_for_live_traffic_when_the_agent_speaks() {
    let (c, script, last) = checker();
    let p = Arc::new(CheckPolicy {
        skip_while_serving: true,
        ..(*policy(true)).clone()
    });
    c.apply(vec![spec("p", 0, 1, &p)]);
    let a = addr(0);
    until("a routable", Duration::from_secs(1), || {
        last.member("p", a).is_some_and(|m| m.0)
    })
    .await;
    let endpoint = last.0.lock().unwrap().clone().unwrap().pools["p"][0]
        .endpoint
        .clone();
    let before = script.calls(a);
    // Live requests answering well all along: still checked every 10 ms.
    for _ in 0..10 {
        endpoint.answered(Duration::from_millis(1), true);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(script.calls(a) >= before + 4, "checks were skipped");
    assert_eq!(status(&c, a).checks_skipped, 0);
    assert!(c.shutdown(Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn words_a_check_carried_across_the_reload_that_turned_the_agent_off_are_not_heard() {
    let (c, script, last) = checker();
    let (on, off) = (policy(true), policy(false));
    c.apply(vec![spec("p", 0, 4, &on)]);
    let a = addr(0);
    script.say(a, "drain 50%");
    until("a drained at half weight", Duration::from_secs(1), || {
        last.member("p", a) == Some((false, 2, AgentMode::Drain))
    })
    .await;

    // A check starts while the agent still says so, and is in flight...
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *script.gate.lock().unwrap() = Some(gate.clone());
    let before = script.calls(a);
    until("a check in flight", Duration::from_secs(1), || {
        script.calls(a) > before
    })
    .await;
    // ...when a reload turns the agent off: its words are forgotten at once.
    script.say(a, "");
    c.apply(vec![spec("p", 0, 4, &off)]);
    assert_eq!(last.member("p", a), Some((true, 4, AgentMode::Ready)));

    // The check in flight ends with the old words: they are not heard.
    *script.gate.lock().unwrap() = None;
    gate.close();
    checks(&c, &script, a, 3).await;
    assert_eq!(last.member("p", a), Some((true, 4, AgentMode::Ready)));
    assert!(status(&c, a).agent.is_none());
    assert!(c.shutdown(Duration::from_secs(1)).await);
}
