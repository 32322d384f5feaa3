//! Fuzzing the HTTP/2 codec's request heads (issue #26): the loop decides an HTTP/2
//! stream's request from its fields (`head::parse_stream`) without writing them as
//! HTTP/1.1 text, so its decision must be the one `head::parse` makes for the same
//! head written as text (`StreamHead::text`): refused, carried or left alone alike,
//! with the same status, body framing, pool, hash key, log fields and upstream head
//! (text for an HTTP/1.1 pool, fields for a `protocol: h2` one). Bounded in `make
//! test`; `make fuzz` runs many more cases.

use super::h2::StreamHead;
use super::head::{parse, parse_stream, Env, Head};
use crate::dataplane::routing::RoutingTable;
use pingora::protocols::http::v1::server::HeadLimitValues;
use proptest::prelude::*;
use std::sync::Arc;

/// A `protocol: h2` pool for `grpc.test`, and a catch-all HTTP/1.1 one, each hashing
/// requests by something of theirs.
fn table() -> Arc<RoutingTable> {
    super::fuzz::table(
        "  - name: grpc\n    routes:\n      - host: grpc.test\n    protocol: h2\n    \
         tls: {verify: false}\n    balance: consistent_hash\n    hash_key: header:x-custom\n    \
         backends:\n      - address: 127.0.0.1:3\n  - name: web\n    balance: consistent_hash\n    \
         hash_key: path\n    backends:\n      - address: 127.0.0.1:4\n",
    )
}

/// A decision, as far as it must not depend on how the head came: everything but the
/// bytes of the client's buffer the head took (none for a stream's), with the request
/// id written as `<id>` (one made up for the request is random).
fn decision(head: Head) -> String {
    let log = |l: &Option<Box<super::head::LogHead>>| {
        l.as_ref()
            .map(|l| format!("{} {} {} {}", l.method, l.host, l.target, l.protocol))
    };
    let said = match &head {
        Head::Partial => "partial".into(),
        Head::Other => "other".into(),
        Head::Refused(r) => format!(
            "refused {} {} close={} head={} pool={:?} log={:?}",
            r.status,
            r.body,
            r.close,
            r.head,
            r.route.as_ref().map(|(_, pool)| pool),
            log(&r.log)
        ),
        Head::Request(r) => format!(
            "request upstream={:?} h2={:?} head={} idempotent={} body={:?} close={} \
             http10={} upgrade={} continue={} h2={} pool={} hash={:?} log={:?}",
            String::from_utf8_lossy(&r.upstream),
            r.h2_head
                .as_ref()
                .map(|h| (&h.method, &h.target, &h.host, &h.headers, h.framing)),
            r.head,
            r.idempotent,
            r.body,
            r.close,
            r.http10,
            r.upgrade,
            r.continue_100,
            r.h2,
            r.pool,
            r.hash_key,
            log(&r.log)
        ),
    };
    let id = match &head {
        Head::Refused(r) => r.log.as_ref(),
        Head::Request(r) => r.log.as_ref(),
        _ => None,
    };
    match id
        .map(|l| l.request_id.as_str())
        .filter(|id| !id.is_empty())
    {
        Some(id) => said.replace(id, "<id>"),
        None => said,
    }
}

