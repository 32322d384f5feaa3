//! The access log: one line per request, text or JSON, written off the request path.
//!
//! Each worker thread formats its request's line into a buffer of its own (a shard:
//! an uncontended mutex, taken by the writer only to swap the buffer out), so a request
//! allocates nothing for its line and shares no cache line with another thread. One
//! writer thread, started when a format is first set, wakes every [`DRAIN_EVERY`] and
//! writes what every shard holds in one batch: a request never wakes it, a line reaches
//! the file within that time, and [`AccessLog::flush`] writes what is left at exit.
//! A shard that holds [`SHARD_LIMIT`] bytes (the disk far behind) drops further lines
//! and counts them in `vigil_access_log_dropped_total`: no request waits for the disk.
//! The file is reopened on SIGUSR1 (logrotate moves the old file away first).

use super::access_line::{json, text};
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;
use vigil_conf::{AccessLogConfig, AccessLogFormat};

pub use super::access_line::Entry;

/// How often the writer drains the shards.
const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// Bytes a thread's shard holds before its lines are dropped: with [`DRAIN_EVERY`],
/// ~400 MB of lines a second per thread.
const SHARD_LIMIT: usize = 4 << 20;

/// One thread's lines waiting for the writer.
#[derive(Default)]
struct Shard(Mutex<Vec<u8>>);

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // Nothing panics while a shard is held; a poisoned one is still a buffer.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

thread_local! {
    /// This thread's shard of each access log it has written to (one in a process;
    /// several only in tests). The `Weak` keeps its log's allocation, so its address
    /// names that log and no later one.
    static SHARDS: RefCell<Vec<(Weak<Shared>, Arc<Shard>)>> = const { RefCell::new(Vec::new()) };
}

/// What the request threads and the writer share; settings are read on every line,
/// so a reload changes them in place.
struct Shared {
    /// [`AccessLogFormat`] as a number; `Off` means the request path builds nothing.
    format: AtomicU8,
    path: Mutex<Option<PathBuf>>,
    reopen: AtomicBool,
    shards: Mutex<Vec<Arc<Shard>>>,
    /// The file (or stdout), opened by the first drain; held while a drain writes.
    sink: Mutex<Option<Sink>>,
}

pub struct AccessLog {
    shared: Arc<Shared>,
    /// Set when a format is first configured; the writer runs from then on.
    writer: OnceLock<()>,
    dropped: prometheus::IntCounter,
}

fn format_code(f: AccessLogFormat) -> u8 {
    match f {
        AccessLogFormat::Off => 0,
        AccessLogFormat::Text => 1,
        AccessLogFormat::Json => 2,
    }
}

impl AccessLog {
    /// An access log set to `config`; nothing is written while the format is `off`.
    pub fn start(config: &AccessLogConfig, dropped: prometheus::IntCounter) -> io::Result<Self> {
        let log = AccessLog {
            shared: Arc::new(Shared {
                format: AtomicU8::new(0),
                path: Mutex::new(None),
                reopen: AtomicBool::new(false),
                shards: Mutex::new(Vec::new()),
                sink: Mutex::new(None),
            }),
            writer: OnceLock::new(),
            dropped,
        };
        log.configure(config)?;
        Ok(log)
    }

    /// Applies `config` (at start and on reload). A file that cannot be opened is an
    /// error here, before anything changes.
    pub fn configure(&self, config: &AccessLogConfig) -> io::Result<()> {
        if let Some(p) = &config.path {
            open(p)?;
        }
        if config.format != AccessLogFormat::Off && self.writer.get().is_none() {
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("vigil-access-log".into())
                .spawn(move || loop {
                    std::thread::sleep(DRAIN_EVERY);
                    shared.drain();
                })?;
            let _ = self.writer.set(());
        }
        let mut path = self.shared.path.lock().unwrap();
        if *path != config.path {
            *path = config.path.clone();
            self.shared.reopen.store(true, Ordering::SeqCst);
        }
        self.shared
            .format
            .store(format_code(config.format), Ordering::SeqCst);
        Ok(())
    }

    /// Whether requests should build entries at all.
    pub fn enabled(&self) -> bool {
        self.shared.format.load(Ordering::Relaxed) != 0
    }

    /// Formats `entry` into this thread's shard; drops and counts it when the shard is
    /// full (the writer far behind).
    pub fn log(&self, entry: &Entry) {
        let format = self.shared.format.load(Ordering::Relaxed);
        if format == 0 {
            return;
        }
        let written = self.with_shard(|buf| {
            if buf.len() >= SHARD_LIMIT {
                return false;
            }
            if format == 1 {
                text(entry, buf);
            } else {
                json(entry, buf);
            }
            buf.push(b'\n');
            true
        });
        if !written {
            self.dropped.inc();
        }
    }

