//! Validation of the edge settings: `limits` and `access_log`.

use crate::schema::{RawAccessLog, RawLimits};
use crate::types::{AccessLogConfig, AccessLogFormat, LimitsConfig};
use crate::validate::Validator;

/// httparse, under Pingora, parses at most this many headers.
const MAX_HEADERS: i64 = 256;
/// Pingora reads at most 1 MiB of request head.
const MAX_HEADER_BYTES: i64 = 1024 * 1024 - 1;

impl Validator<'_> {
    pub(crate) fn limits(&mut self, raw: RawLimits) -> LimitsConfig {
        let d = LimitsConfig::default();
        let header_bytes = self.int(
            "limits.header_bytes",
            raw.header_bytes,
            d.header_bytes as i64,
            1024,
            MAX_HEADER_BYTES,
        ) as usize;
        let headers = self.int(
            "limits.headers",
            raw.headers,
            d.headers as i64,
            1,
            MAX_HEADERS,
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
        let body_bytes = self.int("limits.body_bytes", raw.body_bytes, 0, 0, i64::MAX) as u64;
        LimitsConfig {
            header_bytes,
            headers,
            header_timeout,
            body_bytes,
            body_timeout,
            client_write_timeout,
        }
    }

    pub(crate) fn access_log(&mut self, raw: RawAccessLog) -> AccessLogConfig {
        let format = match raw.format.as_deref() {
            None | Some("off") => AccessLogFormat::Off,
            Some("text") => AccessLogFormat::Text,
            Some("json") => AccessLogFormat::Json,
            Some(other) => {
                self.error(
                    "access_log.format",
                    format!("access_log.format must be off, text or json, got {other:?}"),
                );
                AccessLogFormat::Off
            }
        };
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
