//! The drain: what happens between SIGTERM (or an upgrade) and Pingora's stop.
//! systemd hears `STOPPING=1` when it starts, except after an upgrade: the new
//! process is the unit's main process by then, and that word would stop the unit.

use crate::process::app::App;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

/// The shutdown Pingora waits for. SIGTERM and SIGQUIT drain:
/// the proxy listeners close and keep-alive connections end after their request,
/// in-flight requests and tunnels are awaited (at most `grace_period`), the checker's
/// tasks and the file watcher end; only then does Pingora stop its runtimes. SIGINT
/// stops at once.
pub(super) struct Drain {
    pub app: Arc<App>,
    /// Turns true when a new process took over the sockets (`vigil run --upgrade`).
    pub upgraded: watch::Receiver<bool>,
    /// Stops the admin listener: only after an upgrade, whose new process answers now.
    pub stop_admin: watch::Sender<bool>,
    pub grace: Duration,
    pub stop_accepting: watch::Sender<bool>,
    pub stop_watching: watch::Sender<bool>,
}

#[async_trait::async_trait]
impl ShutdownSignalWatch for Drain {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot handle SIGTERM/SIGQUIT/SIGINT; stopping");
            return ShutdownSignal::FastShutdown;
        };
        let mut upgraded = self.upgraded.clone();
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = quit.recv() => "SIGQUIT",
            _ = handed_over(&mut upgraded) => {
                self.app.notifier.handed_over();
                let _ = self.stop_admin.send(true);
                "upgrade"
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now");
                self.app.notifier.stopping("stopping now (SIGINT)");
                let _ = self.stop_watching.send(true);
                self.stop_listeners();
                return ShutdownSignal::FastShutdown;
            }
        };
        let app = &self.app;
        app.notifier
            .stopping(&format!("draining ({name}), grace period {:?}", self.grace));
        app.plane.draining.start();
        tracing::info!(signal = name, in_flight = app.plane.in_flight.get(), grace_period = ?self.grace, "draining");
        let _ = self.stop_accepting.send(true);
        let _ = self.stop_watching.send(true);
        let deadline = Instant::now() + self.grace;
        let drained = tokio::select! {
            _ = settled(app) => true,
            _ = sleep_until(deadline) => false,
            _ = int.recv() => false,
        };
        if drained {
            tracing::info!("drained: every request finished; exiting");
        } else {
            tracing::warn!(
                in_flight = app.plane.in_flight.get(),
                "grace period over; exiting with requests in flight"
            );
        }
        if !app.checker.shutdown(Duration::from_secs(1)).await {
            tracing::warn!(
                tasks = app.checker.tasks_alive(),
                "health check tasks did not end within 1s"
            );
        }
        self.stop_listeners();
        ShutdownSignal::GracefulTerminate
    }
}

impl Drain {
    /// Tells every listener to stop, so none sees its signal's channel simply close
    /// (Pingora logs that as an error) when this is dropped.
    fn stop_listeners(&self) {
        let _ = self.stop_accepting.send(true);
        let _ = self.stop_admin.send(true);
    }
}

/// Returns when a new process has taken over the sockets; never if none does.
async fn handed_over(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|u| *u).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Returns once no request has been in flight for a little while: a connection
/// accepted just before the listeners closed may still be reading its request head.
async fn settled(app: &App) {
    const SETTLE: Duration = Duration::from_millis(250);
    loop {
        app.plane.in_flight.idle().await;
        tokio::time::sleep(SETTLE).await;
        if app.plane.in_flight.get() == 0 {
            return;
        }
    }
}
