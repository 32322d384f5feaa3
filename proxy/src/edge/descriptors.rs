//! File descriptors: the client-connection budget they allow, and what happens when
//! `accept()` fails for want of them (contract §5 "Descriptors").
//!
//! At start vigil raises its soft `RLIMIT_NOFILE` to the hard limit and derives a
//! budget of client connections from it: each client may hold an upstream connection
//! too, and a reserve stays for the checks (one connection per backend), the admin
//! listener, DNS, etcd and the log. A client over the budget is accepted and closed at
//! once (counted in `vigil_client_connections_refused_total`), so the descriptors the
//! admin listener and the checks need are never taken by clients. Should `accept()`
//! still fail (another process holds the system's descriptors), each failure is counted
//! in `vigil_accept_errors_total{listener,reason}` and each episode said in one line.

use prometheus::IntCounterVec;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Descriptors kept besides two per client: listeners, the admin listener and its
/// clients, DNS, etcd, the log files, the runtime's own.
const RESERVE: usize = 64;

/// The client-connection budget, across every listener.
pub struct Budget {
    cap: AtomicUsize,
    open: AtomicUsize,
    /// A client was refused and the count has not fallen back under 90% since.
    over: AtomicBool,
}

/// The process's budget ([`set_budget`] at start; unbounded until then).
pub static CLIENTS: Budget = Budget {
    cap: AtomicUsize::new(usize::MAX),
    open: AtomicUsize::new(0),
    over: AtomicBool::new(false),
};

/// The budget for `nofile` descriptors with `backends` backends to check: two per
/// client after a reserve of [`RESERVE`], one per backend, and an eighth of the limit
/// (a flood's connections are accepted before they are refused, and hold descriptors
/// for that moment).
pub fn budget_for(nofile: u64, backends: usize) -> usize {
    let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
    nofile.saturating_sub(reserve(nofile, backends)) / 2
}

fn reserve(nofile: usize, backends: usize) -> usize {
    RESERVE + backends + nofile / 8
}

/// Raises the soft descriptor limit to the hard one, sets the client budget from it and
/// says so once. Returns the budget.
pub fn set_budget(backends: usize, max_connections: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let mut nofile = limit.current.unwrap_or(u64::MAX);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum) {
        let raised = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if soft < hard && setrlimit(Resource::Nofile, raised).is_ok() {
            nofile = hard;
        }
    }
    let cap = budget_for(nofile, backends);
    CLIENTS.cap.store(cap, Ordering::Relaxed);
    if cap < max_connections {
        tracing::info!(
            nofile,
            client_connections = cap,
            reserve = reserve(usize::try_from(nofile).unwrap_or(usize::MAX), backends),
            "the descriptor limit bounds client connections below the listeners' max_connections"
        );
    } else {
        tracing::info!(nofile, client_connections = cap, "descriptor limit");
    }
    cap
}

impl Budget {
    /// Takes a place for a new client connection: false (and one line per episode)
    /// when the budget is spent.
    pub fn admit(&self) -> bool {
        let cap = self.cap.load(Ordering::Relaxed);
        if self.open.fetch_add(1, Ordering::Relaxed) < cap {
            return true;
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
        if !self.over.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                client_connections = cap,
                "client connections at the descriptor budget; new ones are refused (counted in vigil_client_connections_refused_total)"
            );
        }
        false
    }

    /// Gives a place back.
    pub fn release(&self) {
        let open = self.open.fetch_sub(1, Ordering::Relaxed) - 1;
        let cap = self.cap.load(Ordering::Relaxed);
        if open.saturating_mul(10) < cap.saturating_mul(9)
            && self.over.load(Ordering::Relaxed)
            && self.over.swap(false, Ordering::Relaxed)
        {
            tracing::info!(open, "client connections under the descriptor budget again");
        }
    }
}

/// An episode of failing accepts ends at the first success this long after its last
/// failure (while descriptors are short, an accept succeeds now and then).
const QUIET: Duration = Duration::from_secs(1);

/// Counts failed `accept()`s and says each episode once per listener (pingora-core
/// patch 14's hook).
pub struct AcceptErrors {
    counter: IntCounterVec,
    /// Listeners in an episode, and when each last failed.
    failing: Mutex<HashMap<String, Instant>>,
}

