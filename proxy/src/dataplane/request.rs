//! The request policy both codecs share: what a request may be (Host, methods that
//! may be sent twice), what goes upstream with it (hop-by-hop headers removed,
//! forwarded headers, the request id, the normalized path), where it routes, and the
//! status a failure gives the client.

use crate::dataplane::routing::{normalize_host, RoutingTable};
use http::{Method, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr;
use vigil_conf::HashKey;

/// A new request id: 16 random hex digits.
pub(crate) fn new_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
pub(crate) fn idempotent(m: &Method) -> bool {
    idempotent_method(m.as_str())
}

/// [`idempotent`] for a method's name as it came (the request loop has no `Method`).
pub(crate) fn idempotent_method(m: &str) -> bool {
    matches!(m, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE")
}

/// Headers that concern one connection only (RFC 9110 §7.6.1). Transfer-Encoding is
/// left to Pingora, which frames the body itself.
pub(crate) const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// What the request sent upstream carries besides the client's: no hop-by-hop headers
/// (but an upgrade's own pair), no `Expect` (vigil answered `100 Continue` itself),
/// `x-forwarded-for`, `-proto` and `-host`, and the request id when vigil made it up.
pub(crate) fn forward_headers(
    req: &mut RequestHeader,
    upgrade: bool,
    client: Option<std::net::IpAddr>,
    https: bool,
    request_id: Option<&str>,
) -> Result<()> {
    // Most requests carry no hop-by-hop header: one pass over the names tells, and
    // only then are they looked up one by one and removed.
    if req.headers.keys().any(|n| HOP_BY_HOP.contains(&n.as_str())) {
        let upgrade = upgrade
            .then(|| req.headers.get(http::header::UPGRADE).cloned())
            .flatten();
        let listed: Vec<String> = connection_tokens(&req.headers)
            .map(str::to_ascii_lowercase)
            .filter(|t| t != "close" && t != "keep-alive")
            .collect();
        for name in listed.iter().map(String::as_str).chain(HOP_BY_HOP) {
            req.remove_header(name);
        }
        // An upgrade (WebSocket) asks the backend to change protocols: that one
        // hop-by-hop pair is the request itself and goes through.
        if let Some(protocol) = upgrade {
            req.insert_header(
                http::header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            )?;
            req.insert_header(http::header::UPGRADE, protocol)?;
        }
    }
    if req.headers.contains_key(http::header::EXPECT) {
        req.remove_header(&http::header::EXPECT);
    }
    if let Some(id) = request_id {
        req.insert_header("x-request-id", id)?;
    }
    if let Some(ip) = client {
        // Every line of the chain counts (a proxy in front may send one per hop).
        let mut xff = String::new();
        for prev in req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            xff.push_str(prev);
            xff.push_str(", ");
        }
        xff.push_str(&ip.to_string());
        req.insert_header("x-forwarded-for", xff)?;
    }
    let scheme = if https { "https" } else { "http" };
    req.insert_header("x-forwarded-proto", http::HeaderValue::from_static(scheme))?;
    if let Some(host) = req.headers.get(http::header::HOST).cloned() {
        req.insert_header("x-forwarded-host", host)?;
    }
    Ok(())
}

pub(crate) fn hash_key(key: &HashKey, req: &RequestHeader, client: Option<&SocketAddr>) -> Vec<u8> {
    match key {
        HashKey::Header(name) => req
            .headers
            .get(name.as_str())
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
        HashKey::Path => req.uri.path().as_bytes().to_vec(),
        HashKey::ClientIp => client
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string().into_bytes())
            .unwrap_or_default(),
    }
}

/// `uri` with its path normalized (`crate::dataplane::path`); None when it is already normal.
pub(crate) fn normalize_uri(
    uri: &http::Uri,
) -> std::result::Result<Option<http::Uri>, crate::dataplane::path::Invalid> {
    let Some(target) = uri.path_and_query() else {
        return Ok(None);
    };
    match crate::dataplane::path::normalize_target(target.as_str())? {
        std::borrow::Cow::Borrowed(_) => Ok(None),
        std::borrow::Cow::Owned(normal) => {
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = Some(
                normal
                    .parse()
                    .map_err(|_| crate::dataplane::path::Invalid::Malformed)?,
            );
            Ok(Some(
                http::Uri::from_parts(parts)
                    .map_err(|_| crate::dataplane::path::Invalid::Malformed)?,
            ))
        }
    }
}

