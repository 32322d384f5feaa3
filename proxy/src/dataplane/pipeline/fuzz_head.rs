//! Fuzzing the request loop's request side (issue #25): request heads and chunked request
//! bodies, split at arbitrary points. Nothing may panic; a head is `Partial` until its
//! last byte has arrived and then decided as it is when whole; the decision (refused or
//! carried, with which body framing and connection fate) is what a plain reference reading
//! of RFC 9112 §3, §6 and §9 says; the head sent upstream carries no hop-by-hop header.
//! A chunked body ends where the answers' reference decoder says, and its decoded bytes
//! are the chunks' bytes. Bounded in `make test`; `make fuzz` runs many more cases.

use super::framing::{Body, Framing};
use super::head::{parse, Env, Head, RequestBody, RETRY_BUFFER};
use crate::dataplane::routing::RoutingTable;
use pingora::protocols::http::v1::server::HeadLimitValues;
use proptest::prelude::*;
use std::sync::Arc;

/// The body limit the fuzzed heads are judged against.
const BODY_BYTES: u64 = 100_000;

/// One catch-all pool of plain HTTP/1 backends.
fn table() -> Arc<RoutingTable> {
    super::fuzz::table("  - name: web\n    backends:\n      - address: 127.0.0.1:3\n")
}

/// What the reference reading says a whole head is.
#[derive(Debug, PartialEq)]
enum Decision {
    Partial,
    /// For Pingora's parser to judge.
    Other,
    Refused {
        len: usize,
        status: u16,
        close: bool,
    },
    Carried {
        len: usize,
        body: RequestBody,
        close: bool,
        upgrade: bool,
    },
}

fn tokens(v: &str) -> impl Iterator<Item = String> + '_ {
    v.split(',')
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// The reference: the head ends at the first empty line (the generator writes CRLF
/// only); the request line and the headers are read as RFC 9112 writes them.
fn reference(b: &[u8]) -> Decision {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Decision::Partial;
    };
    let len = end + 4;
    let Ok(text) = std::str::from_utf8(&b[..end]) else {
        return Decision::Other;
    };
    let mut lines = text.split("\r\n");
    let line: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    let [method, target, version] = line[..] else {
        return Decision::Other;
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Decision::Other,
    };
    let target_ok = target.starts_with('/')
        && target
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&c));
    if method == "CONNECT" || !target_ok {
        return Decision::Other;
    }
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap_or((l, ""));
            (n.to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    fn all<'a>(headers: &'a [(String, String)], name: &'a str) -> impl Iterator<Item = &'a str> {
        headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    let lengths: Vec<&str> = all(&headers, "content-length").collect();
    let codings: Vec<&str> = all(&headers, "transfer-encoding").collect();
    let length: Option<u64> = match lengths[..] {
        [] => None,
        [v] if !v.is_empty() && v.len() <= 19 && v.bytes().all(|c| c.is_ascii_digit()) => {
            v.parse().ok()
        }
        _ => return Decision::Other,
    };
    let chunked = match codings[..] {
        [] => false,
        [v] if !http10 && v.eq_ignore_ascii_case("chunked") => true,
        _ => return Decision::Other,
    };
    let connection: Vec<String> = all(&headers, "connection").flat_map(tokens).collect();
    let close = connection.iter().any(|t| t == "close")
        || (http10 && !connection.iter().any(|t| t == "keep-alive"))
        || (chunked && length.is_some());
    let body = match (chunked, length) {
        (true, _) => RequestBody::Streamed(Framing::Chunked),
        (false, None | Some(0)) => RequestBody::None,
        (false, Some(n)) if n <= RETRY_BUFFER as u64 => RequestBody::Held(n as usize),
        (false, Some(n)) => RequestBody::Streamed(Framing::Length(n)),
    };
    let hosts: Vec<&str> = all(&headers, "host").collect();
    match hosts[..] {
        [] if http10 => {}
        [h] if reference_host(h) => {}
        _ => {
            return Decision::Refused {
                len,
                status: 400,
                close: true,
            }
        }
    }
    if !chunked && length.is_some_and(|n| n > BODY_BYTES) {
        return Decision::Refused {
            len,
            status: 413,
            close: true,
        };
    }
    let upgrade = !http10
        && all(&headers, "upgrade").next().is_some()
        && connection.iter().any(|t| t == "upgrade");
    Decision::Carried {
        len,
        body,
        close,
        upgrade,
    }
}

/// The reference's Host: a host and an optional port, no user information or path.
fn reference_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p),
        _ => (h, ""),
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=[]:".contains(&c))
        && port.bytes().all(|c| c.is_ascii_digit())
        && !host.contains('@')
        && !host.contains('/')
}

