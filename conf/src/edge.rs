//! Validation of the edge settings: `limits` and `access_log`.

use crate::bounds::{self, IntRange};
use crate::choice::one_of;
use crate::schema::{RawAccessLog, RawHttp2, RawLimits};
use crate::types::{AccessLogConfig, AccessLogFormat, Http2Config, LimitsConfig};
use crate::validate::Validator;

impl Validator<'_> {
    pub(crate) fn limits(&mut self, raw: RawLimits) -> LimitsConfig {
        let d = LimitsConfig::default();
        let header_bytes = self.int(
            "limits.header_bytes",
            raw.header_bytes,
            d.header_bytes as i64,
            bounds::HEADER_BYTES,
        ) as usize;
        let headers = self.int(
            "limits.headers",
            raw.headers,
            d.headers as i64,
            bounds::HEADERS,
        ) as usize;
        let header_timeout = self.duration(
            "limits.header_timeout",
            &raw.header_timeout,
            d.header_timeout,
        );
        let body_timeout = self.duration("limits.body_timeout", &raw.body_timeout, d.body_timeout);
        let client_write_timeout = self.duration(
            "limits.client_write_timeout",
            &raw.client_write_timeout,
            d.client_write_timeout,
        );
        for (key, v) in [
            ("header_timeout", header_timeout),
            ("body_timeout", body_timeout),
            ("client_write_timeout", client_write_timeout),
        ] {
            if v.is_zero() {
                self.error(
                    &format!("limits.{key}"),
                    format!("{key} must be greater than 0"),
                );
            }
        }
        let body_bytes = self.int(
            "limits.body_bytes",
            raw.body_bytes,
            d.body_bytes as i64,
            bounds::BODY_BYTES,
        ) as u64;
        LimitsConfig {
            header_bytes,
            headers,
            header_timeout,
            body_bytes,
            body_timeout,
            client_write_timeout,
        }
    }

    /// `http2`: every bound within what HTTP/2 (RFC 9113 §6.5.2, §6.9.1) allows.
    pub(crate) fn http2(&mut self, raw: RawHttp2) -> Http2Config {
        let d = Http2Config::default();
        let int = |v: &mut Self, key: &str, raw: Option<i64>, default: u64, range: IntRange| {
            v.int(&format!("http2.{key}"), raw, default as i64, range) as u64
        };
        let config = Http2Config {
            max_concurrent_streams: int(
                self,
                "max_concurrent_streams",
                raw.max_concurrent_streams,
                d.max_concurrent_streams.into(),
                bounds::H2_MAX_CONCURRENT_STREAMS,
            ) as u32,
            max_header_list_bytes: int(
                self,
                "max_header_list_bytes",
                raw.max_header_list_bytes,
                d.max_header_list_bytes.into(),
                bounds::H2_MAX_HEADER_LIST_BYTES,
            ) as u32,
            initial_stream_window: int(
                self,
                "initial_stream_window",
                raw.initial_stream_window,
                d.initial_stream_window.into(),
                bounds::H2_WINDOW,
            ) as u32,
            initial_connection_window: int(
                self,
                "initial_connection_window",
                raw.initial_connection_window,
                d.initial_connection_window.into(),
                bounds::H2_WINDOW,
            ) as u32,
            max_pending_resets: int(
                self,
                "max_pending_resets",
                raw.max_pending_resets,
                d.max_pending_resets as u64,
                bounds::H2_MAX_PENDING_RESETS,
            ) as usize,
            max_error_resets: int(
                self,
                "max_error_resets",
                raw.max_error_resets,
                d.max_error_resets as u64,
                bounds::H2_MAX_ERROR_RESETS,
            ) as usize,
            max_pings_per_second: int(
                self,
                "max_pings_per_second",
                raw.max_pings_per_second,
                d.max_pings_per_second.into(),
                bounds::H2_FRAMES_PER_SECOND,
            ) as u32,
            max_settings_per_second: int(
                self,
                "max_settings_per_second",
                raw.max_settings_per_second,
                d.max_settings_per_second.into(),
                bounds::H2_FRAMES_PER_SECOND,
            ) as u32,
            max_resets_per_second: int(
                self,
                "max_resets_per_second",
                raw.max_resets_per_second,
                d.max_resets_per_second.into(),
                bounds::H2_FRAMES_PER_SECOND,
            ) as u32,
            idle_timeout: self.duration("http2.idle_timeout", &raw.idle_timeout, d.idle_timeout),
        };
        if config.idle_timeout.is_zero() {
            self.error("http2.idle_timeout", "idle_timeout must be greater than 0");
        }
        config
    }

    pub(crate) fn access_log(&mut self, raw: RawAccessLog) -> AccessLogConfig {
        let words = one_of::<AccessLogFormat>(str::to_string);
        let format: AccessLogFormat =
            (self.choice("access_log.format", raw.format.as_deref(), |other| {
                format!("access_log.format must be {words}, got {other:?}")
            }))
            .unwrap_or_default();
        let path = match raw.path {
            Some(p) if p.is_empty() => {
                self.error(
                    "access_log.path",
                    "access_log.path is empty; remove the key for stdout",
                );
                None
            }
            p => p.map(Into::into),
        };
        AccessLogConfig { format, path }
    }
}
