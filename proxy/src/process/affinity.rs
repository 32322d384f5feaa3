//! `cpu_affinity: auto`: one proxy worker thread pinned to each CPU vigil may use.
//!
//! Each worker serves its own connections (no work stealing). When two workers share
//! a CPU's run queue while the other CPU runs the load generator or a backend, one
//! waits a whole time slice for the other and every connection it holds waits with it:
//! on 2 cores shared with wrk and three backends, `perf sched` counted 15.6 such waits
//! over 1 ms a second for vigil's workers, and pinning them one per CPU took two
//! workers' p99 from 2.29 to 1.48 ms (bench/RESULTS.md, issue #8). Pinning only when
//! there are exactly as many workers as CPUs keeps any CPU from going unused by the
//! proxy (`threads: 1` on two cores) and any two workers from being forced onto one.

use std::collections::BTreeSet;

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet, Pid};

/// What `pin_workers` did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pinning {
    /// Each worker pinned to one of these CPUs, in order.
    Pinned(Vec<usize>),
    /// Not as many workers as CPUs: left to the kernel.
    Mismatch { threads: usize, cpus: usize },
    /// Fewer threads of that name than `threads` (yet: a new thread names itself
    /// once it runs).
    NotFound { found: usize },
}

/// The CPUs this process may run on (its affinity mask, e.g. from `taskset` or a
/// container's cpuset), in order.
pub(crate) fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    let set = sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

/// Pins the `threads` worker threads named `name` one per allowed CPU, in the order
/// the threads were created, when there are exactly as many as CPUs.
pub(crate) fn pin_workers(name: &str, threads: usize) -> std::io::Result<Pinning> {
    let cpus = allowed_cpus()?;
    if cpus.len() != threads {
        return Ok(Pinning::Mismatch {
            threads,
            cpus: cpus.len(),
        });
    }
    let workers = threads_named(name)?;
    if workers.len() != threads {
        return Ok(Pinning::NotFound {
            found: workers.len(),
        });
    }
    for (&tid, &cpu) in workers.iter().zip(&cpus) {
        let mut one = CpuSet::new();
        one.set(cpu);
        let pid = Pid::from_raw(tid).ok_or_else(|| std::io::Error::other("thread id 0"))?;
        sched_setaffinity(Some(pid), &one)?;
    }
    Ok(Pinning::Pinned(cpus))
}

/// Ids of this process's threads called `name`, lowest (first created) first.
fn threads_named(name: &str) -> std::io::Result<BTreeSet<i32>> {
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A thread may end between the listing and the read.
        if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) {
            if comm.trim_end() == name {
                ids.insert(tid);
            }
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_found_by_name_and_a_mismatch_is_left_alone() {
        use std::sync::{Arc, Barrier};
        let name = "vigil-aff-test";
        // Held until the test has looked: both threads named and running.
        let started = Arc::new(Barrier::new(3));
        let looked = Arc::new(Barrier::new(3));
        let spawned: Vec<_> = (0..2)
            .map(|_| {
                let (started, looked) = (started.clone(), looked.clone());
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || {
                        started.wait();
                        looked.wait();
                    })
                    .unwrap()
            })
            .collect();
        started.wait();
        assert_eq!(threads_named(name).unwrap().len(), 2);
        // One more worker than CPUs: never pinned.
        let cpus = allowed_cpus().unwrap().len();
        assert_eq!(
            pin_workers(name, cpus + 1).unwrap(),
            Pinning::Mismatch {
                threads: cpus + 1,
                cpus
            }
        );
        looked.wait();
        for t in spawned {
            t.join().unwrap();
        }
    }
}
