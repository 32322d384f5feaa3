//! Between the two protocols, towards a `protocol: h2` backend: the request the loop
//! sends made as HTTP/2 fields (`UpFields`, where an HTTP/1 backend's head is written
//! as text, with the same policy), and the backend's answer written as HTTP/1.1 for the
//! loop (chunked when it has no length, so that its trailers — gRPC's status — come
//! through as the chunked body's trailer lines).

use super::super::framing::Framing;
use super::super::upstream::{Sink, Target};
use super::other;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use std::fmt::Write;
use std::io;

/// A request for a `protocol: h2` backend as the loop hands it to `H2Upstream`: the
/// fields `upstream::forward` passes on, as HTTP/2 ones.
#[derive(Clone)]
pub(in crate::dataplane::pipeline) struct UpHead {
    method: http::Method,
    target: PathAndQuery,
    /// The request's `Host`, as `:authority`; None when it had none (HTTP/1.0), and
    /// then the backend's address stands in.
    authority: Option<Authority>,
    headers: http::HeaderMap,
    pub framing: Framing,
}

/// A request for the backend, ready to send.
pub(in crate::dataplane::pipeline) struct UpRequest {
    pub request: http::Request<()>,
    pub framing: Framing,
    pub head_request: bool,
}

impl UpHead {
    /// The request line, for the error log.
    pub(in crate::dataplane::pipeline) fn summary(&self) -> String {
        format!("{} {} HTTP/2", self.method, self.target)
    }

    /// The request to a backend reached as `scheme` at `address` (the `:authority`
    /// when the request had no `Host`).
    pub(in crate::dataplane::pipeline) fn request(
        self,
        scheme: &http::uri::Scheme,
        address: &str,
    ) -> io::Result<UpRequest> {
        let authority = match self.authority {
            Some(a) => a,
            None => Authority::try_from(address).map_err(other)?,
        };
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(scheme.clone());
        uri.authority = Some(authority);
        uri.path_and_query = Some(self.target);
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.version = http::Version::HTTP_2;
        parts.uri = http::Uri::from_parts(uri).map_err(other)?;
        let head_request = self.method == http::Method::HEAD;
        parts.method = self.method;
        parts.headers = self.headers;
        Ok(UpRequest {
            request: http::Request::from_parts(parts, ()),
            framing: self.framing,
            head_request,
        })
    }
}

/// The request for a `protocol: h2` backend, made field by field from the client's
/// head (`head`, whose bytes the values are shared from rather than copied).
pub(in crate::dataplane::pipeline) struct UpFields {
    /// A copy of the client's head, and where the head lay (its fields' values are
    /// slices of it).
    head: Bytes,
    at: usize,
    headers: http::HeaderMap,
    authority: Option<Authority>,
    chunked: bool,
    length: Option<u64>,
    grpc: bool,
    /// A field HTTP/2 cannot carry (never seen: the loop's parser already refused
    /// what would be).
    invalid: bool,
}

impl UpFields {
    pub(in crate::dataplane::pipeline) fn new(head: &[u8], fields: usize) -> UpFields {
        UpFields {
            head: Bytes::copy_from_slice(head),
            at: head.as_ptr() as usize,
            headers: http::HeaderMap::with_capacity(fields + 4),
            authority: None,
            chunked: false,
            length: None,
            grpc: false,
            invalid: false,
        }
    }

    /// `part`'s bytes: shared with the copy when they lie in the head, else copied.
    fn share(&self, part: &[u8]) -> Bytes {
        let start = (part.as_ptr() as usize).wrapping_sub(self.at);
        match start.checked_add(part.len()) {
            Some(end) if end <= self.head.len() => self.head.slice(start..end),
            _ => Bytes::copy_from_slice(part),
        }
    }

    /// The request, None if it cannot be sent over HTTP/2. `method` and `target` are the
    /// request line's, as the HTTP/1.1 head would have them.
    pub(in crate::dataplane::pipeline) fn finish(
        mut self,
        method: &str,
        target: Target,
    ) -> Option<UpHead> {
        if self.invalid {
            return None;
        }
        let method = http::Method::from_bytes(method.as_bytes()).ok()?;
        let target = match target.query {
            "" => self.share(target.path.as_bytes()),
            query => Bytes::from([target.path, query].concat()),
        };
        let target = PathAndQuery::from_maybe_shared(target).ok()?;
        // gRPC requires it of every request (its "PROTOCOL-HTTP2"); it is hop-by-hop on
        // HTTP/1.1, so the loop left the client's out.
        if self.grpc {
            let trailers = HeaderValue::from_static("trailers");
            self.headers.insert(http::header::TE, trailers);
        }
        let framing = if self.chunked {
            Framing::Chunked
        } else {
            match self.length {
                Some(n) if n > 0 => Framing::Length(n),
                _ => Framing::Empty,
            }
        };
        Some(UpHead {
            method,
            target,
            authority: self.authority,
            headers: self.headers,
            framing,
        })
    }
}

/// A field of an HTTP/1.1 head that has no place in an HTTP/2 one (RFC 9113 §8.2.2),
/// or `host`, which becomes `:authority`.
fn not_in_h2(name: &HeaderName) -> bool {
    use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
    [CONNECTION, TRANSFER_ENCODING, UPGRADE, TE, HOST].contains(name)
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

impl Sink for UpFields {
    fn field(&mut self, name: &str, value: &[u8]) {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            self.invalid = true;
            return;
        };
        // Named first: the fields below are then told apart without comparing text.
        if name == http::header::HOST {
            let host = self.share(value);
            match Authority::from_maybe_shared(host) {
                Ok(a) => self.authority = Some(a),
                Err(_) => self.invalid = true,
            }
        } else if name == http::header::TRANSFER_ENCODING {
            self.chunked = true;
        } else if name == http::header::CONTENT_LENGTH {
            self.length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
        } else if name == http::header::CONTENT_TYPE {
            self.grpc = value.starts_with(b"application/grpc");
        }
        if not_in_h2(&name) {
            return;
        }
        match HeaderValue::from_maybe_shared(self.share(value)) {
            Ok(value) => {
                self.headers.append(name, value);
            }
            Err(_) => self.invalid = true,
        }
    }

    fn forwarded_for<'a>(&mut self, chain: impl Iterator<Item = &'a [u8]>, ip: &str) {
        let mut v = Vec::with_capacity(64);
        for prev in chain {
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
        }
        v.extend_from_slice(ip.as_bytes());
        match HeaderValue::from_maybe_shared(Bytes::from(v)) {
            Ok(value) => {
                self.headers.append("x-forwarded-for", value);
            }
            Err(_) => self.invalid = true,
        }
    }
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

/// The request head at the start of `buf`, as the loop writes it for an HTTP/1.1
/// backend, read back into an HTTP/2 request: None while incomplete; its length and the
/// request. (How requests for `protocol: h2` backends were made before `UpFields`, kept
/// as the reference the fuzzer holds `UpFields` to.) `scheme` and
/// `authority` (the backend's address) stand in when the head has no `Host`.
#[cfg(test)]
pub(in crate::dataplane::pipeline) fn parse_request(
    buf: &[u8],
    scheme: &http::uri::Scheme,
    authority: &str,
) -> io::Result<Option<(usize, UpRequest)>> {
    use std::mem::MaybeUninit;
    let mut slots = [MaybeUninit::<httparse::Header>::uninit(); super::super::MAX_HEADERS];
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
        if not_in_h2(&name) {
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
