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

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, SystemTime};
use vigil_conf::{AccessLogConfig, AccessLogFormat};

/// How often the writer drains the shards.
const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// Bytes a thread's shard holds before its lines are dropped: with [`DRAIN_EVERY`],
/// ~400 MB of lines a second per thread.
const SHARD_LIMIT: usize = 4 << 20;

/// What one request leaves in the log, borrowed from the request for the time it takes
/// to format the line.
#[derive(Debug, Default)]
pub struct Entry<'a> {
    pub time: Option<SystemTime>,
    pub client: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub protocol: &'static str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub pool: &'a str,
    pub backend: &'a str,
    pub attempts: usize,
    /// 0 when no backend answered.
    pub upstream_status: u16,
    pub request_id: &'a str,
}

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

/// `-` for an empty field, as in nginx's and HAProxy's logs.
fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn push_int(n: impl itoa::Integer, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn text(e: &Entry, out: &mut Vec<u8>) {
    push_rfc3339(e.time.unwrap_or_else(SystemTime::now), out);
    for (before, field) in [
        (&b" "[..], e.client),
        (b" \"", e.method),
        (b" ", e.path),
        (b" ", e.protocol),
    ] {
        out.extend_from_slice(before);
        out.extend_from_slice(or_dash(field).as_bytes());
    }
    out.extend_from_slice(b"\" ");
    push_int(e.status, out);
    out.extend_from_slice(b" in=");
    push_int(e.bytes_in, out);
    out.extend_from_slice(b" out=");
    push_int(e.bytes_out, out);
    out.extend_from_slice(b" dur_ms=");
    push_millis(e.duration, out);
    for (before, field) in [
        (&b" host="[..], e.host),
        (b" pool=", e.pool),
        (b" backend=", e.backend),
    ] {
        out.extend_from_slice(before);
        out.extend_from_slice(or_dash(field).as_bytes());
    }
    out.extend_from_slice(b" attempts=");
    push_int(e.attempts, out);
    out.extend_from_slice(b" upstream_status=");
    if e.upstream_status == 0 {
        out.push(b'-');
    } else {
        push_int(e.upstream_status, out);
    }
    out.extend_from_slice(b" id=");
    out.extend_from_slice(or_dash(e.request_id).as_bytes());
}

/// A duration in milliseconds with three decimals (`12.345`), without float formatting.
fn push_millis(d: Duration, out: &mut Vec<u8>) {
    let micros = d.as_micros() as u64;
    push_int(micros / 1000, out);
    out.push(b'.');
    push_padded(micros % 1000, 3, out);
}

/// `n` in `width` digits, zeros in front (`n` has at most `width` digits).
fn push_padded(n: u64, width: usize, out: &mut Vec<u8>) {
    let mut digits = [b'0'; 4];
    let mut n = n;
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

fn json(e: &Entry, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":\"");
    push_rfc3339(e.time.unwrap_or_else(SystemTime::now), out);
    for (key, value) in [
        ("client", e.client),
        ("method", e.method),
        ("host", e.host),
        ("path", e.path),
        ("protocol", e.protocol),
    ] {
        out.extend_from_slice(b"\",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":\"");
        json_escape(value, out);
    }
    out.extend_from_slice(b"\",\"status\":");
    push_int(e.status, out);
    out.extend_from_slice(b",\"bytes_in\":");
    push_int(e.bytes_in, out);
    out.extend_from_slice(b",\"bytes_out\":");
    push_int(e.bytes_out, out);
    out.extend_from_slice(b",\"duration_ms\":");
    push_millis(e.duration, out);
    out.extend_from_slice(b",\"pool\":\"");
    json_escape(e.pool, out);
    out.extend_from_slice(b"\",\"backend\":\"");
    json_escape(e.backend, out);
    out.extend_from_slice(b"\",\"attempts\":");
    push_int(e.attempts, out);
    out.extend_from_slice(b",\"upstream_status\":");
    if e.upstream_status == 0 {
        out.extend_from_slice(b"null");
    } else {
        push_int(e.upstream_status, out);
    }
    out.extend_from_slice(b",\"request_id\":\"");
    json_escape(e.request_id, out);
    out.extend_from_slice(b"\"}");
}

/// A JSON string body: quotes, backslashes and control characters escaped.
fn json_escape(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b if b < 0x20 => {
                out.extend_from_slice(b"\\u00");
                out.push(b"0123456789abcdef"[usize::from(b >> 4)]);
                out.push(b"0123456789abcdef"[usize::from(b & 15)]);
            }
            // UTF-8 bytes of other characters are copied as they are.
            b => out.push(b),
        }
    }
}

thread_local! {
    /// The last second formatted on this thread (`2026-11-22T03:04:05`): a line
    /// formats only its milliseconds while the second lasts.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// `2026-11-22T03:04:05.678Z` (UTC, milliseconds), appended to `out`.
fn push_rfc3339(t: SystemTime, out: &mut Vec<u8>) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != d.as_secs() {
            *cached = (d.as_secs(), civil_second(d.as_secs()));
        }
        out.extend_from_slice(&cached.1);
    });
    out.push(b'.');
    push_padded(u64::from(d.subsec_millis()), 3, out);
    out.push(b'Z');
}

/// `2026-11-22T03:04:05` for `secs` since the epoch.
fn civil_second(secs: u64) -> [u8; 19] {
    let secs = secs as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut s = Vec::with_capacity(19);
    for (n, width, after) in [
        (year, 4, b'-'),
        (month, 2, b'-'),
        (day, 2, b'T'),
        (rem / 3600, 2, b':'),
        (rem % 3600 / 60, 2, b':'),
        (rem % 60, 2, 0),
    ] {
        push_padded(n as u64, width, &mut s);
        if after != 0 {
            s.push(after);
        }
    }
    s.try_into().unwrap_or([b'?'; 19])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        let at = |s: u64, ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
        let rfc3339 = |t| {
            let mut out = Vec::new();
            push_rfc3339(t, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(at(1_795_307_045, 678)), "2026-11-22T00:24:05.678Z");
    }

    #[test]
    fn json_line_is_valid_json_whatever_the_client_sent() {
        let mut out = Vec::new();
        let entry = Entry {
            time: Some(SystemTime::UNIX_EPOCH),
            method: "GET",
            path: "/a\"b\\c\u{1}\n",
            host: "h\u{e9}",
            protocol: "HTTP/1.1",
            status: 200,
            upstream_status: 204,
            duration: Duration::from_micros(1500),
            ..Entry::default()
        };
        json(&entry, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\u{1}\n");
        assert_eq!(v["host"], "h\u{e9}");
        assert_eq!(v["upstream_status"], 204);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        let mut none = Vec::new();
        json(&Entry::default(), &mut none);
        let v: serde_json::Value = serde_json::from_slice(&none).unwrap();
        assert!(v["upstream_status"].is_null());
    }

    #[test]
    fn text_line_has_every_field_and_dashes_for_empty_ones() {
        let mut out = Vec::new();
        text(
            &Entry {
                time: Some(SystemTime::UNIX_EPOCH),
                client: "127.0.0.1:5000",
                method: "GET",
                path: "/a",
                protocol: "HTTP/1.1",
                status: 404,
                attempts: 0,
                ..Entry::default()
            },
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000Z 127.0.0.1:5000 \"GET /a HTTP/1.1\" 404 in=0 out=0 dur_ms=0.000 host=- pool=- backend=- attempts=0 upstream_status=- id=-"
        );
    }

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
