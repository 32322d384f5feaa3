//! Between the two protocols, towards a `protocol: h2` backend: the request head the
//! loop wrote as HTTP/1.1 read back into an HTTP/2 request, and the backend's answer
//! written as HTTP/1.1 for the loop (chunked when it has no length, so that its
//! trailers — gRPC's status — come through as the chunked body's trailer lines).

use super::super::framing::Framing;
use super::super::MAX_HEADERS;
use super::other;
use bytes::{BufMut, Bytes, BytesMut};
use std::fmt::Write;
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
pub(super) struct UpRequest {
    pub request: http::Request<()>,
    pub framing: Framing,
    pub head_request: bool,
}

/// The request head at the start of `buf`, as the loop wrote it for an HTTP/1.1
/// backend: None while incomplete; its length and the HTTP/2 request. `scheme` and
/// `authority` (the backend's address) stand in when the head has no `Host`.
pub(super) fn parse_request(
    buf: &[u8],
    scheme: &http::uri::Scheme,
    authority: &str,
) -> io::Result<Option<(usize, UpRequest)>> {
    let mut slots = [MaybeUninit::<httparse::Header>::uninit(); MAX_HEADERS];
    let mut r = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut r, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(other(format!("request head: {e}"))),
    };
    let method = http::Method::from_bytes(r.method.unwrap_or("GET").as_bytes()).map_err(other)?;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.version = http::Version::HTTP_2;
    parts.headers.reserve(r.headers.len() + 1);
    let (mut host, mut chunked, mut length, mut grpc) = (None, false, None, false);
    for h in r.headers.iter() {
        // Named first: the fields below are then told apart without comparing text.
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).map_err(other)?;
        if name == http::header::HOST {
            host = std::str::from_utf8(h.value).ok();
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
        let value = http::HeaderValue::from_bytes(h.value).map_err(other)?;
        parts.headers.append(name, value);
    }
    // gRPC requires it of every request (its "PROTOCOL-HTTP2"); it is hop-by-hop on
    // HTTP/1.1, so the loop left the client's out.
    if grpc {
        parts
            .headers
            .insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    let target = r.path.unwrap_or("/");
    parts.uri = http::Uri::builder()
        .scheme(scheme.clone())
        .authority(host.unwrap_or(authority))
        .path_and_query(target)
        .build()
        .map_err(other)?;
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

/// The backend's answer head written as HTTP/1.1, and whether its body is chunked
/// (`end`: the HEADERS frame ended the stream: no body follows).
pub(super) fn answer_head(
    parts: &http::response::Parts,
    end: bool,
    head_request: bool,
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
    let chunked = !bodiless && !length && !end;
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if !bodiless && !length {
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
    let mut out = BytesMut::from(&b"0\r\n"[..]);
    for (name, value) in trailers.into_iter().flatten() {
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
    use super::chunk;

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
