//! The access log: one line per request, text or JSON, written off the request path.
//!
//! The request path only builds an [`Entry`] and hands it to a bounded queue with
//! `try_send`: when the writer falls behind, entries are dropped and counted in
//! `vigil_access_log_dropped_total`, and no request ever waits for the disk. One writer
//! thread, started when a format is first set, wakes every [`DRAIN_EVERY`] and formats
//! and writes whatever is queued in one batch: a request never wakes it (a wake-up per
//! line cost more than the line itself), and a line reaches the file within that time.
//! It reopens the file on SIGUSR1 (logrotate moves the old file away first).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use vigil_conf::{AccessLogConfig, AccessLogFormat};

/// Entries waiting for the writer; beyond this they are dropped (and counted). With
/// [`DRAIN_EVERY`] that is ~800,000 lines a second before any is dropped.
const QUEUE: usize = 8 * 1024;
/// How often the writer drains the queue.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// What one request leaves in the log.
#[derive(Debug, Default)]
pub struct Entry {
    pub time: Option<SystemTime>,
    pub client: String,
    pub method: String,
    pub host: String,
    pub path: String,
    pub protocol: &'static str,
    pub status: u16,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub duration: Duration,
    /// Shared with the routing snapshot: no copy per request.
    pub pool: Arc<str>,
    pub backend: Arc<str>,
    pub attempts: usize,
    /// 0 when no backend answered.
    pub upstream_status: u16,
    pub request_id: String,
}

/// Settings the writer reads on every line, so a reload changes them in place.
struct Shared {
    /// [`AccessLogFormat`] as a number; `Off` means the request path builds nothing.
    format: AtomicU8,
    path: Mutex<Option<PathBuf>>,
    reopen: AtomicBool,
}

