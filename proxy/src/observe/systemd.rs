//! What vigil tells systemd (`Type=notify`): the notify protocol of sd_notify(3),
//! spoken without libsystemd: one datagram of `KEY=VALUE` lines to `$NOTIFY_SOCKET`
//! (a path, or an abstract name when it starts with `@`). Without that variable every
//! call here does nothing.
//!
//! - `READY=1` once the listeners are served and every backend had its first check;
//!   from a process started by SIGUSR2 to take over, with `MAINPID=` (it becomes the
//!   unit's main process; the unit needs `NotifyAccess=all`).
//! - `RELOADING=1` with `MONOTONIC_USEC=` before a reload, `READY=1` after it,
//!   refused or not (the configuration in force is whole either way).
//! - `STOPPING=1` when a drain starts; nothing at all from a process that handed its
//!   sockets over: it is no longer the main process, and its `STOPPING=1` would stop
//!   the unit under the new one.
//! - `STATUS=` a one-line summary ([`Summary`]); `WATCHDOG=1` every half
//!   `$WATCHDOG_USEC` when that is set for this process.
//!
//! `NOTIFY_SOCKET` stays in the environment: the only process vigil starts is the new
//! binary of an upgrade, which needs it to say `MAINPID=`.

use std::fmt;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where this process stands, as the service manager should see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before `READY=1`.
    Starting,
    /// After `READY=1`: reloads and status lines are told.
    Serving,
    /// The drain has started (`STOPPING=1` sent).
    Stopping,
    /// A new process took over: silent from now on.
    HandedOver,
}

/// The handle every part that reports to systemd holds; cheap to clone.
#[derive(Clone, Default)]
pub struct Notifier {
    /// None when not started by systemd (no `$NOTIFY_SOCKET`).
    inner: Option<Arc<Inner>>,
}

struct Inner {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// Held while a message is sent, so two never cross a change of phase.
    phase: Mutex<Phase>,
    /// Started with `--upgrade`: not the unit's main process until it says `MAINPID=`.
    upgrading: bool,
    /// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`. `upgrading`: this
    /// process takes over from a running vigil.
    pub fn from_env(upgrading: bool) -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::default();
        };
        let opened = address(&path.to_string_lossy()).and_then(|addr| {
            let socket = UnixDatagram::unbound()?;
            // A full queue at the manager must never stall the control plane.
            socket.set_nonblocking(true)?;
            Ok((socket, addr))
        });
        let (socket, addr) = match opened {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(notify_socket = ?path, error = %e, "cannot notify systemd");
                return Notifier::default();
            }
        };
        let watchdog = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        Notifier {
            inner: Some(Arc::new(Inner {
                socket,
                addr,
                phase: Mutex::new(Phase::Starting),
                upgrading,
                watchdog,
            })),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The watchdog's ping interval, when the manager expects pings from this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.inner.as_ref().and_then(|i| i.watchdog)
    }

    /// Serving: `READY=1`, with `MAINPID=` when this process takes over from another.
    pub fn ready(&self, status: &str) {
        self.when(|phase, inner| {
            if *phase != Phase::Starting {
                return None;
            }
            *phase = Phase::Serving;
            let main = match inner.upgrading {
                true => format!("MAINPID={}\n", std::process::id()),
                false => String::new(),
            };
            Some(format!("{main}READY=1\nSTATUS={}", one_line(status)))
        });
    }

    /// This process, taking over from another, is the unit's main process from now:
    /// `MAINPID=`, said before the old one is told to drain (it exits once drained,
    /// and systemd must know the new main process by then, or it stops the unit).
    pub fn main_pid(&self) {
        self.when(|phase, inner| {
            (*phase == Phase::Starting && inner.upgrading)
                .then(|| format!("MAINPID={}", std::process::id()))
        });
    }

    /// A reload starts.
    pub fn reloading(&self) {
        self.when(|phase, _| {
            (*phase == Phase::Serving).then(|| {
                format!(
                    "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
                    monotonic_usec()
                )
            })
        });
    }

    /// A reload ended; `status` says how.
    pub fn reloaded(&self, status: &str) {
        self.when(|phase, _| {
            (*phase == Phase::Serving).then(|| format!("READY=1\nSTATUS={}", one_line(status)))
        });
    }

    /// The drain starts. A process that took over but never said `MAINPID=` is not the
    /// unit's main process: its `STOPPING=1` would stop the unit.
    pub fn stopping(&self, status: &str) {
        self.when(|phase, inner| {
            let main = match *phase {
                Phase::Serving => true,
                Phase::Starting => !inner.upgrading,
                Phase::Stopping | Phase::HandedOver => false,
            };
            if *phase != Phase::HandedOver {
                *phase = Phase::Stopping;
            }
            main.then(|| format!("STOPPING=1\nSTATUS={}", one_line(status)))
        });
    }

    /// A new process took over the sockets (and said `MAINPID=`): nothing more from here.
    pub fn handed_over(&self) {
        self.when(|phase, _| {
            *phase = Phase::HandedOver;
            None
        });
    }

    /// A new status line, while serving; false once the drain has started.
    pub fn status(&self, status: &str) -> bool {
        let mut serving = true;
        self.when(|phase, _| {
            serving = matches!(*phase, Phase::Starting | Phase::Serving);
            (*phase == Phase::Serving).then(|| format!("STATUS={}", one_line(status)))
        });
        serving
    }

    /// One watchdog ping; false once this process has handed over and pings no more.
    pub fn watchdog(&self) -> bool {
        let mut alive = true;
        self.when(|phase, _| {
            alive = *phase != Phase::HandedOver;
            alive.then(|| "WATCHDOG=1".to_string())
        });
        alive
    }

    /// Sends what `message` returns for the current phase (which it may change).
    fn when(&self, message: impl FnOnce(&mut Phase, &Inner) -> Option<String>) {
        let Some(inner) = &self.inner else {
            return;
        };
        // Poisoning needs a panic while holding this lock; nothing here panics.
        let mut phase = inner.phase.lock().unwrap();
        if let Some(text) = message(&mut phase, inner) {
            if let Err(e) = inner.socket.send_to_addr(text.as_bytes(), &inner.addr) {
                tracing::warn!(error = %e, message = %text.replace('\n', " "), "cannot notify systemd");
            }
        }
    }
}

