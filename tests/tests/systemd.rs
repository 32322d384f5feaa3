//! vigil as a `Type=notify` systemd service (issue #29): a Unix datagram socket stands
//! in for the service manager at `$NOTIFY_SOCKET` and, like systemd, reads the sender's
//! pid from each message's credentials. READY comes once the listener answers and the
//! first checks ran; reloads are bracketed by RELOADING and READY; the watchdog is
//! pinged at half its interval; SIGUSR2 starts a child that takes over as `MAINPID`
//! while clients see no refused connection, and the old process never says STOPPING.

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use vigil_tests::config::{config, pool};
use vigil_tests::notify::{monotonic_usec, Manager, Note};
use vigil_tests::{free_ports, get, wait_for, FakeBackend, Vigil};

const SPREAD_CHECKS: &str = "    health_check:
      interval: 5s
      fast_interval: 2s
      timeout: 1s
      jitter: 0
      rise: 1
      fall: 1
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_first_checks_and_reloads_are_bracketed() {
    let manager = Manager::start();
    let (a, b, c) = (
        FakeBackend::start("a").await,
        FakeBackend::start("b").await,
        FakeBackend::start("c").await,
    );
    let (listen, admin) = free_ports();
    // First checks spread over 2 s: READY sent on bind alone would find some unchecked.
    let pools = [pool("web", &[(&a, 1), (&b, 1), (&c, 1)], SPREAD_CHECKS)];
    let yaml = config(listen, admin, "", &pools);
    let mut v = Vigil::start_with_env(&yaml, listen, admin, &[manager.env()]);

    let (ready_at, ready) = manager.wait("READY=1", 0, |n| n.says("READY", "1")).await;
    for backend in [&a, &b, &c] {
        assert!(
            backend.stats.health_requests() >= 1,
            "READY before {} had its first check",
            backend.addr
        );
    }
    let answer = get(listen, "app", "/").await.expect("the listener answers");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(ready.pid, v.pid());
    assert_eq!(
        ready.get("MAINPID"),
        None,
        "a fresh start is the main process"
    );
    assert_eq!(ready.get("STATUS"), Some("serving 1 pool, 3/3 backends up"));

    // SIGHUP: RELOADING with the time it started on our clock, then READY.
    let before = monotonic_usec();
    v.signal(libc::SIGHUP);
    let (reloading_at, reloading) = manager
        .wait("RELOADING=1", ready_at + 1, |n| n.says("RELOADING", "1"))
        .await;
    let after = monotonic_usec();
    let stamp: u64 = reloading.get("MONOTONIC_USEC").unwrap().parse().unwrap();
    assert!(
        (before..=after).contains(&stamp),
        "MONOTONIC_USEC {stamp} not within {before}..={after}"
    );
    let (reloaded_at, reloaded) = manager
        .wait("READY=1 after the reload", reloading_at + 1, |n| {
            n.says("READY", "1")
        })
        .await;
    assert_eq!(
        reloaded.get("STATUS"),
        Some("serving 1 pool, 3/3 backends up")
    );

    // A refused reload ends with READY too: the configuration in force serves on.
    std::fs::write(&v.config_path, "pools: [\n").unwrap();
    v.signal(libc::SIGHUP);
    let (refused_at, _) = manager
        .wait("RELOADING=1", reloaded_at + 1, |n| n.says("RELOADING", "1"))
        .await;
    let (_, refused) = manager
        .wait("READY=1 after the refusal", refused_at + 1, |n| {
            n.says("READY", "1")
        })
        .await;
    let status = refused.get("STATUS").unwrap_or_default();
    assert!(
        status.starts_with("reload refused (")
            && status.ends_with("; serving 1 pool, 3/3 backends up"),
        "{status}"
    );

    v.signal(libc::SIGTERM);
    let (_, stopping) = manager
        .wait("STOPPING=1", 0, |n| n.says("STOPPING", "1"))
        .await;
    assert_eq!(stopping.pid, v.pid());
    let exit = v.wait_exit(Duration::from_secs(15)).await.expect("exited");
    assert!(exit.success(), "{exit:?}");
    let notes = manager.notes();
    assert!(
        notes.iter().all(|n| n.get("WATCHDOG").is_none()),
        "watchdog pings with no WATCHDOG_USEC: {notes:#?}"
    );
    let readies = notes.iter().filter(|n| n.says("READY", "1")).count();
    assert_eq!(readies, 3, "start, reload, refused reload: {notes:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_pinged_at_half_its_interval_when_it_is_ours() {
    let backend = FakeBackend::start("a").await;
    let pools = [pool("web", &[(&backend, 1)], "")];
    let start = |manager: &Manager, pid: Option<&'static str>| {
        let (listen, admin) = free_ports();
        let mut env = vec![manager.env(), ("WATCHDOG_USEC", "400000")];
        env.extend(pid.map(|p| ("WATCHDOG_PID", p)));
        Vigil::start_with_env(&config(listen, admin, "", &pools), listen, admin, &env)
    };
    let (ours, theirs) = (Manager::start(), Manager::start());
    let pinged = start(&ours, None);
    // WATCHDOG_PID names another process: the pings are not ours to send.
    let _silent = start(&theirs, Some("1"));
    ours.wait("READY=1", 0, |n| n.says("READY", "1")).await;
    theirs.wait("READY=1", 0, |n| n.says("READY", "1")).await;

    let pings = |m: &Manager| {
        m.notes()
            .iter()
            .filter(|n| n.says("WATCHDOG", "1") && n.pid == pinged.pid())
            .count()
    };
    let first = pings(&ours);
    // A measurement over a fixed window, not a wait for a condition: every 200 ms
    // makes 20 pings in 4 s; every 400 ms (the whole interval) would make 10.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let sent = pings(&ours) - first;
    assert!((13..=28).contains(&sent), "{sent} pings in 4s at 200ms");
    let strays: Vec<Note> = theirs
        .notes()
        .into_iter()
        .filter(|n| n.get("WATCHDOG").is_some())
        .collect();
    assert!(strays.is_empty(), "pings for another pid: {strays:?}");
}

