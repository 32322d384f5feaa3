//! Fuzzing an HTTP/2 backend's answer heads (issue #26): an answer going to an HTTP/2
//! client is decided from its fields (`response::parse_fields`) without writing them as
//! HTTP/1.1 text, so its decision must be the one `parse_response` makes for the same
//! head written as text (`convert_up::answer_head`, as vigil did before): refused
//! alike, or with the same status, body framing, connection fates, load report and
//! fields for the client. Bounded in `make test`; `make fuzz` runs many more cases.

use super::framing::Asked;
use super::h2::answer_text;
use super::response::{parse_fields, parse_response, Response};
use pingora::prelude::*;
use proptest::prelude::*;

/// A decision, as far as it must not depend on how the head came: all but the bytes
/// of the buffer the head took (none for fields). A `Date` vigil added is checked for
/// and left out (the two may fall in different seconds).
fn decision(read: Result<Option<Response>>, buf: &[u8], dated: bool) -> String {
    let r = match read {
        Ok(Some(r)) => r,
        Ok(None) => return "incomplete".into(),
        Err(e) => {
            return format!(
                "refused: {}",
                e.context.map(|c| c.to_string()).unwrap_or_default()
            )
        }
    };
    let head = r.h2_head.map(|mut head| {
        if !dated {
            assert!(
                head.headers.remove(http::header::DATE).is_some(),
                "a Date is added"
            );
        }
        let mut fields: Vec<_> = head
            .headers
            .keys()
            .map(|name| {
                (
                    name.clone(),
                    head.headers
                        .get_all(name)
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        fields.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        (head.status, fields)
    });
    format!(
        "status={} framing={:?} reusable={} keep={} dechunk={} client_head={:?} h2_head={:?} report={:?}",
        r.status,
        r.framing,
        r.reusable,
        r.keep,
        r.dechunk,
        r.client_head,
        head,
        r.load_report.as_ref().map(|at| String::from_utf8_lossy(at.value(buf)).into_owned()),
    )
}

/// The text read as the loop reads it: parsed again as each read of at most 16 KiB
/// adds to it, until it is whole or refused.
fn read_text(text: &[u8], asked: Asked) -> Result<Option<Response>> {
    let mut at = 0;
    loop {
        at = text.len().min(at + 16 * 1024);
        match parse_response(&text[..at], asked) {
            Ok(None) if at < text.len() => continue,
            read => return read,
        }
    }
}

/// The answer decided both ways: from its fields, and from its text; and the text's
/// start.
fn both_ways(parts: http::response::Parts, end: bool, asked: Asked) -> (String, String, String) {
    let dated = parts.headers.contains_key(http::header::DATE);
    let (text, _) = answer_text(&parts, end, asked.head, true);
    let read = decision(read_text(&text, asked), &text, dated);
    let fields = decision(parse_fields(parts, end, asked).map(Some), &[], dated);
    let start = String::from_utf8_lossy(&text[..text.len().min(400)]).into_owned();
    (fields, read, start)
}

/// Field names an answer may carry, among them every kind the decision treats apart.
const NAMES: [&str; 17] = [
    "content-type",
    "content-length",
    "date",
    "te",
    "trailer",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "endpoint-load-metrics",
    "grpc-status",
    "set-cookie",
    "x-a",
    "x-custom",
    "server",
    "cache-control",
];

/// A value: printable bytes, obs-text, white space (around it too), or a length.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(
            prop_oneof![Just(b' '), Just(b'\t'), 0x21u8..0x7f, 0x80u8..=0xff,],
            0..14,
        ),
        prop::sample::select(vec![
            "0",
            "5",
            "12",
            " 7 ",
            "x",
            "18446744073709551616",
            "close",
            "trailers",
            "TEXT cpu_utilization=0.5"
        ])
        .prop_map(|v| v.as_bytes().to_vec()),
    ]
}

/// An HTTP/2 backend's answer head, whether its HEADERS ended the stream, and what its
/// request asked.
fn answer() -> impl Strategy<Value = (http::response::Parts, bool, Asked)> {
    (
        prop::sample::select(vec![200u16, 201, 204, 206, 299, 304, 404, 500, 503, 599]),
        prop::collection::vec((prop::sample::select(NAMES.to_vec()), value()), 0..8),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(status, fields, end, head, close)| {
            let mut answer = http::Response::builder().status(status);
            for (name, value) in fields {
                answer = answer.header(name, http::HeaderValue::from_bytes(&value).expect("valid"));
            }
            let asked = Asked {
                head,
                close,
                h2: true,
                ..Asked::default()
            };
            (answer.body(()).expect("answer").into_parts().0, end, asked)
        })
}

proptest! {
    #![proptest_config(super::fuzz::config())]

    #[test]
    fn an_h2_answer_is_decided_as_the_same_head_written_as_http_1_1((parts, end, asked) in answer()) {
        let (fields, text, head) = both_ways(parts, end, asked);
        prop_assert_eq!(&fields, &text, "{}", head);
    }
}

/// An answer's fields, whether its HEADERS ended the stream, and a part of the
/// decision expected.
type Case = (Vec<(String, String)>, bool, &'static str);

/// `fields` as owned pairs.
fn owned(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields.iter().map(|&(n, v)| (n.into(), v.into())).collect()
}

#[test]
fn h2_answers_read_both_ways_cover_every_decision() {
    // The generator's kinds of answer, and the bounds it does not reach, each decided
    // alike both ways.
    let asked = Asked {
        h2: true,
        ..Asked::default()
    };
    let many: Vec<_> = (0..300)
        .map(|i| (format!("x-{i}"), "v".to_string()))
        .collect();
    // (Read as text, a head a little over the 1 MiB bound passes when its last read
    // completes it; from fields, the bound is exact. Twice over, both refuse it.)
    let big = vec![("x-big".to_string(), "v".repeat(2 << 20))];
    let cases: [Case; 7] = [
        (
            owned(&[("content-length", "5")]),
            false,
            "framing=Length(5)",
        ),
        (vec![], true, "framing=Empty"),
        (
            owned(&[("content-type", "application/grpc")]),
            false,
            "framing=Close",
        ),
        (
            owned(&[("te", "trailers"), ("x-a", " a\t")]),
            false,
            "\"a\"",
        ),
        (
            owned(&[("content-length", "1"), ("content-length", "2")]),
            false,
            "refused: invalid Content-Length",
        ),
        (many, false, "refused: invalid response head"),
        (big, false, "refused: response head too large"),
    ];
    for (fields, end, want) in cases {
        let mut answer = http::Response::builder().status(200);
        for (name, value) in &fields {
            answer = answer.header(name, value);
        }
        let parts = answer.body(()).unwrap().into_parts().0;
        let (fields, text, head) = both_ways(parts, end, asked);
        let short = |s: &str| s.chars().take(400).collect::<String>();
        assert!(
            fields == text,
            "{head}\n{}\n{}",
            short(&fields),
            short(&text)
        );
        assert!(fields.contains(want), "{want}: {}", short(&fields));
    }
}
