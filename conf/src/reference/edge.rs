//! What vigil allows clients: per-request limits, HTTP/2 settings, the access log.

use super::{Key, Section, Type};
use crate::bounds;
use crate::types::*;

pub(super) fn sections() -> Vec<Section> {
    vec![limits(), http2(), access_log()]
}

fn limits() -> Section {
    let d = LimitsConfig::default();
    Section {
        title: "limits",
        about: "Per request, on every listener, answered by vigil without calling a backend \
                (contract §5 Edge).",
        keys: vec![
            Key::section("limits").means("per-request limits"),
            Key::count("limits.header_bytes", d.header_bytes, bounds::HEADER_BYTES)
                .means("request line and headers; over it `431`"),
            Key::count("limits.headers", d.headers, bounds::HEADERS)
                .means("header count; over it `431`"),
            Key::duration("limits.header_timeout", d.header_timeout)
                .positive()
                .means(
                    "the whole request head within this of its first byte, else `408` and close",
                ),
            Key::int("limits.body_bytes", d.body_bytes as i64, bounds::BODY_BYTES)
                .means("request body; over it `413`; `0`: no limit"),
            Key::duration("limits.body_timeout", d.body_timeout)
                .positive()
                .means("the whole request body within this of its head, else `408` and close"),
            Key::duration("limits.client_write_timeout", d.client_write_timeout)
                .positive()
                .means("a client slower than this to take one write of its answer is cut"),
        ],
    }
}

fn http2() -> Section {
    let d = Http2Config::default();
    Section {
        title: "http2",
        about: "HTTP/2 from clients, h2 and h2c alike: what one connection may hold and do. \
                Restart to change.",
        keys: vec![
            Key::section("http2").means("HTTP/2 from clients"),
            Key::int(
                "http2.max_concurrent_streams",
                d.max_concurrent_streams,
                bounds::H2_MAX_CONCURRENT_STREAMS,
            )
            .means("streams open at once per connection; more are refused with `REFUSED_STREAM`"),
            Key::int(
                "http2.max_header_list_bytes",
                d.max_header_list_bytes,
                bounds::H2_MAX_HEADER_LIST_BYTES,
            )
            .means("a request's decoded header list"),
            Key::int(
                "http2.initial_stream_window",
                d.initial_stream_window,
                bounds::H2_WINDOW,
            )
            .means("flow-control window each stream starts with"),
            Key::int(
                "http2.initial_connection_window",
                d.initial_connection_window,
                bounds::H2_WINDOW,
            )
            .means("flow-control window of the whole connection"),
            Key::count(
                "http2.max_pending_resets",
                d.max_pending_resets,
                bounds::H2_MAX_PENDING_RESETS,
            )
            .means(
                "streams a client resets before vigil took them (rapid reset); past it `GOAWAY`",
            ),
            Key::count(
                "http2.max_error_resets",
                d.max_error_resets,
                bounds::H2_MAX_ERROR_RESETS,
            )
            .means("streams vigil resets for the client's protocol errors; past it `GOAWAY`"),
            Key::int(
                "http2.max_pings_per_second",
                d.max_pings_per_second,
                bounds::H2_FRAMES_PER_SECOND,
            )
            .means(
                "PINGs (not acks) a client may send in one second; past it `GOAWAY`; `0`: no limit",
            ),
            Key::int(
                "http2.max_settings_per_second",
                d.max_settings_per_second,
                bounds::H2_FRAMES_PER_SECOND,
            )
            .means("the same for SETTINGS (not acks)"),
            Key::int(
                "http2.max_resets_per_second",
                d.max_resets_per_second,
                bounds::H2_FRAMES_PER_SECOND,
            )
            .means("the same for RST_STREAM"),
            Key::duration("http2.idle_timeout", d.idle_timeout)
                .positive()
                .means("a connection with no stream open is closed after this"),
        ],
    }
}

fn access_log() -> Section {
    Section {
        title: "access_log",
        about: "One line per request (contract §6).",
        keys: vec![
            Key::section("access_log").means("the access log"),
            Key::word::<AccessLogFormat>("access_log.format")
                .means("`off`, or one line per request as text or JSON"),
            Key::null("access_log.path", Type::File)
                .rule("not empty")
                .means("a file, appended to and reopened on SIGUSR1; `null`: stdout"),
        ],
    }
}