/// The processes of the upgrade test, killed at the end whatever happens: the first
/// vigil (our child) and any process that took over from it.
struct Unit {
    first: Child,
    log: PathBuf,
    taken_over: Vec<i32>,
}

impl Unit {
    /// `vigil run -c FILE` as systemd starts it: `WATCHDOG_PID` is its own pid.
    fn start(manager: &Manager, path: &Path) -> Unit {
        let log = Vigil::temp_path("vigil.log");
        let out = std::fs::File::create(&log).unwrap();
        let first = Command::new("/bin/sh")
            .arg("-c")
            .arg("export WATCHDOG_PID=$$; exec \"$0\" \"$@\"")
            .arg(Vigil::binary())
            .args(["run", "-c", path.to_str().unwrap(), "--log-format", "json"])
            .env(manager.env().0, manager.env().1)
            .env("WATCHDOG_USEC", "1000000")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Unit {
            first,
            log,
            taken_over: Vec::new(),
        }
    }

    fn pid(&self) -> i32 {
        self.first.id() as i32
    }

    /// What the first vigil and its children wrote (one file, shared).
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn first_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.first.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the first vigil still runs");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        for &pid in &self.taken_over {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.first.kill();
        let _ = self.first.wait();
        // Ours to reap now that their parent is gone (we are a subreaper).
        for &pid in &self.taken_over {
            let _ = waitpid(Pid::from_raw(pid), None);
        }
    }
}

/// Clients sending requests one after another, counting what went wrong.
struct Traffic {
    stop: Arc<AtomicBool>,
    /// Requests done, failed, refused.
    counts: Arc<[AtomicU64; 3]>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(listen: std::net::SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 3]> = Arc::default();
        let clients = (0..4)
            .map(|_| {
                let (stop, counts) = (stop.clone(), counts.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let wrong = match get(listen, "app", "/").await {
                            Ok(r) if r.status == 200 => None,
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(2),
                            other => {
                                eprintln!("failed: {other:?}");
                                Some(1)
                            }
                        };
                        if let Some(i) = wrong {
                            counts[i].fetch_add(1, Ordering::SeqCst);
                        }
                        counts[0].fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            counts,
            clients,
        }
    }

    fn done(&self) -> u64 {
        self.counts[0].load(Ordering::SeqCst)
    }

    /// Stops the clients; requests failed and connections refused.
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.clients {
            c.await.unwrap();
        }
        let count = |i: usize| self.counts[i].load(Ordering::SeqCst);
        (count(1), count(2))
    }
}

