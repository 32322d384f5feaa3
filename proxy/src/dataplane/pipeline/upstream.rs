//! The head a request loop request is sent upstream with, written into one buffer:
//! the client's fields less those that concern one connection or that vigil writes
//! itself, then the forwarded fields — the same as `forward_headers` on Pingora's path.

use crate::dataplane::request::HOP_BY_HOP;

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

/// The target sent upstream: a path and the query as it came.
pub(super) struct Target<'a> {
    pub path: &'a str,
    pub query: &'a str,
}

/// The head sent upstream, written into one buffer (with room for a body held whole,
/// appended once read).
pub(super) struct Upstream(Vec<u8>);

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
            let name = h.name.as_bytes();
            // An empty request id is replaced by ours, as on Pingora's path.
            let empty_id = f.drop_request_id && h.name.eq_ignore_ascii_case("x-request-id");
            let dropped = empty_id
                || HOP_BY_HOP
                    .iter()
                    .chain(&NOT_FORWARDED)
                    .any(|n| h.name.eq_ignore_ascii_case(n))
                || f.named.iter().any(|n| name.eq_ignore_ascii_case(n));
            if !dropped {
                self.line(name, h.value);
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
            // As on Pingora's path: values it can read as text, trimmed, empty ones left out.
            for prev in f.xff.iter().map(|v| v.trim_ascii()).filter(|v| {
                !v.is_empty() && v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
            }) {
                up.extend_from_slice(prev);
                up.extend_from_slice(b", ");
            }
            up.extend_from_slice(ip.as_bytes());
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
