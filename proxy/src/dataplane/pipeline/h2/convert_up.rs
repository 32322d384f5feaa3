//! Between the two protocols, towards a `protocol: h2` backend: the backend's answer
//! written as HTTP/1.1 for the loop when it goes to an HTTP/1 client (chunked when it
//! has no length, so that its trailers — gRPC's status — come through as the chunked
//! body's trailer lines). (The request goes as fields, `upstream::H2Head`, and so does
//! an answer going to an HTTP/2 client, `H2Upstream::poll_head`.)

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt::Write;

/// The backend's answer head written as HTTP/1.1, and whether its body is chunked
/// (`end`: the HEADERS frame ended the stream: no body follows). `through`: the answer
/// goes to an HTTP/2 client, its body as it comes and its trailers as fields
/// (`H2Upstream::through`): a body without a length is then delimited by the stream's
/// end (as by a close), not chunked. (The loop takes such a head as fields,
/// `response::parse_fields`; this text of it is what `fuzz_answer` compares with.)
pub(in crate::dataplane::pipeline) fn answer_head(
    parts: &http::response::Parts,
    end: bool,
    head_request: bool,
    through: bool,
) -> (Bytes, bool) {
    let mut out = BytesMut::with_capacity(256);
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut length = false;
    for (name, value) in &parts.headers {
        // Pingora's h2 refuses connection-specific fields from a backend; a
        // `transfer-encoding` would frame the body twice.
        if name == http::header::TRANSFER_ENCODING || name == http::header::CONNECTION {
            continue;
        }
        length |= name == http::header::CONTENT_LENGTH;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = head_request
        || status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED;
    let chunked = !bodiless && !length && !end && !through;
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if !bodiless && !length && end {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (out.freeze(), chunked)
}

/// `data` as one chunk of a chunked body.
pub(super) fn chunk(data: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(data.len() + 20);
    // Written in place (a `format!` was an allocation per DATA frame).
    let _ = write!(framed, "{:x}\r\n", data.len());
    framed.extend_from_slice(data);
    framed.extend_from_slice(b"\r\n");
    framed.freeze()
}

/// A chunked body's end: its trailers, if any, as trailer lines.
pub(super) fn last_chunk(trailers: Option<&http::HeaderMap>) -> Bytes {
    let Some(trailers) = trailers.filter(|t| !t.is_empty()) else {
        return Bytes::from_static(b"0\r\n\r\n");
    };
    let size = trailers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>();
    let mut out = BytesMut::with_capacity(size + 5);
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::super::super::fields::{self, Cut, Text};
    use super::super::super::framing::Framing;
    use super::super::super::MAX_HEADERS;
    use super::super::other;
    use super::*;
    use std::io;
    use std::mem::MaybeUninit;

    /// Fields of an HTTP/1.1 head that have no place in an HTTP/2 one (RFC 9113 §8.2.2),
    /// with `host`, which becomes `:authority`.
    const NOT_IN_H2: [&str; 7] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "host",
    ];

    /// A request for the backend, parsed from the loop's head.
    struct UpRequest {
        pub request: http::Request<()>,
        pub framing: Framing,
        pub head_request: bool,
    }

    /// The request head at the start of `text`, as the loop writes it for an HTTP/1.1
    /// backend, read back into an HTTP/2 request (as vigil did until the loop made the
    /// head as fields, `upstream::h2_head`; the oracle its tests compare with): None while incomplete; its length and the HTTP/2 request, whose fields and
    /// target share `text`'s buffer. `scheme` and `authority` (the backend's address) stand
    /// in when the head has no `Host`.
    fn parse_request(
        text: &Text,
        scheme: &http::uri::Scheme,
        authority: &str,
    ) -> io::Result<Option<(usize, UpRequest)>> {
        let mut slots = [MaybeUninit::<httparse::Header>::uninit(); MAX_HEADERS];
        let mut r = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut r,
            text.bytes(),
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(other(format!("request head: {e}"))),
        };
        let method =
            http::Method::from_bytes(r.method.unwrap_or("GET").as_bytes()).map_err(other)?;
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.version = http::Version::HTTP_2;
        parts.headers.reserve(r.headers.len() + 1);
        let (mut host, mut chunked, mut length, mut grpc) = (None, false, None, false);
        for h in r.headers.iter() {
            // Named first: the fields below are then told apart without comparing text.
            let name = fields::name(h.name.as_bytes()).map_err(other)?;
            if name == http::header::HOST {
                host = Some(h.value);
            } else if name == http::header::TRANSFER_ENCODING {
                chunked = true;
            } else if name == http::header::CONTENT_LENGTH {
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
            } else if name == http::header::CONTENT_TYPE {
                grpc = h.value.starts_with(b"application/grpc");
            }
            if NOT_IN_H2.contains(&name.as_str()) {
                continue;
            }
            parts
                .headers
                .append(name, text.value(h.value).map_err(other)?);
        }
        // gRPC requires it of every request (its "PROTOCOL-HTTP2"); it is hop-by-hop on
        // HTTP/1.1, so the loop left the client's out.
        if grpc {
            parts
                .headers
                .insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        }
        let target = r.path.unwrap_or("/");
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(scheme.clone());
        uri.authority = Some(
            match host {
                Some(host) => http::uri::Authority::from_maybe_shared(text.share(host)),
                None => http::uri::Authority::try_from(authority),
            }
            .map_err(other)?,
        );
        uri.path_and_query = Some(match target {
            "/" => http::uri::PathAndQuery::from_static("/"),
            _ => http::uri::PathAndQuery::from_maybe_shared(text.share(target.as_bytes()))
                .map_err(other)?,
        });
        parts.uri = http::Uri::from_parts(uri).map_err(other)?;
        let head_request = method == http::Method::HEAD;
        parts.method = method;
        let framing = if chunked {
            Framing::Chunked
        } else {
            match length {
                Some(n) if n > 0 => Framing::Length(n),
                _ => Framing::Empty,
            }
        };
        let request = http::Request::from_parts(parts, ());
        Ok(Some((
            len,
            UpRequest {
                request,
                framing,
                head_request,
            },
        )))
    }

    #[test]
    fn frames_queued_between_h2_s_parts_are_small() {
        // Vendored h2's patch 3 (third_party/README.md): a frame is moved through
        // several queues on its way in and out, so a HEADERS or PUSH_PROMISE frame (a
        // decoded header block, about 300 bytes) is boxed, and every frame moved is
        // the size of a DATA frame's handle.
        let size = std::mem::size_of::<h2::frame::Frame>();
        assert!(size <= 96, "h2's Frame is {size} bytes");
    }

    #[test]
    fn a_request_head_read_back_is_the_request_it_wrote() {
        let head = "POST /echo.Echo/Say?x=1 HTTP/1.1\r\nHost: api.test\r\n\
                    Content-Type: application/grpc\r\nContent-Length: 105\r\n\
                    X-Forwarded-For: 127.0.0.1\r\nX-Request-Id: abc\r\n\
                    Connection: keep-alive\r\nUser-Agent: t\r\n\r\nBODY";
        let scheme = http::uri::Scheme::HTTPS;
        // Not all there yet: nothing, at every length short of the head's end.
        let end = head.find("\r\n\r\n").unwrap() + 4;
        for cut in [0, 10, end - 1] {
            let text = Text::new(Bytes::copy_from_slice(&head.as_bytes()[..cut]));
            assert!(parse_request(&text, &scheme, "10.0.0.1:443")
                .unwrap()
                .is_none());
        }
        let text = Text::new(Bytes::copy_from_slice(head.as_bytes()));
        let (len, up) = parse_request(&text, &scheme, "10.0.0.1:443")
            .unwrap()
            .unwrap();
        assert_eq!(len, end);
        assert_eq!(up.framing, Framing::Length(105));
        assert!(!up.head_request);
        let (parts, ()) = up.request.into_parts();
        assert_eq!(parts.method, http::Method::POST);
        assert_eq!(parts.uri, "https://api.test/echo.Echo/Say?x=1");
        let mut fields: Vec<_> = parts
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "content-length: 105",
                "content-type: application/grpc",
                "te: trailers",
                "user-agent: t",
                "x-forwarded-for: 127.0.0.1",
                "x-request-id: abc",
            ]
        );
        // No Host: the backend's address is the authority.
        let text = Text::new(Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"));
        let (_, up) = parse_request(&text, &scheme, "10.0.0.1:443")
            .unwrap()
            .unwrap();
        assert_eq!(up.request.uri(), "https://10.0.0.1:443/");
        assert_eq!(up.framing, Framing::Empty);
        // A value no field may have is refused, as it was before it was shared.
        let text = Text::new(Bytes::from_static(b"GET / HTTP/1.1\r\nA: \x01\r\n\r\n"));
        assert!(parse_request(&text, &scheme, "h").is_err());
    }

    /// The fields a head's `Connection` names, and its `X-Forwarded-For` values.
    fn named_and_chain<'a>(headers: &[httparse::Header<'a>]) -> (Vec<&'a [u8]>, Vec<&'a [u8]>) {
        let named = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(|t| t.trim_ascii())
            .filter(|t| {
                !["keep-alive", "close", "upgrade"]
                    .iter()
                    .any(|k| k.as_bytes().eq_ignore_ascii_case(t))
            })
            .collect();
        let xff = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
            .map(|h| h.value)
            .collect();
        (named, xff)
    }

    #[test]
    fn the_http2_head_is_the_http1_head_read_back() {
        use super::super::super::upstream::{h2_head, Forward, Target, Upstream};
        // The head a `protocol: h2` backend gets, made as fields, is the one an
        // HTTP/1.1 backend gets, read back as vigil did before it made fields: the
        // same method, target, authority, fields and framing. (Unlike the text read
        // back, a length beside chunked framing is left out: HTTP/2 frames the body.)
        let heads = [
            "GET /a?b=1 HTTP/1.1\r\nHost: api.test\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
            "POST /echo.Echo/Say HTTP/1.1\r\nhost: g.test:8443\r\ncontent-type: application/grpc+proto\r\n\
             te: trailers\r\ncontent-length: 105\r\nX-Forwarded-For: 10.0.0.9, b\u{e9}d\r\n\
             x-forwarded-for: 10.0.0.8\r\ngrpc-timeout: 1S\r\n\r\n",
            "PUT /up HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
             Keep-Alive: 5\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\
             X-Request-Id: \r\nTrailer: x\r\nProxy-Connection: x\r\nA: 1\r\nA: 2\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
             X-Forwarded-Proto: ftp\r\nX-Forwarded-Host: x\r\nHTTP2-Settings: x\r\n\r\n",
            "GET / HTTP/1.0\r\nUser-Agent: old\r\n\r\n",
        ];
        let scheme = http::uri::Scheme::HTTPS;
        for (i, head) in heads.iter().enumerate() {
            let mut slots = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Request::new(&mut slots);
            let len = match r.parse(head.as_bytes()).unwrap() {
                httparse::Status::Complete(len) => len,
                httparse::Status::Partial => panic!("head {i} is partial"),
            };
            let (named, xff) = named_and_chain(r.headers);
            let host = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"));
            let host = host.map(|h| std::str::from_utf8(h.value).unwrap());
            let forward = || Forward {
                named: &named,
                xff: &xff,
                upgrade: (i == 3).then_some(&b"websocket"[..]),
                host,
                client: Some("192.0.2.1"),
                https: i % 2 == 0,
                drop_request_id: i == 2,
                generated_id: (i == 2).then_some("gen-id"),
            };
            let (path, query) = r
                .path
                .unwrap()
                .split_once('?')
                .unwrap_or((r.path.unwrap(), ""));
            // A normalized target is not the client's text.
            let normalized = path.to_string();
            let target = || Target {
                path: if i == 4 { &normalized } else { path },
                query: if query.is_empty() {
                    ""
                } else {
                    &r.path.unwrap()[path.len()..]
                },
            };
            let framing = match (i, head.contains("chunked")) {
                (_, true) => Framing::Chunked,
                (1, _) => Framing::Length(105),
                _ => Framing::Empty,
            };
            let method = r.method.unwrap();
            let text = Upstream::with_capacity(256).head(method, target(), r.headers, forward());
            let copy = Cut::Text(Text::copied(&head.as_bytes()[..len]));
            let got = h2_head(method, target(), r.headers, forward(), &copy, framing).unwrap();
            let (_, want) = parse_request(&Text::new(Bytes::from(text)), &scheme, "10.0.0.1:443")
                .unwrap()
                .unwrap();
            let mut headers = want.request.headers().clone();
            if framing == Framing::Chunked {
                headers.remove(http::header::CONTENT_LENGTH);
            }
            assert_eq!(got.method, want.request.method(), "head {i}");
            assert_eq!(
                &got.target[..],
                want.request
                    .uri()
                    .path_and_query()
                    .unwrap()
                    .as_str()
                    .as_bytes(),
                "head {i}"
            );
            let authority = want.request.uri().authority().unwrap().as_str();
            let host = got.host.as_deref().map(|h| std::str::from_utf8(h).unwrap());
            assert_eq!(host.unwrap_or("10.0.0.1:443"), authority, "head {i}");
            assert_eq!(got.headers, headers, "head {i}");
            assert_eq!(got.framing, want.framing, "head {i}");
        }
    }

    #[test]
    fn a_last_chunk_carries_its_trailers() {
        assert_eq!(&last_chunk(None)[..], b"0\r\n\r\n");
        assert_eq!(&last_chunk(Some(&http::HeaderMap::new()))[..], b"0\r\n\r\n");
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        t.insert("grpc-message", http::HeaderValue::from_static("ok"));
        let got = last_chunk(Some(&t));
        assert_eq!(&got[..], b"0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n");
    }

    #[test]
    fn a_chunk_s_size_is_its_length_in_hex() {
        for n in [0usize, 1, 9, 10, 15, 16, 255, 256, 4095, 65536, 1_000_003] {
            let data = vec![b'x'; n];
            let framed = chunk(&data);
            let line = format!("{n:x}\r\n");
            assert!(framed.starts_with(line.as_bytes()), "{n}");
            assert_eq!(&framed[line.len()..line.len() + n], &data[..]);
            assert_eq!(&framed[line.len() + n..], b"\r\n");
        }
    }
}