/// An HTTP/2 request's parts: a method (an extended CONNECT among them), a target, an
/// `:authority` or none, and fields from a small set of names and values that matter
/// to the loop (hosts, cookies, lengths, request ids, white space around values).
fn request() -> impl Strategy<Value = (http::request::Parts, bool)> {
    let method = prop::sample::select(vec![
        "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "ws",
    ]);
    let target = prop::sample::select(vec![
        "/",
        "/a/b?x=1&y",
        "/a/../b",
        "/%2e%2e/x",
        "/echo.Echo/Say",
        "/a//b/./c",
        "/x?q=%20",
        "/\"quoted\"",
    ]);
    let authority = prop::sample::select(vec!["", "app.test", "grpc.test", "App.Test:8443"]);
    let name = prop::sample::select(vec![
        "host",
        "cookie",
        "content-length",
        "x-request-id",
        "x-forwarded-for",
        "user-agent",
        "content-type",
        "te",
        "x-custom",
        "sec-websocket-key",
        "expect",
        "connection",
        "x-forwarded-host",
        "accept",
    ]);
    let value = prop::sample::select(vec![
        "",
        " padded\t",
        "a",
        "1",
        "0",
        "105",
        "1, 2",
        "app.test",
        "APP.TEST",
        "grpc.test",
        "a=1",
        "b=2",
        "100-continue",
        "trailers",
        "application/grpc",
        "x-custom",
        "ob\u{e9}",
        "10.1.2.3",
        "  ",
    ]);
    let fields = prop::collection::vec((name, value), 0..12);
    (method, target, authority, fields, any::<bool>()).prop_map(
        |(method, target, authority, fields, bodiless)| {
            let uri = match authority {
                "" => target.to_string(),
                a => format!("https://{a}{target}"),
            };
            let mut req = http::Request::builder()
                .method(if method == "ws" { "CONNECT" } else { method })
                .uri(uri);
            for (name, value) in fields {
                req = req.header(name, value);
            }
            if method == "ws" {
                req = req.extension(h2::ext::Protocol::from("websocket"));
            }
            (req.body(()).expect("request").into_parts().0, bodiless)
        },
    )
}

/// The loop's decision for a stream's head read both ways; the head as text.
fn both_ways(
    mut parts: http::request::Parts,
    bodiless: bool,
    max_bytes: usize,
) -> (String, String, Vec<u8>) {
    let limits = HeadLimitValues {
        max_bytes,
        max_headers: 10,
        timeout: None,
    };
    let env = Env {
        limits: &limits,
        table: table(),
        client: Some("10.0.0.1"),
        https: true,
        logging: true,
        body_bytes: Some(1000),
        h2: true,
    };
    let head = StreamHead::new(&mut parts, bodiless);
    let text = head.text();
    let read = decision(parse(&text, &env));
    (decision(parse_stream(&head, &env)), read, text)
}

proptest! {
    #![proptest_config(super::fuzz::config())]

    #[test]
    fn a_stream_s_head_is_decided_as_the_same_head_written_as_http_1_1(
        (parts, bodiless) in request(),
        max_bytes in prop::sample::select(vec![120usize, 4096]),
    ) {
        let (fields, text, head) = both_ways(parts, bodiless, max_bytes);
        prop_assert_eq!(&fields, &text, "{}", String::from_utf8_lossy(&head));
    }
}

#[test]
fn streams_heads_read_both_ways_cover_every_decision() {
    // The generator reaches each kind of decision, so that the property above compares
    // them all: carried to each pool, refused, and left alone (past a limit).
    let cases = [
        (
            "GET",
            "https://app.test/a/../b",
            vec![("cookie", "a=1"), ("cookie", "b=2")],
            "request",
        ),
        (
            "POST",
            "https://grpc.test/echo.Echo/Say",
            vec![("content-type", "application/grpc"), ("x-custom", " k ")],
            "request",
        ),
        (
            "GET",
            "https://app.test/",
            vec![("host", "other.test")],
            "refused 400",
        ),
        ("GET", "https://app.test/%2e%2e/x", vec![], "refused 400"),
        (
            "GET",
            "https://app.test/",
            vec![("accept", "a"); 11],
            "other",
        ),
    ];
    for (method, uri, fields, want) in cases {
        let mut req = http::Request::builder().method(method).uri(uri);
        for (name, value) in fields {
            req = req.header(name, value);
        }
        let parts = req.body(()).unwrap().into_parts().0;
        let (fields, text, head) = both_ways(parts, true, 4096);
        assert_eq!(fields, text, "{}", String::from_utf8_lossy(&head));
        assert!(fields.starts_with(want), "{fields}");
        if want == "request" {
            assert!(
                fields.contains("cookie: a=1; b=2") || fields.contains("\"x-custom\": \"k\""),
                "{fields}"
            );
        }
    }
}
