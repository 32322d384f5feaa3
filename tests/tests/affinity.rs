//! `cpu_affinity` (issue #8): with as many proxy worker threads as CPUs vigil may use,
//! each worker is pinned to its own CPU; with `off`, or any other thread count, the
//! kernel places them. Read from the real process's `/proc/PID/task/*/status`.

use vigil_tests::config::{config, pool, FAST_CHECKS};
use vigil_tests::raw::RawConn;
use vigil_tests::{free_ports, FakeBackend, Vigil};

/// A `Cpus_allowed_list` value ("0-2,5") as CPU numbers.
fn cpu_list(text: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

fn allowed_cpus(status: &str) -> Vec<usize> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in status");
    cpu_list(line)
}

/// The CPUs each thread of `pid` called `name` may run on, by thread id.
fn threads_cpus(pid: i32, name: &str) -> Vec<(i32, Vec<usize>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = entry.unwrap().path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let tid = path.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let status = std::fs::read_to_string(path.join("status")).unwrap();
        out.push((tid, allowed_cpus(&status)));
    }
    out.sort();
    out
}

/// vigil at `threads` with `top` keys, after one proxied request (by then the proxy
/// service has started serving, so its workers are pinned or never will be).
async fn started(backend: &FakeBackend, threads: usize, top: &str) -> Vigil {
    let (listen, admin) = free_ports();
    let cfg = config(
        listen,
        admin,
        top,
        &[pool("web", &[(backend, 1)], FAST_CHECKS)],
    )
    .replace("threads: 1", &format!("threads: {threads}"));
    let mut v = Vigil::start(&cfg, listen, admin);
    v.wait_ready().await;
    RawConn::served(listen, "/").await;
    v
}

fn our_cpus() -> Vec<usize> {
    allowed_cpus(&std::fs::read_to_string("/proc/self/status").unwrap())
}

#[tokio::test]
async fn with_one_worker_per_cpu_each_worker_is_pinned_to_its_own_cpu() {
    let a = FakeBackend::start("a").await;
    let cpus = our_cpus();
    let v = started(&a, cpus.len(), "").await;
    let workers = threads_cpus(v.pid(), "vigil proxy");
    assert_eq!(workers.len(), cpus.len(), "{workers:?}");
    let mut pinned: Vec<usize> = workers
        .iter()
        .map(|(tid, c)| {
            assert_eq!(c.len(), 1, "worker {tid} may run on {c:?}");
            c[0]
        })
        .collect();
    pinned.sort();
    assert_eq!(pinned, cpus, "one worker on each CPU: {workers:?}");
    // The rest of the process (checker, admin) is left to the kernel.
    for (tid, c) in threads_cpus(v.pid(), "vigil-checker") {
        assert_eq!(c, cpus, "checker thread {tid}");
    }
    let said = v
        .json_logs()
        .into_iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("proxy worker threads pinned one per CPU"))
        })
        .count();
    assert_eq!(said, 1, "one start-up line says so");
    v.assert_quiet();
}

#[tokio::test]
async fn off_or_another_thread_count_leaves_workers_to_the_kernel() {
    let a = FakeBackend::start("a").await;
    let cpus = our_cpus();
    let mut cases = vec![(cpus.len(), "cpu_affinity: off\n"), (cpus.len() + 1, "")];
    if cpus.len() > 1 {
        // Fewer workers than CPUs: pinning would leave a CPU the proxy cannot use.
        cases.push((cpus.len() - 1, ""));
    }
    for (threads, top) in cases {
        let v = started(&a, threads, top).await;
        let workers = threads_cpus(v.pid(), "vigil proxy");
        assert_eq!(workers.len(), threads, "{workers:?}");
        for (tid, c) in &workers {
            assert_eq!(c, &cpus, "threads {threads} {top:?}: worker {tid}");
        }
        v.assert_quiet();
    }
}