/// The loop's decision, the head fed as its bytes arrive in the pieces `cuts` makes.
fn incremental(b: &[u8], cuts: &[usize]) -> Decision {
    let limits = HeadLimitValues {
        max_bytes: 32 * 1024,
        max_headers: 100,
        timeout: None,
    };
    let env = Env {
        limits: &limits,
        table: table(),
        client: Some("10.0.0.1"),
        https: false,
        logging: true,
        body_bytes: Some(BODY_BYTES),
        h2: false,
    };
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c % (b.len() + 1)).collect();
    bounds.push(b.len());
    bounds.sort_unstable();
    for end in bounds {
        match parse(&b[..end], &env) {
            Head::Partial => continue,
            Head::Other => return Decision::Other,
            Head::Refused(r) => {
                return Decision::Refused {
                    len: r.len,
                    status: r.status,
                    close: r.close,
                }
            }
            Head::Request(r) => {
                let up = String::from_utf8_lossy(&r.upstream).to_ascii_lowercase();
                for hop in [
                    "\r\nkeep-alive:",
                    "\r\nte:",
                    "\r\nexpect:",
                    "\r\nproxy-connection:",
                ] {
                    assert!(!up.contains(hop), "{hop} went upstream: {up}");
                }
                // A header is hop-by-hop when `Connection` names it.
                let sent = String::from_utf8_lossy(&b[..r.len]).to_ascii_lowercase();
                let named = sent.contains("\r\nconnection: upgrade, x-named\r\n");
                assert_eq!(
                    up.contains("\r\nx-named:"),
                    sent.contains("\r\nx-named:") && !named,
                    "{up}"
                );
                assert_eq!(
                    up.contains("\r\nconnection: upgrade\r\n"),
                    r.upgrade,
                    "{up}"
                );
                assert!(up.ends_with("\r\n\r\n") && up.contains("\r\nx-forwarded-for: "));
                return Decision::Carried {
                    len: r.len,
                    body: r.body,
                    close: r.close,
                    upgrade: r.upgrade,
                };
            }
        }
    }
    Decision::Partial
}

/// Request heads built from parts a client may send, valid or a little broken.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just("GET / HTTP/1.1"),
        Just("POST /upload?x=1 HTTP/1.1"),
        Just("HEAD /h HTTP/1.1"),
        Just("PUT /p HTTP/1.0"),
        Just("GET / HTTP/1.0"),
        Just("PROPFIND /dav HTTP/1.1"),
        Just("CONNECT app:443 HTTP/1.1"),
        Just("GET http://app/x HTTP/1.1"),
        Just("GET /a\"b HTTP/1.1"),
        Just("GET / HTTP/2.0"),
    ];
    let header = prop_oneof![
        Just("Host: app"),
        Just("Host: app:8080"),
        Just("Host: [::1]:80"),
        Just("Host: user@app"),
        Just("Host: app/x"),
        Just("Content-Length: 5"),
        Just("Content-Length: 0"),
        Just("Content-Length: 70000"),
        Just("Content-Length: 200000"),
        Just("Content-Length: 1x"),
        Just("Transfer-Encoding: chunked"),
        Just("Transfer-Encoding: gzip, chunked"),
        Just("Connection: close"),
        Just("Connection: keep-alive"),
        Just("Connection: upgrade, x-named"),
        Just("Upgrade: websocket"),
        Just("X-Named: secret"),
        Just("Keep-Alive: timeout=5"),
        Just("TE: trailers"),
        Just("Proxy-Connection: keep-alive"),
        Just("Expect: 100-continue"),
        Just("X-Forwarded-For: 10.1.1.1"),
        Just("X-Request-Id: abc"),
    ];
    (
        line,
        prop::collection::vec(header, 0..6),
        prop::collection::vec(any::<u8>(), 0..24),
    )
        .prop_map(|(line, headers, tail)| {
            let mut b = format!("{line}\r\n").into_bytes();
            for h in headers {
                b.extend_from_slice(h.as_bytes());
                b.extend_from_slice(b"\r\n");
            }
            b.extend_from_slice(b"\r\n");
            b.extend(tail);
            b
        })
}

/// A chunked body: chunks (some with extensions), the last chunk, trailers.
fn chunked_body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (
        prop::collection::vec((1usize..40, any::<bool>(), any::<u8>()), 0..6),
        any::<bool>(),
    )
        .prop_map(|(chunks, trailer)| {
            let (mut wire, mut data) = (Vec::new(), Vec::new());
            for (n, ext, byte) in chunks {
                wire.extend(format!("{n:X}{}\r\n", if ext { ";a=b" } else { "" }).into_bytes());
                wire.extend(std::iter::repeat_n(byte, n));
                data.extend(std::iter::repeat_n(byte, n));
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(if trailer {
                b"0\r\nT: 1\r\n\r\n"
            } else {
                b"0\r\n\r\n"
            });
            (wire, data)
        })
}

proptest! {
    #![proptest_config(super::fuzz::config())]

    #[test]
    fn request_heads_in_pieces_are_decided_as_the_reference_says(
        b in request(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        prop_assert_eq!(incremental(&b, &cuts), reference(&b));
    }

    #[test]
    fn arbitrary_bytes_as_a_request_head_never_panic(
        b in prop::collection::vec(any::<u8>(), 0..300),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let _ = incremental(&b, &cuts);
        let mut with_line = b"GET / HTTP/1.1\r\nHost: app\r\n".to_vec();
        with_line.extend_from_slice(&b);
        let _ = incremental(&with_line, &cuts);
    }

    #[test]
    fn chunked_request_bodies_in_pieces_end_whole_and_decode(
        (wire, data) in chunked_body(),
        tail in prop::collection::vec(any::<u8>(), 0..16),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut b = wire.clone();
        b.extend(tail);
        let mut bounds: Vec<usize> = cuts.iter().map(|&c| c % (b.len() + 1)).collect();
        bounds.push(b.len());
        bounds.sort_unstable();
        let mut body = Body::new(Framing::Chunked);
        let (mut at, mut decoded, mut ended) = (0, Vec::new(), None);
        for end in bounds {
            if ended.is_some() || end < at {
                continue;
            }
            let (take, done) = body.feed_to(&b[at..end], Some(&mut decoded)).unwrap();
            at += take;
            if done {
                ended = Some(at);
            }
        }
        prop_assert_eq!(ended, Some(wire.len()));
        prop_assert_eq!(body.payload, data.len() as u64);
        prop_assert_eq!(decoded, data);
    }
}
