//! A backend's answer head as it arrives: where it ends, how its body is framed,
//! whether either connection can carry another request, and the head the client gets.

mod of_fields;

use super::fields::{self, Text};
use super::framing::{bad_response, Asked, Framing};
use super::MAX_HEADERS;
use crate::dataplane::request::{connection_keeps, HOP_BY_HOP};
pub(super) use of_fields::parse_fields;
use pingora::prelude::*;
use std::io::Write;
use std::mem::MaybeUninit;
use std::ops::Range;
use vigil_healthcheck::load_report;

/// A backend's response head may be at most this long (Pingora's own limit).
const MAX_RESPONSE_HEAD: usize = 1 << 20;

/// A backend's response head, parsed.
pub(super) struct Response {
    /// Bytes of the buffer the head took.
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The backend's connection may carry another request.
    pub reusable: bool,
    /// The client's connection may carry another request after this answer.
    pub keep: bool,
    /// A chunked body the client gets decoded (an HTTP/1.0 client).
    pub dechunk: bool,
    /// The head for the client (empty for an informational answer; the backend's own
    /// for a `101` to an upgrade, which is the handshake; empty for an HTTP/2 client).
    pub client_head: Vec<u8>,
    /// The head for an HTTP/2 client (`Asked::h2`), as its codec sends it.
    pub h2_head: Option<http::response::Parts>,
    /// Its `endpoint-load-metrics` value (an ORCA load report): parsed only by pools
    /// that balance by reports.
    pub load_report: Option<LoadAt>,
}

/// Where an answer's load report is.
pub(super) enum LoadAt {
    /// In the head's text, at this range of the buffer it was read into.
    Text(Range<usize>),
    /// A field of an HTTP/2 backend's head (`parse_fields`).
    Field(http::HeaderValue),
}

impl LoadAt {
    /// The report's value; `buf`: the buffer the head was read into.
    pub fn value<'a>(&'a self, buf: &'a [u8]) -> &'a [u8] {
        match self {
            LoadAt::Text(at) => &buf[at.clone()],
            // Trimmed, as the text's parser trims a value.
            LoadAt::Field(value) => value.as_bytes().trim_ascii(),
        }
    }
}

/// Parses the backend's response head at the start of `buf`: None while incomplete.
/// `asked`: what the request it answers asked.
pub(super) fn parse_response(buf: &[u8], asked: Asked) -> Result<Option<Response>> {
    let mut slots = [MaybeUninit::<httparse::Header>::uninit(); MAX_HEADERS];
    let mut r = httparse::Response::new(&mut []);
    // As Pingora's client does, a space before a header's colon is let through;
    // obsolete line folding is not (a folded value would be passed on folded).
    let mut config = httparse::ParserConfig::default();
    config.allow_spaces_after_header_name_in_responses(true);
    let len = match config.parse_response_with_uninit_headers(&mut r, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_RESPONSE_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => return bad_response("response head too large"),
        Err(_) => return bad_response("invalid response head"),
    };
    let status = r.code.unwrap_or(0);
    if status < 200 {
        return Ok(Some(Response {
            len,
            status,
            framing: Framing::Empty,
            reusable: false,
            keep: false,
            dechunk: false,
            client_head: if status == 101 && asked.upgrade {
                buf[..len].to_vec()
            } else {
                Vec::new()
            },
            h2_head: None,
            load_report: None,
        }));
    }
    let fields = Fields::scan(r.headers.iter().map(|h| (h.name, h.value)))?;
    let framing = if asked.head || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (fields.chunked, fields.length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    let reusable = framing != Framing::Close
        && !(fields.chunked.is_some() && fields.length.is_some())
        && if r.version == Some(1) {
            !fields.close
        } else {
            fields.keep_alive && !fields.close
        };
    // An HTTP/1.0 client gets a chunked body decoded, ended by the close.
    let dechunk = asked.http10 && framing == Framing::Chunked;
    let keep = !asked.close && framing != Framing::Close && !dechunk;
    let head = ClientHead {
        status,
        reason: r.reason.unwrap_or(""),
        headers: r.headers,
        fields: &fields,
        http10: asked.http10,
        keep,
    };
    let (client_head, h2_head) = match asked.h2 {
        true => (Vec::new(), Some(head.h2(&buf[..len])?)),
        false => (head.write(len + 32), None),
    };
    Ok(Some(Response {
        len,
        status,
        framing,
        reusable,
        keep,
        dechunk,
        client_head,
        h2_head,
        load_report: fields.load_report.map(|v| {
            let at = v.as_ptr() as usize - buf.as_ptr() as usize;
            LoadAt::Text(at..at + v.len())
        }),
    }))
}

/// What the framing and the connection depend on, from an answer's fields.
struct Fields<'a> {
    length: Option<u64>,
    /// `Transfer-Encoding` was there: whether its last coding is `chunked`.
    chunked: Option<bool>,
    close: bool,
    keep_alive: bool,
    /// Fields the backend's `Connection` names: its connection's own, not passed on.
    named: Vec<&'a [u8]>,
    /// `endpoint-load-metrics`.
    load_report: Option<&'a [u8]>,
}

