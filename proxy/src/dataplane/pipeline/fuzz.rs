//! Fuzzing the request loop's answer framing (issue #25): a backend's bytes, split at
//! arbitrary points, must never panic the parser, and the body must end exactly where a
//! plain reference decoder, written from RFC 9112 §6.3 and §7.1 without regard to
//! speed, says it ends (or both must call it malformed). Runs a bounded number of cases
//! in `make test`; `make fuzz` runs many more (`PROPTEST_CASES`).

use super::framing::*;
use super::response::parse_response;
use super::MAX_HEADERS;
use proptest::prelude::*;

/// The reference's verdict on a whole answer: where its body ends (the offset just
/// past it), that it is still incomplete, or that it is malformed.
#[derive(Debug, PartialEq)]
enum Verdict {
    Ends(usize),
    Incomplete,
    Malformed,
}

/// Framing from the head's headers, as RFC 9112 §6.3 reads them; None for an answer
/// that cannot be framed (an invalid or conflicting `Content-Length` is refused
/// whatever else the head says).
fn reference_framing(headers: &[httparse::Header], status: u16, head_req: bool) -> Option<Framing> {
    let mut length = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let v = std::str::from_utf8(h.value).ok()?;
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = v.parse().ok()?;
        if length.is_some_and(|m| m != n) {
            return None;
        }
        length = Some(n);
    }
    if head_req || status == 204 || status == 304 {
        return Some(Framing::Empty);
    }
    let te: Vec<&[u8]> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .map(|h| h.value)
        .collect();
    if let Some(last) = te.last() {
        let coding = last.split(|&b| b == b',').next_back().unwrap_or_default();
        return Some(if coding.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    Some(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// A size line's bytes (without its LF, with its CR if any; `whole`: the LF came) are
/// well formed so far: 1 to 15 hex digits, then an extension after `;`, space or tab,
/// then an optional CR that ends it.
fn size_line_ok(raw: &[u8], whole: bool) -> bool {
    let digits = raw.iter().take_while(|c| c.is_ascii_hexdigit()).count();
    let rest = &raw[digits..];
    let cr = rest.iter().position(|&c| c == b'\r');
    digits <= 15
        && (rest.is_empty() || digits > 0)
        && (rest.is_empty() || matches!(rest[0], b';' | b' ' | b'\t' | b'\r'))
        // A CR is the line's last byte (its LF may still be on the way).
        && cr.is_none_or(|p| p + 1 == rest.len())
        && (!whole || digits > 0)
}

/// A chunked body at the start of `b`: where it ends, by reading it line by line.
fn reference_chunked(b: &[u8]) -> Verdict {
    // The next line from `from`: where the one after starts (None: no LF yet), and its
    // bytes without the LF.
    let line = |from: usize| -> (Option<usize>, &[u8]) {
        match b[from..].iter().position(|&c| c == b'\n') {
            Some(lf) => (Some(from + lf + 1), &b[from..from + lf]),
            None => (None, &b[from..]),
        }
    };
    let mut at = 0;
    loop {
        let (next, raw) = line(at);
        if !size_line_ok(raw, next.is_some()) {
            return Verdict::Malformed;
        }
        let Some(next) = next else {
            return Verdict::Incomplete;
        };
        let digits = raw.iter().take_while(|c| c.is_ascii_hexdigit()).count();
        let size = u64::from_str_radix(std::str::from_utf8(&raw[..digits]).unwrap(), 16).unwrap();
        at = next;
        if size == 0 {
            // Trailer lines, then an empty one (a CR at a line's start must end it).
            loop {
                let (next, raw) = line(at);
                if raw.first() == Some(&b'\r') && raw.len() > 1 {
                    return Verdict::Malformed;
                }
                let Some(next) = next else {
                    return Verdict::Incomplete;
                };
                at = next;
                if raw.is_empty() || raw == b"\r" {
                    return Verdict::Ends(at);
                }
            }
        }
        let end = at as u64 + size;
        if end + 1 > b.len() as u64 {
            return Verdict::Incomplete;
        }
        at = end as usize;
        match &b[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [b'\n', ..] => at += 1,
            [b'\r'] | [] => return Verdict::Incomplete,
            _ => return Verdict::Malformed,
        }
    }
}

/// The reference's verdict on a whole answer, body end counted from the start of `b`.
fn reference(b: &[u8], head_req: bool) -> Verdict {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let mut config = httparse::ParserConfig::default();
    config.allow_spaces_after_header_name_in_responses(true);
    let len = match config.parse_response(&mut r, b) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Verdict::Incomplete,
        Err(_) => return Verdict::Malformed,
    };
    let status = r.code.unwrap_or(0);
    if status < 200 {
        // An informational head: the loop reads on to the final one.
        return match reference(&b[len..], head_req) {
            Verdict::Ends(n) => Verdict::Ends(len + n),
            v => v,
        };
    }
    match reference_framing(r.headers, status, head_req) {
        None => Verdict::Malformed,
        Some(Framing::Empty) => Verdict::Ends(len),
        Some(Framing::Length(n)) if (b.len() - len) as u64 >= n => Verdict::Ends(len + n as usize),
        Some(Framing::Length(_)) | Some(Framing::Close) => Verdict::Incomplete,
        Some(Framing::Chunked) => match reference_chunked(&b[len..]) {
            Verdict::Ends(n) => Verdict::Ends(len + n),
            v => v,
        },
    }
}

/// The loop's verdict: `b` arrives in pieces cut at `cuts`; heads are parsed as they
/// complete and the body fed through `Body`, as `Pipeline::exchange` does.
fn incremental(b: &[u8], cuts: &[usize], head_req: bool) -> Verdict {
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c % (b.len() + 1)).collect();
    bounds.push(b.len());
    bounds.sort_unstable();
    let mut have = 0; // bytes arrived
    let mut at = 0; // start of what is not consumed
    let mut body: Option<Body> = None;
    for end in bounds {
        have = have.max(end);
        loop {
            match &mut body {
                None => match parse_response(
                    &b[at..have],
                    Asked {
                        head: head_req,
                        ..Asked::default()
                    },
                ) {
                    Err(_) => return Verdict::Malformed,
                    Ok(None) => break,
                    Ok(Some(r)) if r.status < 200 => at += r.len,
                    Ok(Some(r)) => {
                        at += r.len;
                        body = Some(Body::new(r.framing));
                    }
                },
                Some(body) => {
                    match body.feed(&b[at..have]) {
                        Err(_) => return Verdict::Malformed,
                        Ok((take, true)) => return Verdict::Ends(at + take),
                        Ok((take, false)) => at += take,
                    }
                    break;
                }
            }
        }
    }
    // A head with a body to come and a zero-length body are told apart only by
    // feeding: do it once more with nothing new.
    match body.map(|mut body| body.feed(&[])) {
        Some(Ok((_, true))) => Verdict::Ends(at),
        Some(Err(_)) => Verdict::Malformed,
        _ => Verdict::Incomplete,
    }
}

/// Answers built from parts a backend may send, valid or a little broken.
fn answer() -> impl Strategy<Value = Vec<u8>> {
    let header = prop_oneof![
        Just(b"Content-Length: 5\r\n".to_vec()),
        Just(b"Content-Length: 0\r\n".to_vec()),
        Just(b"content-length: 12\r\n".to_vec()),
        Just(b"Content-Length: 1x\r\n".to_vec()),
        Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
        Just(b"Transfer-Encoding: gzip, chunked\r\n".to_vec()),
        Just(b"Transfer-Encoding: gzip\r\n".to_vec()),
        Just(b"Connection: close\r\n".to_vec()),
        Just(b"X-A: b\r\n".to_vec()),
        Just(b"X-Sp : c\r\n".to_vec()),
    ];
    let chunk = prop_oneof![
        (1usize..20, any::<bool>()).prop_map(|(n, ext)| {
            let mut c = format!("{n:x}{}\r\n", if ext { ";e=1" } else { "" }).into_bytes();
            c.extend(std::iter::repeat_n(b'x', n));
            c.extend_from_slice(b"\r\n");
            c
        }),
        Just(b"0\r\n\r\n".to_vec()),
        Just(b"0\r\nT: 1\r\n\r\n".to_vec()),
        Just(b"g\r\n".to_vec()),
        Just(b"3\nabc\n".to_vec()),
    ];
    (
        prop_oneof![
            Just(100u16),
            Just(103),
            Just(200),
            Just(204),
            Just(304),
            Just(404)
        ],
        prop::collection::vec(header, 0..4),
        prop::collection::vec(chunk, 0..6),
        prop::collection::vec(any::<u8>(), 0..24),
    )
        .prop_map(|(status, headers, chunks, tail)| {
            let mut b = format!("HTTP/1.1 {status} X\r\n").into_bytes();
            for h in headers {
                b.extend(h);
            }
            b.extend_from_slice(b"\r\n");
            if status < 200 {
                b.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");
            }
            for c in chunks {
                b.extend(c);
            }
            b.extend(tail);
            b
        })
}

/// The routing table of the pools in `pools` (YAML, the `pools:` list's items), for
/// the fuzz tests that decide request heads.
pub(super) fn table(pools: &str) -> std::sync::Arc<crate::dataplane::routing::RoutingTable> {
    let yaml = format!(
        "listeners:\n  - address: 127.0.0.1:1\nadmin:\n  address: 127.0.0.1:2\npools:\n{pools}"
    );
    let config = vigil_conf::from_str(&yaml, "fuzz.yaml").expect("config");
    let metrics =
        crate::observe::metrics::ProxyMetrics::new(&prometheus::Registry::new(), false).unwrap();
    std::sync::Arc::new(crate::dataplane::routing::RoutingTable::build(
        &config.pools,
        &vigil_healthcheck::Membership::default(),
        &Default::default(),
        &metrics,
    ))
}

/// The fuzz tests' settings: 2,000 cases unless `PROPTEST_CASES` says more (`make
/// fuzz`), and no regression files in the tree (a failure prints its minimal input).
pub(super) fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2_000),
        )
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn answers_in_pieces_end_where_the_reference_says(
        b in answer(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        head_req in any::<bool>(),
    ) {
        prop_assert_eq!(incremental(&b, &cuts, head_req), reference(&b, head_req));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_agree(
        b in prop::collection::vec(any::<u8>(), 0..256),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut with_head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        with_head.extend_from_slice(&b);
        prop_assert_eq!(incremental(&with_head, &cuts, false), reference(&with_head, false));
        // Raw bytes as a head: only that nothing panics.
        let _ = incremental(&b, &cuts, false);
    }
}
