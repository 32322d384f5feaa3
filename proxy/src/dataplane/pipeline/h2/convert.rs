//! Between the two protocols: an HTTP/2 stream's request head as the loop reads an
//! HTTP/1.1 one, and the loop's HTTP/1.1 answer head and trailers read back into
//! HTTP/2 parts.

use super::super::fields::{self, Text};
use super::super::framing::Framing;
use super::super::MAX_HEADERS;
use super::other;
use crate::dataplane::request::HOP_BY_HOP;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, InvalidHeaderValue};
use pingora::protocols::http::date::get_cached_date;
use pingora::protocols::http::v1::server::HeadLimitValues;
use std::io;
use std::mem::MaybeUninit;

/// The protocol an extended CONNECT asks for (RFC 8441 §4: `:protocol`), if it is one.
pub(super) fn extended_connect(req: &http::request::Parts) -> Option<&str> {
    if req.method != http::Method::CONNECT {
        return None;
    }
    req.extensions
        .get::<h2::ext::Protocol>()
        .map(|p| p.as_str())
}

/// An HTTP/2 stream's request head as the loop reads a head (`head::parse_stream`):
/// the request line and the fields the same request's HTTP/1.1 head carries, in that
/// head's order, decided by the same steps as one read from text. `:authority` is the
/// Host (RFC 9113 §8.3.1), and a `host` field equal to it is not repeated (one that
/// contradicts it is kept for the loop to refuse, as an HTTP/1.1 head with two hosts
/// is); cookies split across fields are one (§8.2.3); a body without a length is
/// chunked, as HTTP/1.1 frames it (a body ending with an empty DATA frame is then
/// framed once). An extended CONNECT is the HTTP/1.1 upgrade it stands for (RFC 8441
/// §5): `GET` with `Connection: upgrade`, `Upgrade: PROTOCOL` and, for a WebSocket, a
/// fresh `Sec-WebSocket-Key` (an HTTP/2 client sends none: the key and its accept are
/// the last hop's).
pub(in crate::dataplane::pipeline) struct StreamHead {
    pub method: http::Method,
    pub uri: http::Uri,
    pub fields: Vec<(HeaderName, HeaderValue)>,
    /// A pseudo-field HTTP/1.1 cannot carry (an `:authority` or `:protocol` that is no
    /// field value): the request is malformed.
    pub malformed: bool,
}

impl StreamHead {
    /// The head of the request `req` (its fields taken), `bodiless`: it has no body.
    pub(in crate::dataplane::pipeline) fn new(
        req: &mut http::request::Parts,
        bodiless: bool,
    ) -> StreamHead {
        let headers = std::mem::take(&mut req.headers);
        let upgrade = extended_connect(req);
        let mut head = StreamHead {
            method: match upgrade {
                Some(_) => http::Method::GET,
                None => req.method.clone(),
            },
            uri: http::Uri::default(),
            fields: Vec::with_capacity(headers.keys_len() + 3),
            malformed: false,
        };
        let authority = req.uri.authority().map(|a| a.as_str());
        if let Some(a) = authority {
            head.push_text(http::header::HOST, a);
        }
        if let Some(protocol) = upgrade {
            head.push_upgrade(protocol, &headers);
        }
        let mut cookies: Vec<HeaderValue> = Vec::new();
        let mut length = false;
        let mut fields = headers.into_iter().peekable();
        // The name of the field whose further values come next (given once for all).
        let mut repeated: Option<HeaderName> = None;
        while let Some((name, value)) = fields.next() {
            let name = match name {
                Some(name) => {
                    repeated = matches!(fields.peek(), Some((None, _))).then(|| name.clone());
                    name
                }
                None => match &repeated {
                    Some(name) => name.clone(),
                    None => continue,
                },
            };
            if name == http::header::HOST
                && authority.is_some_and(|a| a.eq_ignore_ascii_case(value.to_str().unwrap_or("")))
            {
                continue;
            }
            if name == http::header::COOKIE {
                cookies.push(value);
                continue;
            }
            length |= name == http::header::CONTENT_LENGTH;
            head.fields.push((name, value));
        }
        match cookies.len() {
            0 => {}
            1 => head.fields.push((http::header::COOKIE, cookies.remove(0))),
            _ => {
                let joined = cookies
                    .iter()
                    .map(|c| c.as_bytes())
                    .collect::<Vec<_>>()
                    .join(&b"; "[..]);
                let value = HeaderValue::from_maybe_shared(Bytes::from(joined));
                head.push(http::header::COOKIE, value);
            }
        }
        // A body without a length is chunked on HTTP/1.1 (a tunnel's bytes are no body).
        if !length && !bodiless && upgrade.is_none() {
            let chunked = HeaderValue::from_static("chunked");
            head.fields.push((http::header::TRANSFER_ENCODING, chunked));
        }
        head.uri = std::mem::take(&mut req.uri);
        head
    }

