//! Framing of HTTP/1 bodies as they pass: how a body ends (by length, chunked, or at
//! the close), and where it does.

use pingora::prelude::*;

/// How the body of an answer ends (RFC 9112 §6.3).
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// At the end of the connection.
    Close,
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
    /// The client is an HTTP/2 stream: the answer's head goes to its codec as HTTP/2
    /// fields (`Response::h2_head`), not written as HTTP/1.1 text to be read back.
    pub h2: bool,
}

/// The most of a chunked body's trailer lines kept (`Body::keep_trailers`).
const MAX_TRAILERS: usize = 64 * 1024;

pub(super) fn bad_response<T>(why: &'static str) -> Result<T> {
    Error::e_explain(InvalidHTTPHeader, why).map_err(|e| e.into_up())
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

impl Chunk {
    /// The state after byte `b` of the chunked framing (not of a chunk's data); None
    /// when `b` ends the body.
    fn step(self, b: u8) -> Result<Option<Chunk>> {
        Ok(Some(match (self, b) {
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
            (Chunk::Size { digits: 0, .. }, _) => return bad_response("invalid chunk size"),
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
            (Chunk::TrailerStart | Chunk::TrailerEndLf, b'\n') => return Ok(None),
            (Chunk::TrailerLine, b'\n') => Chunk::TrailerStart,
            (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
            _ => return bad_response("invalid chunked body"),
        }))
    }
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
                    if *state == Chunk::TrailerLine {
                        // The rest of a trailer line at once, up to its line end (the
                        // byte steps below would take it a byte at a time).
                        let rest = &bytes[i..];
                        let end = rest.iter().position(|&b| b == b'\n');
                        let line = &rest[..end.map_or(rest.len(), |at| at + 1)];
                        if let Some(t) = self.trailers.as_mut() {
                            let room = MAX_TRAILERS.saturating_sub(t.len());
                            t.extend_from_slice(&line[..line.len().min(room)]);
                        }
                        i += line.len();
                        if end.is_some() {
                            *state = Chunk::TrailerStart;
                        }
                        continue;
                    }
                    let b = bytes[i];
                    i += 1;
                    match state.step(b)? {
                        Some(next) => *state = next,
                        None => {
                            self.state = State::Done;
                            return Ok((i, true));
                        }
                    }
                    // A trailer line's first byte (the rest is taken above).
                    if let Some(t) = self.trailers.as_mut() {
                        if *state == Chunk::TrailerLine && t.len() < MAX_TRAILERS {
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
    fn a_chunked_body_s_trailer_lines_are_kept_however_they_come() {
        let body: &[u8] = b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\n\r\nnext";
        let lines: &[u8] = b"grpc-status: 0\r\ngrpc-message: ok\n";
        for size in [1, 2, 5, 17, body.len()] {
            let mut b = Body::new(Framing::Chunked);
            b.keep_trailers();
            let mut taken = 0;
            for part in body.chunks(size) {
                let (take, done) = b.feed(part).unwrap();
                taken += take;
                if done {
                    break;
                }
            }
            assert_eq!(taken, body.len() - 4, "split every {size}");
            assert_eq!(b.trailers(), Some(lines), "split every {size}");
            assert_eq!(b.payload, 3);
        }
        // At most 64 KiB of them are kept; the body still ends after all of them.
        let mut long = b"0\r\nx: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 70 * 1024));
        long.extend_from_slice(b"\r\n\r\n");
        let mut b = Body::new(Framing::Chunked);
        b.keep_trailers();
        assert_eq!(b.feed(&long).unwrap(), (long.len(), true));
        assert_eq!(b.trailers().map(<[u8]>::len), Some(64 * 1024));
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
}
