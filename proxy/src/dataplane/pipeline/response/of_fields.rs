//! An HTTP/2 backend's answer going to an HTTP/2 client, decided from its fields: as
//! `parse_response` decides the same answer written as HTTP/1.1 text
//! (`convert_up::answer_head`), without writing or reading the text. `fuzz_answer`
//! checks that the two agree.

use super::super::framing::{bad_response, Asked, Framing};
use super::super::MAX_HEADERS;
use super::{Fields, LoadAt, Response, MAX_RESPONSE_HEAD};
use crate::dataplane::request::HOP_BY_HOP;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, StatusCode};
use pingora::prelude::*;
use vigil_healthcheck::load_report;

/// The answer whose head is `parts` (`H2Upstream::poll_head`), for a request that
/// asked `asked` of an HTTP/2 client; `end`: its HEADERS ended the stream.
pub(in crate::dataplane::pipeline) fn parse_fields(
    parts: http::response::Parts,
    end: bool,
    asked: Asked,
) -> Result<Response> {
    let status = parts.status;
    if status.is_informational() {
        // h2 gives an interim head only to `poll_informational`, which vigil never asks.
        return bad_response("an informational answer as the final one");
    }
    let mut headers = parts.headers;
    // The text would lack the connection's fields and `Transfer-Encoding` (h2 refuses
    // them from a backend), and say `content-length: 0` for a body the HEADERS ended.
    let bodiless =
        asked.head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let zero = !bodiless && end && !headers.contains_key(CONTENT_LENGTH);
    let text_only = |name: &http::HeaderName| name == TRANSFER_ENCODING || name == CONNECTION;
    // The loop's bounds on a head, as the text would meet them, and whether a field is
    // not passed on as it is (the connection's own, or a value with white space about
    // it, which the text's parser trims).
    let mut count = usize::from(zero);
    let mut size = "HTTP/1.1 200 \r\n\r\n".len()
        + status.canonical_reason().map_or(0, str::len)
        + if zero {
            "content-length: 0\r\n".len()
        } else {
            0
        };
    let mut rebuild = false;
    for (name, value) in &headers {
        if text_only(name) {
            rebuild = true;
            continue;
        }
        count += 1;
        size += name.as_str().len() + value.len() + 4;
        rebuild |= HOP_BY_HOP.contains(&name.as_str()) || padded(value.as_bytes());
    }
    if count > MAX_HEADERS {
        return bad_response("invalid response head");
    }
    if size > MAX_RESPONSE_HEAD {
        return bad_response("response head too large");
    }
    let fields = Fields::scan(
        headers
            .iter()
            .filter(|(name, _)| !text_only(name))
            .map(|(name, value)| (name.as_str(), value.as_bytes().trim_ascii())),
    )?;
    let framing = match fields.length {
        _ if bodiless => Framing::Empty,
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None if zero => Framing::Empty,
        None => Framing::Close,
    };
    let load_report = match fields.load_report {
        Some(_) => headers
            .get_all(load_report::HEADER)
            .iter()
            .next_back()
            .cloned(),
        None => None,
    };
    if rebuild {
        headers = passed_on(&headers, &fields);
    }
    if zero {
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    if !headers.contains_key(DATE) {
        // As for any answer forwarded without one (`ClientHead::write`).
        let date = pingora::protocols::http::date::get_cached_date();
        headers.insert(DATE, date);
    }
    let (mut head, ()) = http::Response::new(()).into_parts();
    head.status = status;
    head.headers = headers;
    Ok(Response {
        len: 0,
        status: status.as_u16(),
        framing,
        reusable: framing != Framing::Close,
        keep: !asked.close && framing != Framing::Close,
        dechunk: false,
        client_head: Vec::new(),
        h2_head: Some(head),
        load_report: load_report.map(LoadAt::Field),
    })
}

/// A value the text's parser would trim.
fn padded(value: &[u8]) -> bool {
    let space = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    space(value.first()) || space(value.last())
}

/// The fields of `headers` an HTTP/2 client gets: not the connection's own (`fields`
/// tells, as for a head read as text) nor a `Transfer-Encoding`, their values trimmed.
fn passed_on(headers: &HeaderMap, fields: &Fields) -> HeaderMap {
    let mut kept = HeaderMap::with_capacity(headers.len() + 2);
    for (name, value) in headers {
        if name == TRANSFER_ENCODING || fields.connection_s_own(name.as_str()) {
            continue;
        }
        let value = match padded(value.as_bytes()) {
            // A part of a valid value is valid.
            true => HeaderValue::from_bytes(value.as_bytes().trim_ascii()).unwrap_or(value.clone()),
            false => value.clone(),
        };
        kept.append(name.clone(), value);
    }
    kept
}