impl<'a> Fields<'a> {
    /// `headers`: each field's name and value.
    fn scan(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<Fields<'a>> {
        let mut f = Fields {
            length: None,
            chunked: None,
            close: false,
            keep_alive: false,
            named: Vec::new(),
            load_report: None,
        };
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok());
                match (n, f.length) {
                    (Some(n), None) => f.length = Some(n),
                    (Some(n), Some(m)) if n == m => {}
                    _ => return bad_response("invalid Content-Length"),
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Only the last coding counts: chunked or not.
                if let Some(last) = value
                    .split(|&b| b == b',')
                    .map(|c| c.trim_ascii())
                    .next_back()
                {
                    f.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
                }
            } else if name.eq_ignore_ascii_case("connection") {
                for token in value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    f.close |= token.eq_ignore_ascii_case(b"close");
                    f.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                    if !token.is_empty() && !connection_keeps(token) {
                        f.named.push(token);
                    }
                }
            } else if name.eq_ignore_ascii_case(load_report::HEADER) {
                f.load_report = Some(value);
            }
        }
        Ok(f)
    }

    /// A field of the backend's connection, not passed on whatever the client's
    /// protocol: a hop-by-hop one, one its `Connection` names, or a length beside
    /// `Transfer-Encoding` (RFC 9112 §6.2).
    fn connection_s_own(&self, name: &str) -> bool {
        HOP_BY_HOP.iter().any(|n| name.eq_ignore_ascii_case(n))
            || self
                .named
                .iter()
                .any(|n| name.as_bytes().eq_ignore_ascii_case(n))
            || (self.chunked.is_some() && name.eq_ignore_ascii_case("content-length"))
    }
}

/// The answer's head as the client gets it.
struct ClientHead<'a> {
    status: u16,
    reason: &'a str,
    headers: &'a [httparse::Header<'a>],
    fields: &'a Fields<'a>,
    http10: bool,
    keep: bool,
}