impl AcceptErrors {
    pub fn new(counter: IntCounterVec) -> Self {
        AcceptErrors {
            counter,
            failing: Mutex::new(HashMap::new()),
        }
    }

    /// The reason label of an accept error.
    pub fn reason(e: &std::io::Error) -> &'static str {
        use rustix::io::Errno;
        match e.raw_os_error().map(Errno::from_raw_os_error) {
            Some(Errno::MFILE | Errno::NFILE) => "descriptors",
            Some(Errno::NOBUFS | Errno::NOMEM) => "memory",
            _ => "other",
        }
    }

    /// A failure on `listener` at `now`: true when it begins an episode.
    fn begins(&self, listener: &str, now: Instant) -> bool {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(listener.to_string(), now)
            .is_none()
    }

    /// A success on `listener` at `now`: whether its episode is over, and whether it
    /// ended just now.
    fn ends(&self, listener: &str, now: Instant) -> (bool, bool) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match failing.get(listener) {
            None => (true, false),
            Some(&last) if now.duration_since(last) >= QUIET => {
                failing.remove(listener);
                (true, true)
            }
            Some(_) => (false, false),
        }
    }
}

impl pingora::services::listening::AcceptErrors for AcceptErrors {
    fn failed(&self, listener: &str, e: &std::io::Error) {
        let reason = Self::reason(e);
        self.counter.with_label_values(&[listener, reason]).inc();
        if self.begins(listener, Instant::now()) {
            tracing::warn!(listener, reason, error = %e, "accepting connections fails; retried every 100 ms (counted in vigil_accept_errors_total)");
        }
    }

    fn recovered(&self, listener: &str) -> bool {
        let (over, just_now) = self.ends(listener, Instant::now());
        if just_now {
            tracing::info!(listener, "accepting connections again");
        }
        over
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::services::listening::AcceptErrors as _;

    #[test]
    fn the_budget_keeps_two_descriptors_a_client_and_a_reserve() {
        assert_eq!(budget_for(1024, 10), (1024 - 64 - 10 - 128) / 2);
        assert_eq!(budget_for(128, 1), (128 - 64 - 1 - 16) / 2);
        assert_eq!(budget_for(60, 10), 0);
        assert_eq!(budget_for(1 << 20, 0), ((1 << 20) - 64 - (1 << 17)) / 2);
    }

    #[test]
    fn a_budget_admits_up_to_its_cap() {
        let b = Budget {
            cap: AtomicUsize::new(2),
            open: AtomicUsize::new(0),
            over: AtomicBool::new(false),
        };
        assert!(b.admit() && b.admit());
        assert!(!b.admit());
        assert!(b.over.load(Ordering::Relaxed));
        b.release();
        b.release();
        assert!(!b.over.load(Ordering::Relaxed));
        assert!(b.admit());
    }

    #[test]
    fn accept_errors_are_counted_each_and_said_once_an_episode() {
        let counter = IntCounterVec::new(
            prometheus::Opts::new("vigil_accept_errors_total", "x"),
            &["listener", "reason"],
        )
        .unwrap();
        let hook = AcceptErrors::new(counter.clone());
        let emfile = std::io::Error::from_raw_os_error(24);
        let t0 = Instant::now();
        assert!(hook.begins("a", t0));
        for _ in 0..5 {
            hook.failed("a", &emfile);
        }
        let last = Instant::now();
        assert!(!hook.begins("a", last), "still one episode");
        assert_eq!(counter.with_label_values(&["a", "descriptors"]).get(), 5);
        // A success soon after a failure does not end the episode; one a second later does.
        assert_eq!(
            hook.ends("a", last + Duration::from_millis(100)),
            (false, false)
        );
        assert_eq!(hook.ends("a", last + QUIET), (true, true));
        assert_eq!(hook.ends("a", last + QUIET), (true, false));
        assert_eq!(
            AcceptErrors::reason(&std::io::Error::from_raw_os_error(105)),
            "memory"
        );
        assert_eq!(
            AcceptErrors::reason(&std::io::Error::from_raw_os_error(103)),
            "other"
        );
    }
}
