//! When vigil is ready, and what systemd hears of it from then on (see
//! `observe::systemd`): `READY=1` once Pingora serves the listening sockets and every
//! backend has had its first check (a process that takes over said `MAINPID=` first,
//! before the old process was told to drain: `server.rs`); the `STATUS=` line kept
//! current; the watchdog's pings.

use crate::control::Control;
use crate::observe::systemd::{Notifier, Summary};
use crate::process::app::App;
use crate::process::upgrade::Handoff;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};
use vigil_conf::Config;

/// Ready this long after start at the latest, every backend checked or not: systemd's
/// start timeout (90 s by default) and the old process of an upgrade (60 s) wait no
/// longer than that.
const READY_AT_THE_LATEST: Duration = Duration::from_secs(30);

/// How often the first verdicts are looked for, and then the status line (sent only
/// when it changed): a walk over the routing snapshot, never a request's work.
const FIRST_CHECKS_POLL: Duration = Duration::from_millis(20);
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// How long the first checks may take: a pool's first checks are spread over its
/// `fast_interval` and each has its `timeout`; plus a margin for checks waiting on
/// `max_concurrent_checks`.
pub(super) fn first_checks_within(config: &Config) -> Duration {
    let longest = config
        .pools
        .iter()
        .map(|p| p.health_check.fast_interval + p.health_check.timeout)
        .max()
        .unwrap_or_default();
    (longest + Duration::from_secs(5)).min(READY_AT_THE_LATEST)
}

/// On `rt`: once Pingora has started every service of `started` and every backend has
/// its first verdict (or `within` has passed), says `READY=1`; then keeps `STATUS=`
/// current.
pub(super) fn spawn(
    rt: &Runtime,
    app: Arc<App>,
    started: Vec<oneshot::Receiver<()>>,
    within: Duration,
) {
    rt.spawn(async move {
        for service in started {
            // Pingora dropped the service unstarted: it is stopping, and so are we.
            if service.await.is_err() {
                return;
            }
        }
        let summary = first_checks(&app, within).await;
        if summary.unchecked > 0 {
            tracing::warn!(
                unchecked = summary.unchecked,
                within = ?within,
                "ready before every backend had its first check"
            );
        }
        app.notifier.ready(&summary.to_string());
        if app.notifier.is_enabled() {
            keep_status(&app, summary).await;
        }
    });
}

/// The routing snapshot's summary once no backend waits for its first verdict, or
/// when `within` has passed.
async fn first_checks(app: &App, within: Duration) -> Summary {
    let deadline = Instant::now() + within;
    loop {
        let summary = app.in_force.summary();
        if summary.unchecked == 0 || Instant::now() >= deadline {
            return summary;
        }
        tokio::time::sleep(FIRST_CHECKS_POLL).await;
    }
}

/// Sends the status line whenever it changes (health, a reload), until the drain.
async fn keep_status(app: &App, mut last: Summary) {
    loop {
        tokio::time::sleep(STATUS_EVERY).await;
        let now = app.in_force.summary();
        if now != last && !app.notifier.status(&now.to_string()) {
            return;
        }
        last = now;
    }
}

/// Tells the old process that the sockets are ours as well now: connections wait in
/// their backlog until Pingora accepts them, however its last accepts and ours interleave.
pub(super) fn confirm_take_over(h: Handoff) {
    let from = h.from_pid;
    if let Err(e) = h.ready() {
        tracing::warn!(error = %e, "could not tell the old process we are ready; it keeps serving too");
    } else {
        tracing::info!(
            from_pid = from,
            "took over the listening sockets and backend health"
        );
    }
}

/// `WATCHDOG=1` every half `$WATCHDOG_USEC`, from the checker's runtime and once the
/// control task has answered: when either is wedged the pings stop, and systemd
/// restarts vigil. Ends when this process hands over to a new one.
pub(super) fn spawn_watchdog(rt: &Runtime, notifier: Notifier, control: Control) {
    let Some(every) = notifier.watchdog_interval() else {
        return;
    };
    rt.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !control.alive().await || !notifier.watchdog() {
                return;
            }
        }
    });
}