    fn with_shard<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        // The thread's list stays borrowed while the line is formatted (nothing in `f`
        // logs again): no reference count is touched per line.
        SHARDS.with(|shards| {
            let mut shards = shards.borrow_mut();
            let me = Arc::as_ptr(&self.shared);
            let i = match shards.iter().position(|(log, _)| log.as_ptr() == me) {
                Some(i) => i,
                None => {
                    shards.retain(|(log, _)| log.strong_count() > 0);
                    let shard = Arc::new(Shard::default());
                    self.shared.shards.lock().unwrap().push(shard.clone());
                    shards.push((Arc::downgrade(&self.shared), shard));
                    shards.len() - 1
                }
            };
            let mut buf = shards[i].1.lock();
            f(&mut buf)
        })
    }

    /// Reopens the file before the next line (SIGUSR1, after logrotate renamed it).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::SeqCst);
    }

    /// Writes every line formatted so far, now (at exit: no line is lost).
    pub fn flush(&self) {
        if self.writer.get().is_some() {
            self.shared.drain();
        }
    }
}

impl Shared {
    /// Writes what every shard holds, in one batch, and forgets the shards of threads
    /// that have ended.
    fn drain(&self) {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if sink.is_none() || self.reopen.swap(false, Ordering::SeqCst) {
            if let Some(old) = sink.as_mut() {
                let _ = old.writer().flush();
            }
            *sink = Some(Sink::open(&self.path.lock().unwrap().clone()));
        }
        let Some(sink) = sink.as_mut() else { return };
        let shards = self.shards.lock().unwrap().clone();
        // One buffer goes round: each shard's full one is swapped for the last emptied.
        let mut lines = Vec::new();
        let mut wrote = false;
        for shard in &shards {
            std::mem::swap(&mut *shard.lock(), &mut lines);
            if !lines.is_empty() {
                let _ = sink.writer().write_all(&lines);
                lines.clear();
                wrote = true;
            }
        }
        if wrote {
            let _ = sink.writer().flush();
        }
        drop(shards);
        // A thread that has ended left its shard to the list alone (drained above).
        self.shards
            .lock()
            .unwrap()
            .retain(|s| Arc::strong_count(s) > 1 || !s.lock().is_empty());
    }
}

fn open(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

enum Sink {
    Stdout(io::Stdout),
    File(BufWriter<File>),
}

impl Sink {
    fn open(path: &Option<PathBuf>) -> Sink {
        match path {
            None => Sink::Stdout(io::stdout()),
            Some(p) => match open(p) {
                Ok(f) => Sink::File(BufWriter::with_capacity(64 * 1024, f)),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot open the access log; writing it to stdout");
                    Sink::Stdout(io::stdout())
                }
            },
        }
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(s) => s,
            Sink::File(f) => f,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_to(path: &std::path::Path) -> (AccessLog, prometheus::IntCounter) {
        let dropped = prometheus::IntCounter::new("dropped", "dropped").unwrap();
        let config = AccessLogConfig {
            format: AccessLogFormat::Text,
            path: Some(path.to_path_buf()),
        };
        (AccessLog::start(&config, dropped.clone()).unwrap(), dropped)
    }

    #[test]
    fn every_thread_s_lines_are_written_and_flush_leaves_none_behind() {
        let dir = std::env::temp_dir().join(format!("vigil-al-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("threads.log");
        let _ = std::fs::remove_file(&path);
        let (log, dropped) = log_to(&path);
        std::thread::scope(|s| {
            for t in 0..4 {
                let log = &log;
                s.spawn(move || {
                    for i in 0..2_000 {
                        let id = format!("{t}-{i}");
                        log.log(&Entry {
                            request_id: &id,
                            status: 200,
                            ..Entry::default()
                        });
                    }
                });
            }
        });
        // The threads have ended: their shards are written and then forgotten.
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut ids: Vec<&str> = text
            .lines()
            .map(|l| l.rsplit_once(" id=").unwrap().1)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 8_000);
        assert_eq!(dropped.get(), 0);
        // A thread's own shard reference goes with its thread-locals, which may be
        // dropped just after `scope` has seen it end: forgotten by a later drain.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !log.shared.shards.lock().unwrap().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "ended threads' shards kept"
            );
            std::thread::yield_now();
            log.flush();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_shard_drops_and_counts_lines_instead_of_waiting() {
        // No writer (the format is set without one): nothing drains the shard.
        let dropped = prometheus::IntCounter::new("dropped", "dropped").unwrap();
        let log = AccessLog::start(&AccessLogConfig::default(), dropped.clone()).unwrap();
        log.shared.format.store(1, Ordering::SeqCst);
        let long = "x".repeat(64 * 1024);
        let lines = SHARD_LIMIT / long.len() + 10;
        for _ in 0..lines {
            log.log(&Entry {
                path: &long,
                ..Entry::default()
            });
        }
        let held = log.shared.shards.lock().unwrap()[0].lock().len();
        assert!(held >= SHARD_LIMIT && held < SHARD_LIMIT + long.len() + 512);
        assert!(dropped.get() >= 9, "{}", dropped.get());
    }
}
