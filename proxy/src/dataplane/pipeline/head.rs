//! Reading an HTTP/1 request head where it lies in the client's buffer: is it whole,
//! does vigil's loop carry it, where does it go, and what goes upstream.

use super::framing::Framing;
use super::MAX_HEADERS;
use crate::dataplane::request::{idempotent_method, new_request_id, valid_host, HOP_BY_HOP};
use crate::dataplane::routing::{normalize_host, RoutingTable};
use pingora::protocols::http::v1::server::HeadLimitValues;
use std::io::Write;
use std::mem::MaybeUninit;
use std::sync::Arc;
use vigil_conf::HashKey;

/// The longest request body held whole, so that its request may be sent again after a
/// failed attempt; a longer one (or a chunked one) is streamed to the backend as it
/// arrives, and then not sent twice.
pub(super) const RETRY_BUFFER: usize = 64 * 1024;

/// A request head, read and checked: all the loop needs to carry the request.
pub(super) struct Request {
    /// Bytes of the client's buffer the head took.
    pub len: usize,
    /// The head to send upstream.
    pub upstream: Vec<u8>,
    /// A `HEAD` request: the answer has no body.
    pub head: bool,
    /// Its method may be sent twice (RFC 9110 §9.2.2).
    pub idempotent: bool,
    pub body: RequestBody,
    /// The client's connection closes after this answer.
    pub close: bool,
    /// An HTTP/1.0 client.
    pub http10: bool,
    /// It asks to switch protocols (`Upgrade` and `Connection: upgrade`).
    pub upgrade: bool,
    /// `Expect: 100-continue`: vigil answers `100 Continue` itself.
    pub continue_100: bool,
    pub table: Arc<RoutingTable>,
    pub pool: usize,
    pub hash_key: Vec<u8>,
    /// What the access log needs of the head; None while the log is off.
    pub log: Option<Box<LogHead>>,
}

/// The body that follows a request head.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum RequestBody {
    None,
    /// A `Content-Length` of at most `RETRY_BUFFER`: read whole, sent with the head.
    Held(usize),
    /// A longer length, or chunked: copied upstream as it arrives.
    Streamed(Framing),
}

/// The parts of a request head its access-log line shows.
pub(super) struct LogHead {
    pub method: String,
    pub host: String,
    pub target: String,
    pub request_id: String,
    pub protocol: &'static str,
}

pub(super) enum Head {
    /// More bytes are needed.
    Partial,
    Request(Request),
    /// Answered without calling a backend: the status and its JSON body; the
    /// connection closes after it when `close`.
    Refused(Refusal),
    /// For Pingora's proxy: a head its parser judges (malformed, over a limit, a form
    /// of target or framing the loop does not carry), or one for an HTTP/2 pool.
    Other,
}

/// A request answered without calling a backend.
pub(super) struct Refusal {
    /// Bytes of the client's buffer the head took.
    pub len: usize,
    pub status: u16,
    /// Its JSON body.
    pub body: &'static str,
    /// The connection closes after it (a body is left unread, or the head is broken).
    pub close: bool,
    /// A `HEAD`: the answer has no body.
    pub head: bool,
    /// The pool it was routed to, if it was.
    pub route: Option<(Arc<RoutingTable>, usize)>,
    pub log: Option<Box<LogHead>>,
}

/// What the head parser needs to know besides the bytes.
pub(super) struct Env<'a> {
    pub limits: &'a HeadLimitValues,
    pub table: Arc<RoutingTable>,
    /// The client's IP address as text (formatted once per connection).
    pub client: Option<&'a str>,
    pub https: bool,
    pub logging: bool,
    pub body_bytes: Option<u64>,
    /// The head is an HTTP/2 stream's (written as HTTP/1.1 by `h2::H2Client`).
    pub h2: bool,
}