    fn push(&mut self, name: HeaderName, value: Result<HeaderValue, InvalidHeaderValue>) {
        match value {
            Ok(value) => self.fields.push((name, value)),
            Err(_) => self.malformed = true,
        }
    }

    fn push_text(&mut self, name: HeaderName, value: &str) {
        self.push(name, HeaderValue::from_str(value));
    }

    /// The upgrade fields of an extended CONNECT: the `Connection` and `Upgrade` pair
    /// and, for a WebSocket, a new `Sec-WebSocket-Key` (RFC 6455 §4.1: 16 random
    /// bytes in base64).
    fn push_upgrade(&mut self, protocol: &str, headers: &http::HeaderMap) {
        self.push_text(http::header::CONNECTION, "upgrade");
        self.push_text(http::header::UPGRADE, protocol);
        if protocol.eq_ignore_ascii_case("websocket") && !headers.contains_key("sec-websocket-key")
        {
            let key = HeaderValue::from_bytes(&base64(&rand::random::<[u8; 16]>()));
            self.push(http::header::SEC_WEBSOCKET_KEY, key);
        }
    }

    /// The request target: path and query.
    pub(in crate::dataplane::pipeline) fn target(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    /// The fields as the loop reads a head's: values trimmed of the white space
    /// HTTP/1.1's parser leaves out (RFC 9110 §5.5).
    pub(in crate::dataplane::pipeline) fn headers(&self) -> Vec<httparse::Header<'_>> {
        (self.fields.iter())
            .map(|(name, value)| httparse::Header {
                name: name.as_str(),
                value: value.as_bytes().trim_ascii(),
            })
            .collect()
    }

    /// Past the loop's head limits (`limits`: its length or its number of fields), as
    /// HTTP/1.1's parser measures the same head written as text.
    pub(in crate::dataplane::pipeline) fn past(&self, limits: &HeadLimitValues) -> bool {
        self.text_len() > limits.max_bytes
            || self.fields.len() > limits.max_headers.min(MAX_HEADERS)
    }

    /// Its length written as HTTP/1.1: what the loop's head limit measures.
    pub(in crate::dataplane::pipeline) fn text_len(&self) -> usize {
        let line = self.method.as_str().len() + 1 + self.target().len() + b" HTTP/1.1\r\n".len();
        let fields: usize = (self.fields.iter())
            .map(|(n, v)| n.as_str().len() + 2 + v.len() + 2)
            .sum();
        line + fields + 2
    }

    /// The head written as HTTP/1.1, as the loop would read the same request from an
    /// HTTP/1.1 client.
    #[cfg(test)]
    pub(in crate::dataplane::pipeline) fn text(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target()).into_bytes();
        for (name, value) in &self.fields {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// `bytes` in base64 (RFC 4648 §4, padded).
fn base64(bytes: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= group.len() {
                ALPHABET[(n >> (18 - 6 * i) & 63) as usize]
            } else {
                b'='
            });
        }
    }
    out
}

