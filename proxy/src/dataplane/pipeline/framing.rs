//! Framing of HTTP/1 messages as they pass: where an answer's head ends, what it says
//! about its body, and where a body (by length, chunked, or until the close) ends.

use super::MAX_HEADERS;
use crate::dataplane::request::{connection_keeps, HOP_BY_HOP};
use pingora::prelude::*;
use std::io::Write;
use std::mem::MaybeUninit;

/// A backend's response head may be at most this long (Pingora's own limit).
const MAX_RESPONSE_HEAD: usize = 1 << 20;

/// How the body of an answer ends (RFC 9112 §6.3).
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// At the end of the connection.
    Close,
}

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
    /// for a `101` to an upgrade, which is the handshake).
    pub client_head: Vec<u8>,
}

/// What the request the answer is for asked, as far as its framing goes.
#[derive(Clone, Copy, Default, Debug)]
pub(super) struct Asked {
    /// A `HEAD`: the answer has no body.
    pub head: bool,
    /// The client's connection closes after the answer.
    pub close: bool,
    /// An HTTP/1.0 client: it cannot read a chunked answer (RFC 9112 §6.1).
    pub http10: bool,
    /// The request asked to switch protocols: a `101` is passed on as it is.
    pub upgrade: bool,
}

pub(super) fn bad_response<T>(why: &'static str) -> Result<T> {
    Error::e_explain(InvalidHTTPHeader, why).map_err(|e| e.into_up())
}

