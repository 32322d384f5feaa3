//! SIGUSR2 (nginx's binary-upgrade signal): the running vigil starts the binary now on
//! disk as `vigil ARGS --upgrade`, its own child, so under systemd the new process is in
//! the unit's cgroup and can become its main process (`MAINPID=`, see
//! `observe::systemd`). The child takes over as `vigil run --upgrade` always does (see
//! `upgrade`); this process then drains and exits, and the child runs on.
//!
//! The binary is the path of `/proc/self/exe` with the kernel's ` (deleted)` removed:
//! a package upgrade replaces the file under the same name, so that name is the new
//! binary, whatever `$PATH`, the working directory or `argv[0]` say (nginx's
//! `argv[0]` needs an absolute path to work). The one case it misses: an installed
//! path that is a symlink to a versioned file, where `/proc/self/exe` names the old
//! version's file, and that is what would start.
//!
//! The child inherits stdout, stderr and the environment (`NOTIFY_SOCKET` with it) but
//! not a `WATCHDOG_PID` that names this process: the child is to ping the watchdog, as
//! the unit's next main process. Nothing kills it when this process exits (no parent-death
//! signal); if it exits before it takes over it is reaped here, and one line says so.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// How long a child may take to take over before it is killed: the old process stops
/// waiting for its `ready` after `upgrade::READY_WITHIN`.
const TAKE_OVER_WITHIN: Duration =
    crate::process::upgrade::READY_WITHIN.saturating_add(Duration::from_secs(5));

/// The SIGUSR2 handler's state: at most one upgrade under way.
pub(super) struct Relaunch {
    /// False for `vigil demo`, which has no config file for a new process to read.
    possible: bool,
    /// Turns true once a new process took over (from `upgrade::serve`).
    handed_over: watch::Receiver<bool>,
    /// True from the child's start until it took over, exited or was killed.
    under_way: Arc<AtomicBool>,
}

/// Marks an upgrade under way; the mark goes when this is dropped.
struct UnderWay(Arc<AtomicBool>);

impl Drop for UnderWay {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Relaunch {
    pub fn new(possible: bool, handed_over: watch::Receiver<bool>) -> Self {
        Relaunch {
            possible,
            handed_over,
            under_way: Arc::default(),
        }
    }

    /// Starts the binary on disk to take over, unless that cannot work or an upgrade
    /// is under way already (each said in a line). On the runtime of the caller.
    pub fn start(&mut self) {
        let refused = if !self.possible {
            Some("a binary upgrade needs `vigil run -c FILE`")
        } else if self.under_way.load(Ordering::SeqCst) {
            Some("a binary upgrade is under way already")
        } else if *self.handed_over.borrow() {
            Some("a new process has taken over already")
        } else if self.handed_over.has_changed().is_err() {
            Some("this process does not answer on its upgrade socket (see the warning at start)")
        } else {
            None
        };
        if let Some(why) = refused {
            tracing::warn!("SIGUSR2 ignored: {why}");
            return;
        }
        let binary = match std::fs::read_link("/proc/self/exe") {
            Ok(link) => on_disk(link),
            Err(e) => {
                tracing::warn!(error = %e, "binary upgrade failed: cannot read /proc/self/exe; still serving");
                return;
            }
        };
        let mut command = Command::new(&binary);
        command
            .args(upgrade_args(std::env::args_os().skip(1)))
            .stdin(Stdio::null());
        let me = std::process::id().to_string();
        if std::env::var("WATCHDOG_PID").is_ok_and(|pid| pid.trim() == me) {
            command.env_remove("WATCHDOG_PID");
        }
        let spawned = command.spawn();
        match spawned {
            Ok(child) => {
                tracing::info!(pid = child.id(), binary = %binary.display(), "SIGUSR2: started the binary on disk to take over");
                self.under_way.store(true, Ordering::SeqCst);
                let under_way = UnderWay(self.under_way.clone());
                tokio::spawn(follow(child, self.handed_over.clone(), under_way));
            }
            Err(e) => {
                tracing::warn!(binary = %binary.display(), error = %e, "binary upgrade failed: cannot start the binary on disk; still serving");
            }
        }
    }
}

/// Waits until the child takes over (it then runs on alone), exits (reaped, and said),
/// or hangs past [`TAKE_OVER_WITHIN`] (killed and reaped). The mark of an upgrade
/// under way goes before a failure is said: a SIGUSR2 sent on reading that line is taken.
async fn follow(mut child: Child, mut handed_over: watch::Receiver<bool>, under_way: UnderWay) {
    let pid = child.id();
    let took_over = async {
        // The sender is dropped only as the runtime shuts down: that is no takeover.
        if handed_over.wait_for(|h| *h).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = took_over => {}
        status = child.wait() => {
            drop(under_way);
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            tracing::warn!(pid, %status, "binary upgrade failed: the new process exited before it took over; still serving");
        }
        _ = tokio::time::sleep(TAKE_OVER_WITHIN) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            drop(under_way);
            tracing::warn!(pid, within = ?TAKE_OVER_WITHIN, "binary upgrade failed: the new process did not take over in time and was killed; still serving");
        }
    }
}

/// The binary `/proc/self/exe` names, once replaced on disk: the kernel appends
/// ` (deleted)` to the name of a file that was unlinked or renamed over.
fn on_disk(link: PathBuf) -> PathBuf {
    match link.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
        Some(name) => PathBuf::from(OsStr::from_bytes(name)),
        None => link,
    }
}

/// This process's arguments with `--upgrade`, once.
fn upgrade_args(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.collect();
    if !args.iter().any(|a| a == "--upgrade") {
        args.push("--upgrade".into());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_binary_is_found_under_its_name() {
        assert_eq!(
            on_disk("/usr/bin/vigil (deleted)".into()),
            PathBuf::from("/usr/bin/vigil")
        );
        assert_eq!(
            on_disk("/usr/bin/vigil".into()),
            PathBuf::from("/usr/bin/vigil")
        );
    }

    #[test]
    fn the_new_process_gets_our_arguments_and_upgrade_once() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let run = args(&["--log-format", "json", "run", "-c", "/etc/vigil/vigil.yaml"]);
        let mut want = run.clone();
        want.push("--upgrade".into());
        assert_eq!(upgrade_args(run.into_iter()), want);
        assert_eq!(upgrade_args(want.clone().into_iter()), want);
    }
}
