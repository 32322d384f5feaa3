//! The access log's line: an [`Entry`] as text or as JSON, written by hand into the
//! thread's buffer (no allocation per line; a second's date is formatted once).

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

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

pub(super) fn text(e: &Entry, out: &mut Vec<u8>) {
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

pub(super) fn json(e: &Entry, out: &mut Vec<u8>) {
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
}