/// What `STATUS=` says: pools, backends routable, backends not checked yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub pools: usize,
    pub backends: usize,
    /// Routable: up, ready, not held out.
    pub up: usize,
    /// Without a first verdict yet (backends in maintenance are not checked, and not
    /// counted here).
    pub unchecked: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pools = match self.pools {
            1 => "1 pool".to_string(),
            n => format!("{n} pools"),
        };
        match self.unchecked {
            0 => write!(
                f,
                "serving {pools}, {}/{} backends up",
                self.up, self.backends
            ),
            n => write!(
                f,
                "serving {pools}, {}/{} backends up, {n} not checked yet",
                self.up, self.backends
            ),
        }
    }
}

/// `$NOTIFY_SOCKET`'s address: a path, or an abstract name after `@`.
fn address(value: &str) -> io::Result<SocketAddr> {
    if let Some(name) = value.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name.as_bytes());
    }
    if value.starts_with('/') {
        return SocketAddr::from_pathname(value);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "NOTIFY_SOCKET is neither an absolute path nor an abstract name (@…)",
    ))
}

/// Half of `$WATCHDOG_USEC`, when it is set and `$WATCHDOG_PID` is unset or ours
/// (sd_watchdog_enabled(3)).
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    Some(Duration::from_micros(usec) / 2)
}

/// CLOCK_MONOTONIC in microseconds, the clock `MONOTONIC_USEC=` is read against.
fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000
}

/// A status on one line: the protocol separates fields with newlines.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;

    #[test]
    fn the_socket_is_a_path_or_an_abstract_name() {
        let path = address("/run/systemd/notify").unwrap();
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let abstract_name = address("@vigil/notify").unwrap();
        assert_eq!(abstract_name.as_abstract_name(), Some(&b"vigil/notify"[..]));
        assert!(address("relative/notify").is_err());
        assert!(address("").is_err());
    }

    #[test]
    fn the_watchdog_pings_at_half_its_interval_for_its_own_pid_only() {
        let half = Some(Duration::from_millis(500));
        assert_eq!(watchdog_interval(Some("1000000"), None, 42), half);
        assert_eq!(watchdog_interval(Some("1000000"), Some("42"), 42), half);
        assert_eq!(watchdog_interval(Some("1000000"), Some("43"), 42), None);
        assert_eq!(watchdog_interval(Some("1000000"), Some("x"), 42), None);
        assert_eq!(watchdog_interval(Some("0"), None, 42), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 42), None);
        assert_eq!(watchdog_interval(None, Some("42"), 42), None);
    }

    #[test]
    fn the_summary_is_one_short_line() {
        let s = Summary {
            pools: 3,
            backends: 8,
            up: 7,
            unchecked: 0,
        };
        assert_eq!(s.to_string(), "serving 3 pools, 7/8 backends up");
        let s = Summary {
            pools: 1,
            backends: 2,
            up: 0,
            unchecked: 2,
        };
        assert_eq!(
            s.to_string(),
            "serving 1 pool, 0/2 backends up, 2 not checked yet"
        );
        assert_eq!(one_line("a\nb\r\nc"), "a b  c");
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(a > 0 && b >= a, "{a} {b}");
    }

    /// Messages as a manager receives them: a process that took over says MAINPID with
    /// READY, and nothing after it hands over; a reload is bracketed only once ready.
    #[test]
    fn each_phase_says_only_what_the_manager_should_hear() {
        let dir = std::env::temp_dir().join(format!("vigil-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let manager = UnixDatagram::bind(&path).unwrap();
        manager.set_nonblocking(true).unwrap();
        let notifier = |upgrading| Notifier {
            inner: Some(Arc::new(Inner {
                socket: UnixDatagram::unbound().unwrap(),
                addr: SocketAddr::from_pathname(&path).unwrap(),
                phase: Mutex::new(Phase::Starting),
                upgrading,
                watchdog: None,
            })),
        };
        let received = || {
            let mut out = Vec::new();
            let mut buf = [0u8; 512];
            while let Ok(n) = manager.recv(&mut buf) {
                out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            out
        };

        let fresh = notifier(false);
        fresh.reloading();
        assert!(fresh.status("early"));
        fresh.ready("serving");
        fresh.ready("twice");
        fresh.reloading();
        fresh.reloaded("done");
        fresh.stopping("draining");
        fresh.reloaded("late");
        assert!(!fresh.status("late"));
        let got = received();
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0], "READY=1\nSTATUS=serving");
        assert!(
            got[1].starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{got:?}"
        );
        assert_eq!(got[2], "READY=1\nSTATUS=done");
        assert_eq!(got[3], "STOPPING=1\nSTATUS=draining");

        let taking_over = notifier(true);
        taking_over.stopping("failed before taking over");
        assert!(received().is_empty());
        let taking_over = notifier(true);
        taking_over.ready("serving");
        assert!(taking_over.watchdog());
        taking_over.handed_over();
        assert!(!taking_over.watchdog());
        taking_over.stopping("draining");
        let got = received();
        let main = format!("MAINPID={}\nREADY=1\nSTATUS=serving", std::process::id());
        assert_eq!(got, vec![main, "WATCHDOG=1".to_string()]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