pub struct AccessLog {
    shared: Arc<Shared>,
    /// Set when a format is first configured; the thread and queue exist from then on.
    queue: std::sync::OnceLock<SyncSender<Entry>>,
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
            }),
            queue: std::sync::OnceLock::new(),
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
        if config.format != AccessLogFormat::Off && self.queue.get().is_none() {
            let (queue, rx) = sync_channel(QUEUE);
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("vigil-access-log".into())
                .spawn(move || write_loop(rx, &shared))?;
            let _ = self.queue.set(queue);
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

    /// Queues `entry` without waiting; drops and counts it when the queue is full.
    pub fn log(&self, entry: Entry) {
        let Some(queue) = self.queue.get() else {
            return;
        };
        match queue.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Reopens the file before the next line (SIGUSR1, after logrotate renamed it).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::SeqCst);
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

fn write_loop(rx: Receiver<Entry>, shared: &Shared) {
    let mut sink = Sink::open(&shared.path.lock().unwrap().clone());
    let mut line = String::with_capacity(512);
    loop {
        std::thread::sleep(DRAIN_EVERY);
        if shared.reopen.swap(false, Ordering::SeqCst) {
            let _ = sink.writer().flush();
            sink = Sink::open(&shared.path.lock().unwrap().clone());
        }
        let format = shared.format.load(Ordering::Relaxed);
        let mut wrote = false;
        loop {
            let entry = match rx.try_recv() {
                Ok(e) => e,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = sink.writer().flush();
                    return;
                }
            };
            line.clear();
            match format {
                1 => text(&entry, &mut line),
                2 => json(&entry, &mut line),
                _ => continue,
            }
            line.push('\n');
            let _ = sink.writer().write_all(line.as_bytes());
            wrote = true;
        }
        if wrote {
            let _ = sink.writer().flush();
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

fn text(e: &Entry, out: &mut String) {
    use std::fmt::Write as _;
    // Pushed piece by piece: `write!` with a float and an allocated status per line
    // was most of the writer's time.
    push_rfc3339(e.time.unwrap_or_else(SystemTime::now), out);
    out.push(' ');
    out.push_str(or_dash(&e.client));
    out.push_str(" \"");
    out.push_str(or_dash(&e.method));
    out.push(' ');
    out.push_str(or_dash(&e.path));
    out.push(' ');
    out.push_str(e.protocol);
    let _ = write!(
        out,
        "\" {} in={} out={} dur_ms=",
        e.status, e.bytes_in, e.bytes_out
    );
    push_millis(e.duration, out);
    out.push_str(" host=");
    out.push_str(or_dash(&e.host));
    out.push_str(" pool=");
    out.push_str(or_dash(&e.pool));
    out.push_str(" backend=");
    out.push_str(or_dash(&e.backend));
    let _ = write!(out, " attempts={} upstream_status=", e.attempts);
    if e.upstream_status == 0 {
        out.push('-');
    } else {
        let _ = write!(out, "{}", e.upstream_status);
    }
    out.push_str(" id=");
    out.push_str(or_dash(&e.request_id));
}

/// A duration in milliseconds with three decimals (`12.345`), without float formatting.
fn push_millis(d: Duration, out: &mut String) {
    use std::fmt::Write as _;
    let micros = d.as_micros();
    let _ = write!(out, "{}.{:03}", micros / 1000, micros % 1000);
}

fn json(e: &Entry, out: &mut String) {
    use std::fmt::Write as _;
    out.push_str("{\"time\":\"");
    push_rfc3339(e.time.unwrap_or_else(SystemTime::now), out);
    for (key, value) in [
        ("client", e.client.as_str()),
        ("method", &e.method),
        ("host", &e.host),
        ("path", &e.path),
        ("protocol", e.protocol),
    ] {
        let _ = write!(out, "\",\"{key}\":\"");
        json_escape(value, out);
    }
    let _ = write!(
        out,
        "\",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":",
        e.status, e.bytes_in, e.bytes_out
    );
    push_millis(e.duration, out);
    out.push_str(",\"pool\":\"");
    json_escape(&e.pool, out);
    out.push_str("\",\"backend\":\"");
    json_escape(&e.backend, out);
    let _ = write!(out, "\",\"attempts\":{},\"upstream_status\":", e.attempts);
    if e.upstream_status == 0 {
        out.push_str("null");
    } else {
        let _ = write!(out, "{}", e.upstream_status);
    }
    out.push_str(",\"request_id\":\"");
    json_escape(&e.request_id, out);
    out.push_str("\"}");
}

/// A JSON string body: quotes, backslashes and control characters escaped.
fn json_escape(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// `2026-11-22T03:04:05.678Z` (UTC, milliseconds), appended to `out`.
fn push_rfc3339(t: SystemTime, out: &mut String) {
    use std::fmt::Write as _;
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
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
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        let at = |s: u64, ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
        let rfc3339 = |t| {
            let mut out = String::new();
            push_rfc3339(t, &mut out);
            out
        };
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(at(1_795_307_045, 678)), "2026-11-22T00:24:05.678Z");
    }

    #[test]
    fn json_line_is_valid_json_whatever_the_client_sent() {
        let mut out = String::new();
        let entry = Entry {
            time: Some(SystemTime::UNIX_EPOCH),
            method: "GET".into(),
            path: "/a\"b\\c\u{1}\n".into(),
            host: "h\u{e9}".into(),
            protocol: "HTTP/1.1",
            status: 200,
            upstream_status: 204,
            duration: Duration::from_micros(1500),
            ..Entry::default()
        };
        json(&entry, &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\u{1}\n");
        assert_eq!(v["host"], "h\u{e9}");
        assert_eq!(v["upstream_status"], 204);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        let mut none = String::new();
        json(&Entry::default(), &mut none);
        let v: serde_json::Value = serde_json::from_str(&none).unwrap();
        assert!(v["upstream_status"].is_null());
    }

    #[test]
    fn text_line_has_every_field_and_dashes_for_empty_ones() {
        let mut out = String::new();
        text(
            &Entry {
                time: Some(SystemTime::UNIX_EPOCH),
                client: "127.0.0.1:5000".into(),
                method: "GET".into(),
                path: "/a".into(),
                protocol: "HTTP/1.1",
                status: 404,
                attempts: 0,
                ..Entry::default()
            },
            &mut out,
        );
        assert_eq!(
            out,
            "1970-01-01T00:00:00.000Z 127.0.0.1:5000 \"GET /a HTTP/1.1\" 404 in=0 out=0 dur_ms=0.000 host=- pool=- backend=- attempts=0 upstream_status=- id=-"
        );
    }
}