/// The answer head at the start of `buf`, as the loop wrote it for an HTTP/1.1 client:
/// None while incomplete; its length, the response for HTTP/2 (None for an
/// informational one), and how its body is framed. `tunnel`: the request was an
/// extended CONNECT, whose `101` is its success, a `200` on HTTP/2 (RFC 8441 §5), and
/// whose tunnel's bytes follow as the stream's DATA.
#[allow(clippy::type_complexity)]
pub(super) fn parse_answer(
    buf: &[u8],
    head_request: bool,
    tunnel: bool,
) -> io::Result<Option<(usize, Option<http::response::Parts>, Framing)>> {
    let mut slots = [MaybeUninit::<httparse::Header>::uninit(); MAX_HEADERS];
    let mut r = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut r, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(other(format!("answer head: {e}"))),
    };
    let status = r.code.unwrap_or(0);
    let opened = tunnel && status == 101;
    if status < 200 && !opened {
        return Ok(Some((len, None, Framing::Empty)));
    }
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = match opened {
        true => http::StatusCode::OK,
        false => http::StatusCode::from_u16(status).map_err(other)?,
    };
    parts.headers.reserve(r.headers.len());
    let (mut chunked, mut length) = (false, None);
    for h in r.headers.iter() {
        let name = h.name;
        // Connection-specific fields have no place in HTTP/2 (RFC 9113 §8.2.2); the
        // loop left only its own `Connection` of them.
        if HOP_BY_HOP.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            continue;
        }
        // The accept answers the key vigil sent: the client sent none.
        if opened && name.eq_ignore_ascii_case("sec-websocket-accept") {
            continue;
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
        }
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(other)?;
        let value = http::HeaderValue::from_bytes(h.value).map_err(other)?;
        parts.headers.append(name, value);
    }
    // Every answer has a Date (RFC 9110 §6.6.1); the backend's own is kept.
    if !parts.headers.contains_key(http::header::DATE) {
        parts.headers.insert(http::header::DATE, get_cached_date());
    }
    let framing = if opened {
        // The tunnel's bytes, until either side ends it.
        Framing::Close
    } else if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    Ok(Some((len, Some(parts), framing)))
}

/// A chunked body's trailer lines as HTTP/2 trailers (malformed lines left out).
pub(super) fn parse_trailers(lines: &[u8]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    // One copy, which the values share.
    let text = Text::copied(lines);
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        let (Ok(name), Ok(value)) = (fields::name(name), text.value(value)) else {
            continue;
        };
        // Not fields a trailer may carry on HTTP/2.
        if name == http::header::CONNECTION || name == http::header::TRANSFER_ENCODING {
            continue;
        }
        map.append(name, value);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::{base64, parse_answer};
    use crate::dataplane::pipeline::framing::Asked;
    use crate::dataplane::pipeline::response::parse_response;

    #[test]
    fn an_answer_handed_to_http2_as_fields_is_the_one_its_text_gave() {
        // The loop hands an HTTP/2 client's answer head to its codec as fields; what
        // an HTTP/1.1 client gets, read back as HTTP/2 (as the codec does for the
        // loop's own answers), must be the same head, framed the same.
        for head in [
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\
             Date: Sun, 06 Dec 2026 00:00:00 GMT\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, \
             x-private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=1\r\n\
             Set-Cookie: b=2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nUpgrade: h2c\r\nTE: trailers\r\nTrailer: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nServer: backend\r\n\r\n",
        ] {
            let text = parse_response(head.as_bytes(), Asked::default())
                .unwrap()
                .unwrap();
            let h2 = Asked {
                h2: true,
                ..Asked::default()
            };
            let fields = parse_response(head.as_bytes(), h2).unwrap().unwrap();
            assert!(fields.client_head.is_empty(), "{head}");
            let (len, read_back, framing) = parse_answer(&text.client_head, false, false)
                .unwrap()
                .unwrap();
            assert_eq!(len, text.client_head.len());
            let mut read_back = read_back.unwrap();
            let mut handed = fields.h2_head.unwrap();
            assert_eq!(handed.status, read_back.status, "{head}");
            assert_eq!(fields.framing, framing, "{head}");
            if !head.contains("Date:") {
                // Each adds the date of now (the same second, but read twice).
                assert!(handed.headers.remove(http::header::DATE).is_some());
                assert!(read_back.headers.remove(http::header::DATE).is_some());
            }
            assert_eq!(handed.headers, read_back.headers, "{head}");
            assert!(!handed.headers.contains_key(http::header::CONNECTION));
            assert!(!handed.headers.contains_key("x-private"), "{head}");
        }
    }

    #[test]
    fn base64_is_rfc_4648s() {
        // RFC 4648 §10's vectors, and RFC 6455 §4.1's sample key.
        for (raw, coded) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (b"the sample nonce", "dGhlIHNhbXBsZSBub25jZQ=="),
        ] {
            assert_eq!(base64(raw), coded.as_bytes(), "{raw:?}");
        }
    }
}