/// Parses the backend's response head at the start of `buf`: None while incomplete.
/// `asked`: what the request it answers asked.
pub(super) fn parse_response(buf: &[u8], asked: Asked) -> Result<Option<Response>> {
    let Asked {
        head,
        close,
        http10,
        upgrade,
    } = asked;
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
            client_head: if status == 101 && upgrade {
                buf[..len].to_vec()
            } else {
                Vec::new()
            },
        }));
    }
    let mut length = None;
    let mut chunked = None;
    let (mut conn_close, mut conn_keepalive) = (false, false);
    // Headers the backend's `Connection` names: its connection's own, not passed on.
    let mut named: Vec<&[u8]> = Vec::new();
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (n, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return bad_response("invalid Content-Length"),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding counts: chunked or not.
            if let Some(last) = h
                .value
                .split(|&b| b == b',')
                .map(|c| c.trim_ascii())
                .next_back()
            {
                chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                conn_close |= token.eq_ignore_ascii_case(b"close");
                conn_keepalive |= token.eq_ignore_ascii_case(b"keep-alive");
                if !token.is_empty() && !connection_keeps(token) {
                    named.push(token);
                }
            }
        }
    }
    let framing = if head || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    let reusable = framing != Framing::Close
        && !(chunked.is_some() && length.is_some())
        && if r.version == Some(1) {
            !conn_close
        } else {
            conn_keepalive && !conn_close
        };
    // An HTTP/1.0 client gets a chunked body decoded, ended by the close.
    let dechunk = http10 && framing == Framing::Chunked;
    let keep = !close && framing != Framing::Close && !dechunk;
    let mut out = Vec::with_capacity(len + 32);
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", r.reason.unwrap_or(""));
    let mut dated = false;
    for h in r.headers.iter() {
        dated |= h.name.eq_ignore_ascii_case("date");
        let skip = HOP_BY_HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n))
            || (http10 && h.name.eq_ignore_ascii_case("transfer-encoding"))
            || named.iter().any(|n| h.name.as_bytes().eq_ignore_ascii_case(n))
            // A length beside Transfer-Encoding is not sent on (RFC 9112 §6.2).
            || (chunked.is_some() && h.name.eq_ignore_ascii_case("content-length"));
        if !skip {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    if !dated {
        // A recipient with a clock adds the Date an answer forwarded lacks (RFC 9110
        // §6.6.1), as Pingora's HTTP/2 server does.
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(pingora::protocols::http::date::get_cached_date().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(if keep {
        b"Connection: keep-alive\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
    Ok(Some(Response {
        len,
        status,
        framing,
        reusable,
        keep,
        dechunk,
        client_head: out,
    }))
}

/// Where a body being copied is: it tells how many of the next bytes belong to it,
/// and counts the payload (the bytes of its chunks, not their framing).
#[derive(Debug)]
pub(super) struct Body {
    state: State,
    /// Payload bytes seen so far.
    pub payload: u64,
    /// A chunked body's trailer lines, when kept (`keep_trailers`).
    trailers: Option<Vec<u8>>,
}

#[derive(Debug)]
enum State {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

/// The state of a chunked body (RFC 9112 §7.1) between two reads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// In a chunk-size line: the size so far, its digits, past them (an extension).
    Size {
        size: u64,
        digits: u8,
        ext: bool,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the empty line that ends the body).
    TrailerStart,
    TrailerLine,
    TrailerEndLf,
}

impl Body {
    pub(super) fn new(framing: Framing) -> Body {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size {
                size: 0,
                digits: 0,
                ext: false,
            }),
            Framing::Close => State::Close,
        };
        Body {
            state,
            payload: 0,
            trailers: None,
        }
    }

    /// Keeps a chunked body's trailer lines (up to 64 KiB), for `trailers`.
    pub(super) fn keep_trailers(&mut self) {
        self.trailers = Some(Vec::new());
    }

    /// The trailer lines seen so far (each with its line end), when kept.
    pub(super) fn trailers(&self) -> Option<&[u8]> {
        self.trailers.as_deref()
    }

    /// Of `bytes`, how many belong to the body, and whether it ended with them.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool)> {
        self.feed_to(bytes, None)
    }

    /// As `feed`, and with `payload` the bytes of the body's chunks (without their
    /// framing) are appended to it: a chunked body decoded, for an HTTP/1.0 client.
    pub(super) fn feed_to(
        &mut self,
        bytes: &[u8],
        mut payload: Option<&mut Vec<u8>>,
    ) -> Result<(usize, bool)> {
        match &mut self.state {
            State::Done => Ok((0, true)),
            State::Close => {
                self.payload += bytes.len() as u64;
                if let Some(out) = payload {
                    out.extend_from_slice(bytes);
                }
                Ok((bytes.len(), false))
            }
            State::Length(left) => {
                let take = (*left).min(bytes.len() as u64);
                *left -= take;
                let done = *left == 0;
                if done {
                    self.state = State::Done;
                }
                self.payload += take;
                if let Some(out) = payload {
                    out.extend_from_slice(&bytes[..take as usize]);
                }
                Ok((take as usize, done))
            }
            State::Chunked(state) => {
                let mut i = 0;
                while i < bytes.len() {
                    if let Chunk::Data(left) = state {
                        let take = (*left).min((bytes.len() - i) as u64);
                        *left -= take;
                        if let Some(out) = payload.as_deref_mut() {
                            out.extend_from_slice(&bytes[i..i + take as usize]);
                        }
                        self.payload += take;
                        i += take as usize;
                        if *left == 0 {
                            *state = Chunk::DataCr;
                        }
                        continue;
                    }
                    let b = bytes[i];
                    i += 1;
                    let before = *state;
                    *state = match (*state, b) {
                        (
                            Chunk::Size {
                                size,
                                digits,
                                ext: false,
                            },
                            _,
                        ) if b.is_ascii_hexdigit() => {
                            if digits >= 15 {
                                return bad_response("chunk size too large");
                            }
                            let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                            Chunk::Size {
                                size: size * 16 + d,
                                digits: digits + 1,
                                ext: false,
                            }
                        }
                        (Chunk::Size { digits: 0, .. }, _) => {
                            return bad_response("invalid chunk size")
                        }
                        (Chunk::Size { size, .. }, b'\r') => Chunk::SizeLf { size },
                        (Chunk::Size { size, .. }, b'\n') | (Chunk::SizeLf { size }, b'\n') => {
                            if size == 0 {
                                Chunk::TrailerStart
                            } else {
                                Chunk::Data(size)
                            }
                        }
                        (Chunk::Size { size, digits, .. }, b';' | b' ' | b'\t') => Chunk::Size {
                            size,
                            digits,
                            ext: true,
                        },
                        (s @ Chunk::Size { ext: true, .. }, _) => s,
                        (Chunk::DataCr, b'\r') => Chunk::DataLf,
                        (Chunk::DataCr | Chunk::DataLf, b'\n') => Chunk::Size {
                            size: 0,
                            digits: 0,
                            ext: false,
                        },
                        (Chunk::TrailerStart, b'\r') => Chunk::TrailerEndLf,
                        (Chunk::TrailerStart | Chunk::TrailerEndLf, b'\n') => {
                            self.state = State::Done;
                            return Ok((i, true));
                        }
                        (Chunk::TrailerLine, b'\n') => Chunk::TrailerStart,
                        (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
                        _ => return bad_response("invalid chunked body"),
                    };
                    if let Some(t) = self.trailers.as_mut() {
                        let in_line = *state == Chunk::TrailerLine
                            || (before == Chunk::TrailerLine && b == b'\n');
                        if in_line && t.len() < 64 * 1024 {
                            t.push(b);
                        }
                    }
                }
                Ok((bytes.len(), false))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(framing: Framing, parts: &[&[u8]]) -> Result<(usize, bool)> {
        let mut body = Body::new(framing);
        let mut total = 0;
        for part in parts {
            let (take, done) = body.feed(part)?;
            total += take;
            if done {
                return Ok((total, true));
            }
            assert_eq!(take, part.len(), "all of a part is body until the end");
        }
        Ok((total, false))
    }

    #[test]
    fn chunked_bodies_end_where_their_last_chunk_and_trailers_end() {
        let body: &[u8] = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nx-t: 1\r\n\r\n";
        assert_eq!(
            feed_all(Framing::Chunked, &[body]).unwrap(),
            (body.len(), true)
        );
        let mut with_next = body.to_vec();
        with_next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(
            feed_all(Framing::Chunked, &[&with_next]).unwrap(),
            (body.len(), true)
        );
        // Split at every byte.
        let parts: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(
            feed_all(Framing::Chunked, &parts).unwrap(),
            (body.len(), true)
        );
        assert_eq!(
            feed_all(Framing::Chunked, &[b"0\r\n\r\n"]).unwrap(),
            (5, true)
        );
        assert_eq!(
            feed_all(Framing::Chunked, &[b"a\r\n0123456789"]).unwrap(),
            (13, false)
        );
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"ffffffffffffffff0\r\n",
        ] {
            assert!(feed_all(Framing::Chunked, &[bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn length_bodies_take_only_their_length() {
        assert_eq!(
            feed_all(Framing::Length(3), &[b"ab", b"cdef"]).unwrap(),
            (3, true)
        );
        assert_eq!(feed_all(Framing::Empty, &[b"abc"]).unwrap(), (0, true));
        assert_eq!(
            feed_all(Framing::Close, &[b"abc", b"d"]).unwrap(),
            (4, false)
        );
    }

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
