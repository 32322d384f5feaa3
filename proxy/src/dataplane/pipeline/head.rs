//! Reading an HTTP/1 request head where it lies in the client's buffer: is it whole,
//! does vigil's loop carry it, where does it go, and what goes upstream.

mod line;

use super::fields::Text;
use super::framing::Framing;
use super::h2::StreamHead;
use super::upstream::{h2_head, Forward, H2Head, Target, Upstream};
use super::MAX_HEADERS;
use crate::dataplane::request::{idempotent_method, new_request_id, valid_host};
use crate::dataplane::routing::{normalize_host, RoutingTable};
use line::{Line, Source};
use pingora::protocols::http::v1::server::HeadLimitValues;
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
    /// The head to send upstream (empty for a `protocol: h2` pool's, in `h2_head`),
    /// with room for a body held whole.
    pub upstream: Vec<u8>,
    /// For a `protocol: h2` pool: the same head as HTTP/2 fields. (None also when a
    /// field cannot be carried by HTTP/2: the attempt then fails, as the backend's
    /// codec cannot send it.)
    pub h2_head: Option<Box<H2Head>>,
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
    /// An HTTP/2 stream's request (`Env::h2`).
    pub h2: bool,
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

impl RequestBody {
    /// Bytes held whole (sent with the head).
    fn held(self) -> usize {
        match self {
            RequestBody::Held(n) => n,
            _ => 0,
        }
    }
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

/// Parses the head at the start of `buf` and decides how the request goes.
pub(super) fn parse(buf: &[u8], env: &Env) -> Head {
    let mut slots = [MaybeUninit::<httparse::Header>::uninit(); MAX_HEADERS];
    match Line::parse(buf, env, &mut slots) {
        Ok(line) => decide(Source::Text(&buf[..line.len]), line, env),
        Err(head) => head,
    }
}

/// Decides how an HTTP/2 stream's request goes, from its head's fields: as `parse`
/// decides for the same head written as HTTP/1.1 (`StreamHead::text`), which is not
/// written.
pub(super) fn parse_stream(head: &StreamHead, env: &Env) -> Head {
    let headers = head.headers();
    match Line::of_stream(head, &headers, env) {
        Ok(line) => decide(Source::Stream(head), line, env),
        Err(other) => other,
    }
}

/// Decides how the request whose head is `line`, read from `source`, goes.
fn decide(source: Source, line: Line, env: &Env) -> Head {
    let Line {
        len,
        http10,
        method,
        target,
        headers,
    } = line;
    let Some(mut fields) = Fields::scan(headers, env, http10) else {
        return Head::Other;
    };
    let body = fields.body();
    // A refusal with a body left unread closes the connection.
    let unread = body != RequestBody::None;
    let head = method == "HEAD";
    let mut log = env
        .logging
        .then(|| log_head(method, target, &fields, env, http10));
    let mut refused = |status, body, close: bool, route| {
        Head::Refused(Refusal {
            len,
            status,
            body,
            close: close || fields.close,
            head,
            route,
            log: log.take(),
        })
    };
    let host = match fields.host(http10) {
        Ok(host) => host,
        Err(why) => return refused(400, why, true, None),
    };
    // Routed by the normalized path, which the backend receives too (unless the pool
    // forwards the client's own target).
    let raw_path = target.split_once('?').map_or(target, |(p, _)| p);
    let path = match crate::dataplane::path::normalize(raw_path) {
        Ok(p) => p,
        Err(why) => return refused(400, why.body(), unread, None),
    };
    let table = env.table.clone();
    let Some(pool) = table.route_index(&normalize_host(host), &path) else {
        return refused(404, r#"{"error":"no route"}"#, unread, None);
    };
    let config = &table.pools[pool].config;
    if let (Some(max), Some(n)) = (env.body_bytes, fields.length) {
        if n > max && !fields.chunked {
            let route = Some((table.clone(), pool));
            return refused(413, r#"{"error":"request body too large"}"#, true, route);
        }
    }
    // RFC 9110 §7.8: an upgrade needs both the header and the `Connection` token.
    fields.upgrade = fields.upgrade.filter(|_| fields.upgrade_token && !http10);
    let hash_key = hash_key(config, headers, &path, env);
    let target = match &path {
        std::borrow::Cow::Owned(normal) if !config.forward_original_path => Target {
            path: normal,
            query: &target[raw_path.len()..],
        },
        _ => Target {
            path: target,
            query: "",
        },
    };
    let generated_id = log.as_ref().filter(|_| fields.request_id.is_none());
    let id = generated_id.map(|l| l.request_id.as_str());
    let h2 = config.protocol == vigil_conf::Protocol::H2;
    let (up, h2) = upstream_head(method, target, headers, source, body, h2, || {
        fields.forward(host, env, id)
    });
    Head::Request(Request {
        len,
        upstream: up,
        h2_head: h2.map(Box::new),
        head,
        idempotent: idempotent_method(method),
        body,
        close: fields.close,
        http10,
        upgrade: fields.upgrade.is_some(),
        continue_100: fields.continue_100,
        h2: env.h2,
        table,
        pool,
        hash_key,
        log,
    })
}

/// The head sent upstream, written for an HTTP/1.1 backend (with room for a body held
/// whole); for a `protocol: h2` pool (`h2`), made as HTTP/2 fields instead, cut from
/// what the client's head was read from (the text left empty; written after all when a
/// field cannot be carried by HTTP/2: the attempt then fails).
fn upstream_head<'a>(
    method: &str,
    target: Target,
    headers: &[httparse::Header],
    source: Source,
    body: RequestBody,
    h2: bool,
    forward: impl Fn() -> Forward<'a>,
) -> (Vec<u8>, Option<H2Head>) {
    let framing = match body {
        RequestBody::None => Framing::Empty,
        RequestBody::Held(n) => Framing::Length(n as u64),
        RequestBody::Streamed(framing) => framing,
    };
    let fields = h2
        .then(|| h2_head(method, target, headers, forward(), &source.cut(), framing))
        .flatten();
    match fields {
        Some(fields) => (Vec::with_capacity(body.held()), Some(fields)),
        None => {
            let text = Upstream::with_capacity(source.len() + 128 + body.held());
            (text.head(method, target, headers, forward()), None)
        }
    }
}

/// What the loop reads from a head's fields, in one pass over them.
struct Fields<'a> {
    host: Option<&'a [u8]>,
    hosts: usize,
    /// The client's connection closes after this answer.
    close: bool,
    /// `upgrade` among the `Connection` tokens.
    upgrade_token: bool,
    upgrade: Option<&'a [u8]>,
    continue_100: bool,
    length: Option<u64>,
    chunked: bool,
    /// Headers `Connection` names: hop-by-hop, not passed on.
    named: Vec<&'a [u8]>,
    /// Every X-Forwarded-For line: the chain continues from all of them.
    xff: Vec<&'a [u8]>,
    /// With the access log on: the client's request id, as on Pingora's path.
    request_id: Option<&'a str>,
}

impl<'a> Fields<'a> {
    /// None for framing the loop leaves to Pingora's parser: a second or listed
    /// length, a coding other than `chunked` alone.
    fn scan(headers: &[httparse::Header<'a>], env: &Env, http10: bool) -> Option<Fields<'a>> {
        let mut f = Fields {
            host: None,
            hosts: 0,
            close: false,
            upgrade_token: false,
            upgrade: None,
            continue_100: false,
            length: None,
            chunked: false,
            named: Vec::new(),
            xff: Vec::new(),
            request_id: None,
        };
        let mut keep_alive = false;
        for h in headers {
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                f.hosts += 1;
                f.host = Some(h.value);
            } else if name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        f.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        f.upgrade_token = true;
                    } else if !token.is_empty() {
                        f.named.push(token);
                    }
                }
            } else if name.eq_ignore_ascii_case("content-length") {
                // One plain length; anything else (a list, a second line) is for
                // Pingora's parser to judge.
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .filter(|v| {
                        !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit())
                    })
                    .and_then(|v| v.parse().ok());
                match (n, f.length) {
                    (Some(n), None) => f.length = Some(n),
                    _ => return None,
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // `chunked` alone, on HTTP/1.1; any other coding is Pingora's to refuse.
                if f.chunked || http10 || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return None;
                }
                f.chunked = true;
            } else if name.eq_ignore_ascii_case("upgrade") {
                f.upgrade = Some(h.value);
            } else if name.eq_ignore_ascii_case("expect") {
                f.continue_100 =
                    !http10 && h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            } else if name.eq_ignore_ascii_case("x-forwarded-for") {
                f.xff.push(h.value);
            } else if env.logging
                && f.request_id.is_none()
                && name.eq_ignore_ascii_case("x-request-id")
            {
                f.request_id = std::str::from_utf8(h.value).ok().filter(|v| !v.is_empty());
            }
        }
        // HTTP/1.0 keeps its connection only when it asks to.
        f.close |= http10 && !keep_alive;
        Some(f)
    }

    /// How the body is framed and carried.
    fn body(&mut self) -> RequestBody {
        match (self.chunked, self.length) {
            // Chunked framing wins over a length, and the connection closes after the
            // answer: bytes after the chunked body are never a request (smuggling).
            (true, _) => {
                self.close |= self.length.is_some();
                RequestBody::Streamed(Framing::Chunked)
            }
            (false, None | Some(0)) => RequestBody::None,
            (false, Some(n)) if n <= RETRY_BUFFER as u64 => RequestBody::Held(n as usize),
            (false, Some(n)) => RequestBody::Streamed(Framing::Length(n)),
        }
    }

    /// What the head sent upstream takes from these fields.
    fn forward<'b>(&'b self, host: &'b str, env: &Env<'b>, id: Option<&'b str>) -> Forward<'b> {
        Forward {
            named: &self.named,
            xff: &self.xff,
            upgrade: self.upgrade,
            host: (self.hosts == 1).then_some(host),
            client: env.client,
            https: env.https,
            drop_request_id: env.logging && self.request_id.is_none(),
            generated_id: id,
        }
    }

    /// RFC 9112 §3.2: exactly one Host on HTTP/1.1, and a host and an optional port.
    /// The refusal's JSON body when not.
    fn host(&self, http10: bool) -> Result<&'a str, &'static str> {
        match (
            self.hosts,
            self.host.and_then(|h| std::str::from_utf8(h).ok()),
        ) {
            (0, _) if http10 => Ok(""),
            (0, _) => Err(r#"{"error":"HTTP/1.1 request without Host"}"#),
            (1, Some(h)) if valid_host(h.as_bytes()) => Ok(h),
            (1, _) => Err(r#"{"error":"invalid Host header"}"#),
            _ => Err(r#"{"error":"more than one Host header"}"#),
        }
    }
}

fn log_head(method: &str, target: &str, f: &Fields, env: &Env, http10: bool) -> Box<LogHead> {
    Box::new(LogHead {
        method: method.to_string(),
        host: f
            .host
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .unwrap_or_default(),
        target: target.to_string(),
        request_id: f.request_id.map_or_else(new_request_id, str::to_string),
        protocol: match (env.h2, http10) {
            (true, _) => "HTTP/2.0",
            (false, true) => "HTTP/1.0",
            (false, false) => "HTTP/1.1",
        },
    })
}

/// The request's key for its pool's `hash_key`; empty without one.
fn hash_key(
    config: &vigil_conf::PoolConfig,
    headers: &[httparse::Header],
    path: &str,
    env: &Env,
) -> Vec<u8> {
    match &config.hash_key {
        None => Vec::new(),
        Some(HashKey::Header(key)) => headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(key))
            .map(|h| h.value.to_vec())
            .unwrap_or_default(),
        Some(HashKey::Path) => path.as_bytes().to_vec(),
        Some(HashKey::ClientIp) => env
            .client
            .map(|ip| ip.as_bytes().to_vec())
            .unwrap_or_default(),
    }
}