/// Polls until `pid`, a child of ours, exits; its exit code.
async fn exit_code(pid: i32, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::StillAlive) => {}
            other => panic!("pid {pid}: {other:?}"),
        }
        assert!(Instant::now() < deadline, "pid {pid} still runs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_hands_over_to_a_child_that_becomes_the_main_pid() {
    // The first vigil's child is reparented to us when it exits, as systemd's cgroup
    // keeps it: we reap it and read its exit code.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let manager = Manager::start();
    let (a, b) = (FakeBackend::start("a").await, FakeBackend::start("b").await);
    let (listen, admin) = free_ports();
    let yaml = config(listen, admin, "", &[pool("web", &[(&a, 1), (&b, 1)], "")]);
    let path = Vigil::temp_path("vigil.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let mut unit = Unit::start(&manager, &path);
    let first = unit.pid();
    manager
        .wait("READY=1", 0, |n| n.says("READY", "1") && n.pid == first)
        .await;

    let traffic = Traffic::start(listen);
    wait_for("traffic", Duration::from_secs(10), || traffic.done() > 200).await;

    // A new process that cannot start (here: its config file is broken) changes nothing.
    std::fs::write(&path, "pools: [\n").unwrap();
    kill(Pid::from_raw(first), Signal::SIGUSR2).unwrap();
    unit.wait_log("the new process exited before it took over")
        .await;
    std::fs::write(&path, &yaml).unwrap();
    let notes = manager.notes();
    assert!(
        notes.iter().all(|n| n.get("MAINPID").is_none()),
        "{notes:#?}"
    );
    assert!(
        unit.first.try_wait().unwrap().is_none(),
        "the first vigil stopped"
    );

    let from = manager.notes().len();
    kill(Pid::from_raw(first), Signal::SIGUSR2).unwrap();
    let (main_at, main) = manager
        .wait("MAINPID=", from, |n| n.get("MAINPID").is_some())
        .await;
    let new: i32 = main.get("MAINPID").unwrap().parse().unwrap();
    unit.taken_over.push(new);
    assert_ne!(new, first);
    assert_eq!(main.pid, new, "MAINPID sent by another process");
    // MAINPID comes first (the old process drains once told, right after); READY=1
    // once the new one serves.
    let (_, ready) = manager
        .wait("READY=1 from the new process", main_at, |n| {
            n.pid == new && n.says("READY", "1")
        })
        .await;
    assert!(
        ready.get("MAINPID").is_none_or(|p| p == new.to_string()),
        "{ready:?}"
    );
    let exe = std::fs::read_link(format!("/proc/{new}/exe")).expect("the new process runs");
    assert_eq!(exe, Vigil::binary().canonicalize().unwrap());

    // The first vigil drains and exits; it never says STOPPING: that would stop the unit.
    let exit = unit.first_exit(Duration::from_secs(15)).await;
    assert!(exit.success(), "{exit:?}\n{}", unit.logs());
    let exited_at = manager.notes().len();
    let notes = manager.notes();
    let said: Vec<&Note> = notes
        .iter()
        .filter(|n| n.get("STOPPING").is_some())
        .collect();
    assert!(said.is_empty(), "STOPPING during the upgrade: {said:?}");

    // The new main process pings the watchdog, though WATCHDOG_PID named the first one.
    manager
        .wait("WATCHDOG=1 from the new process", exited_at, |n| {
            n.says("WATCHDOG", "1") && n.pid == new
        })
        .await;
    let served = traffic.done();
    wait_for(
        "traffic on the new process",
        Duration::from_secs(10),
        || traffic.done() > served + 300,
    )
    .await;
    let (failed, refused) = traffic.finish().await;
    assert_eq!(refused, 0, "connections refused");
    assert_eq!(failed, 0, "requests failed");

    kill(Pid::from_raw(new), Signal::SIGTERM).unwrap();
    let (_, stopping) = manager
        .wait("STOPPING=1", main_at, |n| n.says("STOPPING", "1"))
        .await;
    assert_eq!(stopping.pid, new);
    assert_eq!(exit_code(new, Duration::from_secs(15)).await, 0);
    unit.taken_over.clear();
}
