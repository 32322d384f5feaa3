//! HTTP/2 fields made from the HTTP/1.1 text the loop and the codecs pass each other,
//! without a copy and an allocation for each: names `http` has no constant for but
//! every request or gRPC answer carries are named from constants, and values are
//! slices of one buffer holding the text (`Text`), which they share.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, InvalidHeaderName, InvalidHeaderValue};

/// Names vigil writes on every request (the contract's forwarded fields, the request
/// id) and gRPC's on every answer: `HeaderName::from_bytes` would allocate each.
static KNOWN: [(&str, HeaderName); 8] = [
    known("x-forwarded-for"),
    known("x-forwarded-proto"),
    known("x-forwarded-host"),
    known("x-request-id"),
    known("grpc-status"),
    known("grpc-message"),
    known("grpc-encoding"),
    known("grpc-accept-encoding"),
];

const fn known(name: &'static str) -> (&'static str, HeaderName) {
    (name, HeaderName::from_static(name))
}

/// The field name `name` (any case), as `HeaderName::from_bytes` makes it.
pub(in crate::dataplane::pipeline) fn name(name: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    // Only `x-` and `grpc-` names are looked for; `http`'s own are found by it.
    if matches!(name.first(), Some(b'x' | b'X' | b'g' | b'G')) {
        for (text, known) in &KNOWN {
            if text.len() == name.len() && text.as_bytes().eq_ignore_ascii_case(name) {
                return Ok(known.clone());
            }
        }
    }
    HeaderName::from_bytes(name)
}

/// Text that fields are cut from: each value a slice of it, sharing its buffer.
pub(in crate::dataplane::pipeline) struct Text {
    bytes: Bytes,
    /// Where the text the parts are slices of starts: `bytes` itself, or the text
    /// `copied` copied.
    base: usize,
}

impl Text {
    /// `text`, which the parts will be slices of.
    #[cfg(test)]
    pub(in crate::dataplane::pipeline) fn new(text: Bytes) -> Text {
        let base = text.as_ptr() as usize;
        Text { bytes: text, base }
    }

    /// A copy of `text`, made once, for parts that are slices of `text`.
    pub(in crate::dataplane::pipeline) fn copied(text: &[u8]) -> Text {
        Text {
            bytes: Bytes::copy_from_slice(text),
            base: text.as_ptr() as usize,
        }
    }

    /// The text, whole.
    #[cfg(test)]
    pub(in crate::dataplane::pipeline) fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// `part`, a slice of the text, as a `Bytes` sharing its buffer.
    pub(in crate::dataplane::pipeline) fn share(&self, part: &[u8]) -> Bytes {
        if part.is_empty() {
            // (An empty slice need not point into the text.)
            return Bytes::new();
        }
        let at = (part.as_ptr() as usize).wrapping_sub(self.base);
        debug_assert!(
            at + part.len() <= self.bytes.len(),
            "not a part of the text"
        );
        // (A part from elsewhere panics here rather than giving other bytes.)
        self.bytes.slice(at..at + part.len())
    }

    /// The text from the start of `first` to the end of `last`, shared, when both are
    /// parts of it in that order; else None.
    pub(in crate::dataplane::pipeline) fn span(&self, first: &[u8], last: &[u8]) -> Option<Bytes> {
        let start = (first.as_ptr() as usize).checked_sub(self.base)?;
        let end = (last.as_ptr() as usize + last.len()).checked_sub(self.base)?;
        (start <= end && end <= self.bytes.len()).then(|| self.bytes.slice(start..end))
    }

    /// `part` (as in `share`) as a field value, validated as `HeaderValue::from_bytes`
    /// validates it.
    pub(in crate::dataplane::pipeline) fn value(
        &self,
        part: &[u8],
    ) -> Result<HeaderValue, InvalidHeaderValue> {
        HeaderValue::from_maybe_shared(self.share(part))
    }
}

/// Where the fields of a head made for HTTP/2 are cut from: the text an HTTP/1 head
/// was parsed from, or the fields of an HTTP/2 stream's head (`h2::StreamHead`), which
/// are already names and values.
pub(in crate::dataplane::pipeline) enum Cut<'a> {
    Text(Text),
    /// The stream's fields, in the order of the `httparse::Header`s they were shown
    /// to the loop as (`StreamHead::headers`).
    Fields(&'a [(HeaderName, HeaderValue)]),
}

impl Cut<'_> {
    /// The name of `header`, the `index`-th field of its head.
    pub(in crate::dataplane::pipeline) fn name(
        &self,
        index: usize,
        header: &httparse::Header,
    ) -> Result<HeaderName, InvalidHeaderName> {
        match self {
            Cut::Fields(fields) if index < fields.len() => Ok(fields[index].0.clone()),
            _ => name(header.name.as_bytes()),
        }
    }

    /// The value of `header`, the `index`-th field of its head.
    pub(in crate::dataplane::pipeline) fn value(
        &self,
        index: usize,
        header: &httparse::Header,
    ) -> Result<HeaderValue, InvalidHeaderValue> {
        match self {
            Cut::Text(text) => text.value(header.value),
            // The value as shown to the loop (trimmed, as HTTP/1.1's parser trims).
            Cut::Fields(fields) => match fields.get(index) {
                Some((_, value)) if value.as_bytes().len() == header.value.len() => {
                    Ok(value.clone())
                }
                _ => HeaderValue::from_bytes(header.value),
            },
        }
    }

    /// `part` of the head, as `Bytes` (shared with the text when there is one).
    pub(in crate::dataplane::pipeline) fn share(&self, part: &[u8]) -> Bytes {
        match self {
            Cut::Text(text) => text.share(part),
            Cut::Fields(_) => Bytes::copy_from_slice(part),
        }
    }

    /// As `Text::span`; None for fields.
    pub(in crate::dataplane::pipeline) fn span(&self, first: &[u8], last: &[u8]) -> Option<Bytes> {
        match self {
            Cut::Text(text) => text.span(first, last),
            Cut::Fields(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_are_the_ones_from_bytes_gives() {
        for n in [
            &b"x-forwarded-for"[..],
            b"X-Request-Id",
            b"grpc-status",
            b"GRPC-Message",
            b"content-type",
            b"x-other",
            b"x-forwarded-fo",
            b"bad name",
            b"",
        ] {
            assert_eq!(
                name(n).ok(),
                HeaderName::from_bytes(n).ok(),
                "{}",
                String::from_utf8_lossy(n)
            );
        }
        let text = b"a: one\r\nb: t\x7fwo\r\nc: \r\n";
        let copied = Text::copied(text);
        for (at, len) in [(3, 3), (11, 4), (19, 0)] {
            let part = &text[at..at + len];
            assert_eq!(copied.value(part).ok(), HeaderValue::from_bytes(part).ok());
            let shared = Text::new(Bytes::copy_from_slice(text));
            let own = &shared.bytes()[at..at + len];
            assert_eq!(shared.share(own), part);
            assert!(shared.share(&[]).is_empty() && copied.value(&[]).is_ok());
        }
    }
}