impl ClientHead<'_> {
    /// The backend's fields less its connection's own (and a length beside chunked
    /// framing), a `Date` if it gave none, and the client connection's fate.
    fn write(&self, capacity: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(capacity);
        let _ = write!(out, "HTTP/1.1 {} {}\r\n", self.status, self.reason);
        let mut dated = false;
        for h in self.headers {
            dated |= h.name.eq_ignore_ascii_case("date");
            let skip = self.fields.connection_s_own(h.name)
                || (self.http10 && h.name.eq_ignore_ascii_case("transfer-encoding"));
            if !skip {
                out.extend_from_slice(h.name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(h.value);
                out.extend_from_slice(b"\r\n");
            }
        }
        if !dated {
            // A recipient with a clock adds the Date an answer forwarded lacks (RFC 9110
            // §6.6.1), for HTTP/2 clients too (`h2`).
            out.extend_from_slice(b"Date: ");
            out.extend_from_slice(pingora::protocols::http::date::get_cached_date().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(if self.keep {
            b"Connection: keep-alive\r\n\r\n"
        } else {
            b"Connection: close\r\n\r\n"
        });
        out
    }

    /// The same head as an HTTP/2 client gets it: as HTTP/2 fields, with neither the
    /// connection-specific ones (RFC 9113 §8.2.2) nor HTTP/1.1's framing
    /// (`Transfer-Encoding`: the codec frames the body), and a `Date` if it had none.
    /// `text`: the head its fields were parsed from, copied once for their values.
    fn h2(&self, text: &[u8]) -> Result<http::response::Parts> {
        let text = Text::copied(text);
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = match http::StatusCode::from_u16(self.status) {
            Ok(status) => status,
            Err(_) => return bad_response("invalid status"),
        };
        parts.headers.reserve(self.headers.len() + 1);
        let mut dated = false;
        for h in self.headers {
            let Ok(name) = fields::name(h.name.as_bytes()) else {
                return bad_response("invalid header name");
            };
            dated |= name == http::header::DATE;
            if self.fields.connection_s_own(name.as_str())
                || name == http::header::TRANSFER_ENCODING
            {
                continue;
            }
            let Ok(value) = text.value(h.value) else {
                return bad_response("invalid header value");
            };
            parts.headers.append(name, value);
        }
        if !dated {
            let date = pingora::protocols::http::date::get_cached_date();
            parts.headers.insert(http::header::DATE, date);
        }
        Ok(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &str, head_req: bool, close: bool) -> Response {
        let asked = Asked {
            head: head_req,
            close,
            ..Asked::default()
        };
        parse_response(head.as_bytes(), asked)
            .expect("valid")
            .expect("complete")
    }

    #[test]
    fn responses_are_framed_as_rfc_9112_says() {
        let r = parsed(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            false,
            false,
        );
        assert_eq!((r.framing, r.reusable), (Framing::Length(5), true));
        assert_eq!(r.len, 38);
        let r = parsed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, false);
        assert_eq!(r.framing, Framing::Empty, "an answer to HEAD has no body");
        let r = parsed(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            false,
            false,
        );
        assert_eq!(r.framing, Framing::Empty);
        let r = parsed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
            false,
        );
        assert_eq!((r.framing, r.reusable), (Framing::Chunked, true));
        let r = parsed("HTTP/1.1 200 OK\r\n\r\n", false, false);
        assert_eq!((r.framing, r.reusable), (Framing::Close, false));
        let r = parsed(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
            false,
            false,
        );
        assert!(!r.reusable);
        let r = parsed("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false, false);
        assert!(!r.reusable, "HTTP/1.0 without keep-alive closes");
        let r = parsed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            false,
            false,
        );
        assert_eq!((r.framing, r.reusable), (Framing::Chunked, false));
        let head = String::from_utf8(r.client_head).unwrap();
        assert!(
            !head.to_ascii_lowercase().contains("content-length"),
            "{head}"
        );
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1 1\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            assert!(
                parse_response(bad.as_bytes(), Asked::default()).is_err(),
                "{bad}"
            );
        }
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nA: b\r\n", Asked::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_client_gets_the_head_without_hop_by_hop_headers() {
        let r = parsed(
            "HTTP/1.1 200 Fine\r\nX-A: 1\r\nConnection: keep-alive, x-a\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
        );
        assert_eq!(
            String::from_utf8(r.client_head).unwrap(),
            "HTTP/1.1 200 Fine\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
            "X-A is named by Connection: the backend's connection's own"
        );
        let r = parsed("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, true);
        let head = String::from_utf8(r.client_head).unwrap();
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
        // An answer without a Date gets one (RFC 9110 §6.6.1).
        assert!(head.contains("\r\nDate: "), "{head}");
    }
}
