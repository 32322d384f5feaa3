//! The head a request loop request is sent upstream with, written into one buffer:
//! the client's fields less those that concern one connection or that vigil writes
//! itself, then the forwarded fields — the same as `forward_headers` on Pingora's path.
//! For a `protocol: h2` backend the same head is made as HTTP/2 fields (`H2Head`),
//! handed to its stream's codec (`h2::H2Upstream::hand`) instead of written as text
//! and read back.

use super::fields::Cut;
use super::framing::Framing;
use crate::dataplane::request::HOP_BY_HOP;
use bytes::Bytes;

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

/// What the head sent upstream takes from the request besides its fields.
pub(super) struct Forward<'a> {
    /// Fields the client's `Connection` named: hop-by-hop, not passed on.
    pub named: &'a [&'a [u8]],
    /// The client's `X-Forwarded-For` lines: the chain continues from all of them.
    pub xff: &'a [&'a [u8]],
    /// An upgrade asked for (the `Upgrade` value), written again as its own pair.
    pub upgrade: Option<&'a [u8]>,
    /// The one Host the request had, for `x-forwarded-host`.
    pub host: Option<&'a str>,
    /// The client's IP address, for `x-forwarded-for`.
    pub client: Option<&'a str>,
    pub https: bool,
    /// The client's `x-request-id` is empty and is replaced by ours.
    pub drop_request_id: bool,
    /// The request id vigil made up, sent upstream.
    pub generated_id: Option<&'a str>,
}

/// Fields of an HTTP/1.1 head that have no place in an HTTP/2 one (RFC 9113 §8.2.2),
/// with `host`, which becomes `:authority`; those `HOP_BY_HOP` leaves out already are
/// not repeated.
const NOT_IN_H2: [&str; 2] = ["transfer-encoding", "host"];

const XFF: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const XFP: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
const XFH: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");
const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A request head for a `protocol: h2` backend, as fields: what `Upstream::head`
/// writes for an HTTP/1.1 backend, less what HTTP/2 has no place for. Values share the
/// copy of the client's head they were cut from, or are an HTTP/2 client's own.
#[derive(Clone, Debug)]
pub(super) struct H2Head {
    pub method: http::Method,
    /// The target: path and query.
    pub target: Bytes,
    /// The `Host`, for `:authority` (the backend's address stands in without one).
    pub host: Option<Bytes>,
    pub headers: http::HeaderMap,
    /// How the body that follows is framed (as the loop writes it).
    pub framing: Framing,
}

/// The target sent upstream: a path and the query as it came.
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
    pub path: &'a str,
    pub query: &'a str,
}

/// The head sent upstream, written into one buffer (with room for a body held whole,
/// appended once read).
pub(super) struct Upstream(Vec<u8>);

/// Whether `Upstream::head` leaves the field `name` out (`f`: the request's).
fn dropped(name: &str, f: &Forward) -> bool {
    // An empty request id is replaced by ours, as on Pingora's path.
    (f.drop_request_id && name.eq_ignore_ascii_case("x-request-id"))
        || HOP_BY_HOP
            .iter()
            .chain(&NOT_FORWARDED)
            .any(|n| name.eq_ignore_ascii_case(n))
        || f.named
            .iter()
            .any(|n| name.as_bytes().eq_ignore_ascii_case(n))
}

/// The `x-forwarded-for` value: the client's chain (values it can read as text,
/// trimmed, empty ones left out, as on Pingora's path), then the client.
fn forwarded_for(xff: &[&[u8]], ip: &str, out: &mut Vec<u8>) {
    for prev in xff
        .iter()
        .map(|v| v.trim_ascii())
        .filter(|v| !v.is_empty() && v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)))
    {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ip.as_bytes());
}