/// Request headers never copied upstream as they came, besides the hop-by-hop ones
/// (`HOP_BY_HOP`; an upgrade's own pair is written again): HTTP/2's upgrade settings,
/// `Expect` (vigil answers `100 Continue` itself), and the three `x-forwarded-*` vigil
/// writes itself.
const NOT_FORWARDED: [&str; 5] = [
    "http2-settings",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Bytes of an origin-form target passed on as they are (RFC 3986 pchar, `/`, `?` and
/// `%`); a target with any other byte is Pingora's parser's to judge.
fn uri_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// Parses the head at the start of `buf` and decides how the request goes.
pub(super) fn parse(buf: &[u8], env: &Env) -> Head {
    let limits = env.limits;
    let mut slots = [MaybeUninit::<httparse::Header>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let max = limits.max_headers.min(MAX_HEADERS);
    let len = match req.parse_with_uninit_headers(buf, &mut slots[..max]) {
        Ok(httparse::Status::Complete(len)) if len <= limits.max_bytes => len,
        Ok(httparse::Status::Partial) if buf.len() <= limits.max_bytes => return Head::Partial,
        // Too long, too many headers, malformed: Pingora's parser judges it (400, 431).
        _ => return Head::Other,
    };
    let http10 = match req.version {
        Some(1) => false,
        Some(0) => true,
        _ => return Head::Other,
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Head::Other;
    };
    // CONNECT, absolute- or asterisk-form targets (a forward proxy's) and targets with
    // bytes outside RFC 3986 are Pingora's.
    if method == "CONNECT" || !target.starts_with('/') || !target.bytes().all(uri_byte) {
        return Head::Other;
    }
    let head = method == "HEAD";
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let raw_path_len = path.len();
    let mut host = None;
    let mut hosts = 0;
    let (mut close, mut keep_alive) = (false, false);
    let mut upgrade_token = false;
    let mut upgrade: Option<&[u8]> = None;
    let mut continue_100 = false;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    // Headers `Connection` names: hop-by-hop, not passed on.
    let mut named: Vec<&[u8]> = Vec::new();
    // Every X-Forwarded-For line: the chain continues from all of them.
    let mut xff: Vec<&[u8]> = Vec::new();
    // With the access log on: the client's request id, as on Pingora's path.
    let mut request_id: Option<&str> = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = Some(h.value);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    upgrade_token = true;
                } else if !token.is_empty() {
                    named.push(token);
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            // One plain length; anything else (a list, a second line) is for
            // Pingora's parser to judge.
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok());
            match (n, length) {
                (Some(n), None) => length = Some(n),
                _ => return Head::Other,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // `chunked` alone, on HTTP/1.1; any other coding is Pingora's to refuse.
            if chunked || http10 || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Head::Other;
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = Some(h.value);
        } else if name.eq_ignore_ascii_case("expect") {
            continue_100 = !http10 && h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            xff.push(h.value);
        } else if env.logging && request_id.is_none() && name.eq_ignore_ascii_case("x-request-id") {
            request_id = std::str::from_utf8(h.value).ok().filter(|v| !v.is_empty());
        }
    }
    // HTTP/1.0 keeps its connection only when it asks to.
    close |= http10 && !keep_alive;
    let body = match (chunked, length) {
        // Chunked framing wins over a length, and the connection closes after the
        // answer: bytes after the chunked body are never a request (smuggling).
        (true, _) => {
            close |= length.is_some();
            RequestBody::Streamed(Framing::Chunked)
        }
        (false, None | Some(0)) => RequestBody::None,
        (false, Some(n)) if n <= RETRY_BUFFER as u64 => RequestBody::Held(n as usize),
        (false, Some(n)) => RequestBody::Streamed(Framing::Length(n)),
    };
    // A refusal with a body left unread closes the connection.
    let unread = body != RequestBody::None;
    let generated_id = env.logging && request_id.is_none();
    let mut log = env.logging.then(|| {
        Box::new(LogHead {
            method: method.to_string(),
            host: host
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .unwrap_or_default(),
            target: target.to_string(),
            request_id: request_id.map_or_else(new_request_id, str::to_string),
            protocol: match (env.h2, http10) {
                (true, _) => "HTTP/2.0",
                (false, true) => "HTTP/1.0",
                (false, false) => "HTTP/1.1",
            },
        })
    });
    let asked_close = close;
    let mut refused = |status, body, close: bool, route| {
        Head::Refused(Refusal {
            len,
            status,
            body,
            close: close || asked_close,
            head,
            route,
            log: log.take(),
        })
    };
    // RFC 9112 §3.2: exactly one Host on HTTP/1.1, and a host and an optional port.
    let host = match (hosts, host.and_then(|h| std::str::from_utf8(h).ok())) {
        (0, _) if http10 => "",
        (0, _) => {
            return refused(
                400,
                r#"{"error":"HTTP/1.1 request without Host"}"#,
                true,
                None,
            )
        }
        (1, Some(h)) if valid_host(h.as_bytes()) => h,
        (1, _) => return refused(400, r#"{"error":"invalid Host header"}"#, true, None),
        _ => return refused(400, r#"{"error":"more than one Host header"}"#, true, None),
    };
    // Routed by the normalized path, which the backend receives too (unless the pool
    // forwards the client's own target).
    let path = match crate::dataplane::path::normalize(path) {
        Ok(p) => p,
        Err(why) => return refused(400, why.body(), unread, None),
    };
    let table = env.table.clone();
    let Some(pool) = table.route_index(&normalize_host(host), &path) else {
        return refused(404, r#"{"error":"no route"}"#, unread, None);
    };
    let config = &table.pools[pool].config;
    if config.protocol != vigil_conf::Protocol::Http1 {
        return Head::Other;
    }
    if let (Some(max), Some(n)) = (env.body_bytes, length) {
        if n > max && !chunked {
            let route = Some((table.clone(), pool));
            return refused(413, r#"{"error":"request body too large"}"#, true, route);
        }
    }
    // RFC 9110 §7.8: an upgrade needs both the header and the `Connection` token.
    let upgrade = upgrade.filter(|_| upgrade_token && !http10);
    let hash_key = match &config.hash_key {
        None => Vec::new(),
        Some(HashKey::Header(key)) => req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(key))
            .map(|h| h.value.to_vec())
            .unwrap_or_default(),
        Some(HashKey::Path) => path.as_bytes().to_vec(),
        Some(HashKey::ClientIp) => env
            .client
            .map(|ip| ip.as_bytes().to_vec())
            .unwrap_or_default(),
    };
    // The same headers as `forward_headers` on Pingora's path.
    // Room for a body held whole too: it is appended to this head, once read.
    let held = match body {
        RequestBody::Held(n) => n,
        _ => 0,
    };
    let mut up = Vec::with_capacity(len + 128 + held);
    up.extend_from_slice(method.as_bytes());
    up.push(b' ');
    match path {
        std::borrow::Cow::Owned(normal) if !config.forward_original_path => {
            up.extend_from_slice(normal.as_bytes());
            up.extend_from_slice(&target.as_bytes()[raw_path_len..]);
        }
        _ => up.extend_from_slice(target.as_bytes()),
    }
    up.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        // An empty request id is replaced by ours, as on Pingora's path.
        let empty_id =
            env.logging && request_id.is_none() && h.name.eq_ignore_ascii_case("x-request-id");
        let dropped = empty_id
            || HOP_BY_HOP
                .iter()
                .chain(&NOT_FORWARDED)
                .any(|n| h.name.eq_ignore_ascii_case(n))
            || named.iter().any(|n| name.eq_ignore_ascii_case(n));
        if !dropped {
            up.extend_from_slice(name);
            up.extend_from_slice(b": ");
            up.extend_from_slice(h.value);
            up.extend_from_slice(b"\r\n");
        }
    }
    if let Some(protocol) = upgrade {
        // The one hop-by-hop pair that is the request itself.
        up.extend_from_slice(b"connection: upgrade\r\nupgrade: ");
        up.extend_from_slice(protocol);
        up.extend_from_slice(b"\r\n");
    }
    if let Some(ip) = env.client {
        up.extend_from_slice(b"x-forwarded-for: ");
        // As on Pingora's path: values it can read as text, trimmed, empty ones left out.
        for prev in xff
            .iter()
            .map(|v| v.trim_ascii())
            .filter(|v| !v.is_empty() && v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)))
        {
            up.extend_from_slice(prev);
            up.extend_from_slice(b", ");
        }
        up.extend_from_slice(ip.as_bytes());
        up.extend_from_slice(b"\r\n");
    }
    up.extend_from_slice(if env.https {
        b"x-forwarded-proto: https\r\n"
    } else {
        b"x-forwarded-proto: http\r\n"
    });
    if hosts == 1 {
        up.extend_from_slice(b"x-forwarded-host: ");
        up.extend_from_slice(host.as_bytes());
        up.extend_from_slice(b"\r\n");
    }
    if generated_id {
        if let Some(log) = &log {
            let _ = write!(up, "x-request-id: {}\r\n", log.request_id);
        }
    }
    up.extend_from_slice(b"\r\n");
    Head::Request(Request {
        len,
        upstream: up,
        head,
        idempotent: idempotent_method(method),
        body,
        close,
        http10,
        upgrade: upgrade.is_some(),
        continue_100,
        table,
        pool,
        hash_key,
        log,
    })
}
