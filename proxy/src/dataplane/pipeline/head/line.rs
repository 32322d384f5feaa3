//! Reading a request head's line and fields, from the client's text or from an HTTP/2
//! stream's fields (`StreamHead`), into the one form the loop decides from (`Line`).

use super::{Env, Head, StreamHead, Text, MAX_HEADERS};
use crate::dataplane::pipeline::fields::Cut;
use std::mem::MaybeUninit;

/// What a head was read from.
#[derive(Clone, Copy)]
pub(super) enum Source<'a> {
    /// The client's bytes: the head's text.
    Text(&'a [u8]),
    /// An HTTP/2 stream's fields.
    Stream(&'a StreamHead),
}

impl<'a> Source<'a> {
    /// The head's length as HTTP/1.1 text.
    pub(super) fn len(self) -> usize {
        match self {
            Source::Text(text) => text.len(),
            Source::Stream(head) => head.text_len(),
        }
    }

    /// What a head for an HTTP/2 backend is cut from: a copy of the text, or the
    /// stream's own fields.
    pub(super) fn cut(self) -> Cut<'a> {
        match self {
            Source::Text(text) => Cut::Text(Text::copied(text)),
            Source::Stream(head) => Cut::Fields(&head.fields),
        }
    }
}

/// A whole head's request line, and its fields unread.
pub(super) struct Line<'b, 'h> {
    /// Bytes of the client's buffer the head took (none for an HTTP/2 stream's).
    pub(super) len: usize,
    pub(super) http10: bool,
    pub(super) method: &'b str,
    pub(super) target: &'b str,
    pub(super) headers: &'h [httparse::Header<'b>],
}

impl<'b, 'h> Line<'b, 'h> {
    /// `Err` when the head is not whole yet, or is for Pingora's parser to judge.
    pub(super) fn parse(
        buf: &'b [u8],
        env: &Env,
        slots: &'h mut [MaybeUninit<httparse::Header<'b>>],
    ) -> Result<Line<'b, 'h>, Head> {
        let limits = env.limits;
        let mut req = httparse::Request::new(&mut []);
        let max = limits.max_headers.min(MAX_HEADERS);
        let len = match req.parse_with_uninit_headers(buf, &mut slots[..max]) {
            Ok(httparse::Status::Complete(len)) if len <= limits.max_bytes => len,
            Ok(httparse::Status::Partial) if buf.len() <= limits.max_bytes => {
                return Err(Head::Partial)
            }
            // Too long, too many headers, malformed: Pingora's parser judges it (400, 431).
            _ => return Err(Head::Other),
        };
        let http10 = match req.version {
            Some(1) => false,
            Some(0) => true,
            _ => return Err(Head::Other),
        };
        let (Some(method), Some(target)) = (req.method, req.path) else {
            return Err(Head::Other);
        };
        carried(method, target)?;
        Ok(Line {
            len,
            http10,
            method,
            target,
            headers: req.headers,
        })
    }

    /// An HTTP/2 stream's head as `parse` would read it written as HTTP/1.1: `Err`
    /// where that is refused, past the limits, or one the loop does not carry.
    pub(super) fn of_stream(
        head: &'b StreamHead,
        headers: &'h [httparse::Header<'b>],
        env: &Env,
    ) -> Result<Line<'b, 'h>, Head> {
        if head.malformed || head.past(env.limits) {
            return Err(Head::Other);
        }
        let (method, target) = (head.method.as_str(), head.target());
        carried(method, target)?;
        Ok(Line {
            len: 0,
            http10: false,
            method,
            target,
            headers,
        })
    }
}

/// `Err` for a request line the loop does not carry: CONNECT, absolute- or
/// asterisk-form targets (a forward proxy's) and targets with bytes outside RFC 3986
/// are Pingora's.
fn carried(method: &str, target: &str) -> Result<(), Head> {
    match method == "CONNECT" || !target.starts_with('/') || !target.bytes().all(uri_byte) {
        true => Err(Head::Other),
        false => Ok(()),
    }
}

/// Bytes of an origin-form target passed on as they are (RFC 3986 pchar, `/`, `?` and
/// `%`); a target with any other byte is Pingora's parser's to judge.
fn uri_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}