/// The head `Upstream::head` would write, as HTTP/2 fields (`H2Head`): the same fields
/// in the same order, less HTTP/1.1's connection-specific ones and `Host`, and with
/// gRPC's `te: trailers`, which it requires of every request. `cut`: what the names
/// and values are cut from (a copy of the client's head, or an HTTP/2 stream's own
/// fields); `framing`: the body's. None when a field cannot be carried by HTTP/2.
pub(super) fn h2_head(
    method: &str,
    target: Target,
    headers: &[httparse::Header],
    f: Forward,
    cut: &Cut,
    framing: Framing,
) -> Option<H2Head> {
    let mut map = http::HeaderMap::with_capacity(headers.len() + 4);
    let (mut host, mut grpc) = (None, false);
    for (i, h) in headers.iter().enumerate() {
        if dropped(h.name, &f) {
            continue;
        }
        let name = cut.name(i, h).ok()?;
        if name == http::header::HOST {
            host = Some(cut.share(h.value));
        } else if name == http::header::CONTENT_TYPE {
            grpc = h.value.starts_with(b"application/grpc");
        }
        // A length beside chunked framing is not the body's (HTTP/2 frames it).
        let stale_length = name == http::header::CONTENT_LENGTH && framing == Framing::Chunked;
        if stale_length || NOT_IN_H2.contains(&name.as_str()) {
            continue;
        }
        map.append(name, cut.value(i, h).ok()?);
    }
    if let Some(ip) = f.client {
        let mut chain = Vec::with_capacity(ip.len());
        forwarded_for(f.xff, ip, &mut chain);
        let value = http::HeaderValue::from_maybe_shared(Bytes::from(chain)).ok()?;
        map.append(XFF, value);
    }
    let scheme = if f.https { "https" } else { "http" };
    map.append(XFP, http::HeaderValue::from_static(scheme));
    if let Some(h) = f.host {
        let value = http::HeaderValue::from_str(h).ok()?;
        map.append(XFH, value);
    }
    if let Some(id) = f.generated_id {
        let value = http::HeaderValue::from_str(id).ok()?;
        map.append(REQUEST_ID, value);
    }
    if grpc {
        // gRPC requires it ("PROTOCOL-HTTP2"); it is hop-by-hop on HTTP/1.1, so the
        // client's was left out.
        map.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    // Cut from the head as it came, unless it was normalized.
    let (path, query) = (target.path.as_bytes(), target.query.as_bytes());
    let shared = match query.is_empty() {
        true => cut.span(path, path),
        false => cut
            .span(path, query)
            .filter(|t| t.len() == path.len() + query.len()),
    };
    let target = shared.unwrap_or_else(|| [path, query].concat().into());
    Some(H2Head {
        method: http::Method::from_bytes(method.as_bytes()).ok()?,
        target,
        host,
        headers: map,
        framing,
    })
}

impl Upstream {
    pub(super) fn with_capacity(n: usize) -> Upstream {
        Upstream(Vec::with_capacity(n))
    }

    fn line(&mut self, name: &[u8], value: &[u8]) {
        self.0.extend_from_slice(name);
        self.0.extend_from_slice(b": ");
        self.0.extend_from_slice(value);
        self.0.extend_from_slice(b"\r\n");
    }

    /// The same headers as `forward_headers` on Pingora's path: the client's, less the
    /// hop-by-hop ones and those vigil writes itself, then an upgrade's own pair, the
    /// `x-forwarded-*` chain, and the request id when vigil made it up.
    pub(super) fn head(
        mut self,
        method: &str,
        target: Target,
        headers: &[httparse::Header],
        f: Forward,
    ) -> Vec<u8> {
        let up = &mut self.0;
        up.extend_from_slice(method.as_bytes());
        up.push(b' ');
        up.extend_from_slice(target.path.as_bytes());
        up.extend_from_slice(target.query.as_bytes());
        up.extend_from_slice(b" HTTP/1.1\r\n");
        for h in headers {
            if !dropped(h.name, &f) {
                self.line(h.name.as_bytes(), h.value);
            }
        }
        if let Some(protocol) = f.upgrade {
            // The one hop-by-hop pair that is the request itself.
            self.line(b"connection", b"upgrade");
            self.line(b"upgrade", protocol);
        }
        let up = &mut self.0;
        if let Some(ip) = f.client {
            up.extend_from_slice(b"x-forwarded-for: ");
            forwarded_for(f.xff, ip, up);
            up.extend_from_slice(b"\r\n");
        }
        let scheme: &[u8] = if f.https { b"https" } else { b"http" };
        self.line(b"x-forwarded-proto", scheme);
        if let Some(host) = f.host {
            self.line(b"x-forwarded-host", host.as_bytes());
        }
        if let Some(id) = f.generated_id {
            self.line(b"x-request-id", id.as_bytes());
        }
        self.0.extend_from_slice(b"\r\n");
        self.0
    }
}