/// The pool `req` routes to in `table`.
pub(crate) fn route_index(table: &RoutingTable, req: &RequestHeader) -> Option<usize> {
    let host = request_host(req).map(normalize_host).unwrap_or_default();
    table.route_index(&host, req.uri.path())
}

/// A Host header's value (RFC 9110 §7.2, RFC 3986 §3.2.2): a registered name or IPv4
/// address of unreserved, percent-encoded and sub-delimiter characters, or an IP literal
/// in brackets, then an optional `:port`. Both HTTP/1 paths refuse anything else.
/// Bytes of a reg-name or IPv4 host (RFC 3986 §3.2.2: unreserved, pct-encoded and
/// sub-delims), looked up rather than searched for: every request's Host is checked.
static HOST_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

pub(crate) fn valid_host(h: &[u8]) -> bool {
    let (host, port) = match h.iter().rposition(|&b| b == b':') {
        // A colon inside brackets belongs to an IPv6 literal.
        Some(i) if !h[i..].contains(&b']') => (&h[..i], &h[i + 1..]),
        _ => (h, &h[..0]),
    };
    let host_ok = match host {
        [b'[', literal @ .., b']'] => {
            !literal.is_empty()
                && literal
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }
        _ => !host.is_empty() && host.iter().all(|&b| HOST_BYTE[b as usize]),
    };
    host_ok && port.iter().all(u8::is_ascii_digit)
}

/// The request asks to switch protocols: an `Upgrade` header, and `upgrade` among the
/// `Connection` tokens (RFC 9110 §7.8: one without the other is no upgrade).
pub(crate) fn asks_upgrade(req: &RequestHeader) -> bool {
    req.version == Version::HTTP_11
        && req.headers.contains_key(http::header::UPGRADE)
        && connection_tokens(&req.headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The tokens of every `Connection` header line.
pub(crate) fn connection_tokens(headers: &http::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// `Connection` tokens that name no header to remove: the connection options, and the
/// framing headers, which the proxy sets itself whatever a backend says.
pub(crate) fn connection_keeps(token: &[u8]) -> bool {
    [
        &b"close"[..],
        b"keep-alive",
        b"content-length",
        b"transfer-encoding",
    ]
    .iter()
    .any(|k| token.eq_ignore_ascii_case(k))
}

/// Removes from an answer the headers its `Connection` header names (RFC 9110 §7.6.1):
/// they concern the backend's connection only.
pub(crate) fn remove_connection_named(resp: &mut ResponseHeader) {
    let named: Vec<String> = connection_tokens(&resp.headers)
        .map(str::to_ascii_lowercase)
        .filter(|t| !connection_keeps(t.as_bytes()))
        .collect();
    for name in named {
        resp.remove_header(&name);
    }
}

/// The Host header, or the authority of an absolute URI (HTTP/2, proxy-form requests).
pub(crate) fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(req.uri.host())
}

pub(crate) const NO_HEALTHY_BACKEND: (u16, [(&str, &str); 1], &str) = (
    503,
    [("x-vigil-error", "no-healthy-backend")],
    "{\"error\":\"no healthy backend\"}",
);

/// The status the client gets for a request that failed with `e`; 0 when the client
/// is gone.
pub(crate) fn error_status(e: &Error) -> u16 {
    match e.etype() {
        HTTPStatus(c) => *c,
        ConnectTimedout | ReadTimedout | WriteTimedout => 504,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::valid_host;

    #[test]
    fn a_host_is_a_name_or_an_address_and_a_port() {
        for good in [
            "app.test",
            "App-1.test:8080",
            "127.0.0.1:19981",
            "[::1]:80",
            "a%20b",
            "x_y~z",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "", ":80", "a b", "a/b", "a@b", "[]", "[::1", "a:8x", "é.test", "a\"b",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
        // Each byte alone, as RFC 3986 §3.2.2 reads it.
        for b in 0..=255u8 {
            let want = b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b);
            assert_eq!(valid_host(&[b]), want, "{b:#x}");
        }
    }
}
