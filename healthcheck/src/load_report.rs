//! ORCA load reports that backends send in-band, and the balancing weights they earn.
//!
//! A backend answers with an `endpoint-load-metrics` header (or HTTP/2 trailer) in
//! one of Envoy's two text encodings:
//!
//! ```text
//! TEXT cpu_utilization=0.3, rps_fractional=120, eps=0.5, named_metrics.foo=1.2
//! JSON {"cpu_utilization": 0.3, "rps_fractional": 120, "named_metrics": {"foo": 1.2}}
//! ```
//!
//! Keys follow xds `OrcaLoadReport`. The map families (`named_metrics.*`,
//! `request_cost.*`, `utilization.*`) are checked but not kept: nothing here balances
//! on them. Unknown keys are ignored so that newer backends keep working.
//!
//! - [`parse`]: bytes to a [`Report`] (`text`, `json`); this runs on every response
//!   that carries a report, so it allocates only for map entries and escaped JSON keys.
//! - [`LoadReports`] (`backend`): one backend's weight, gRPC's weighted round robin
//!   (gRFC A58) with a moving average, blackout and expiry.
//! - [`effective_weights`] (`pool`): reported weights put on the scale of configured ones.
//!
//! Pure: no I/O, no clock (callers pass `Instant`s), no config types.

mod backend;
mod json;
mod pool;
mod text;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

pub use backend::{LoadReports, EWMA_ALPHA};
pub use pool::{effective_weights, REPORTED_SPREAD};

use std::fmt;

/// The header (or trailer) that carries a report.
pub const HEADER: &str = "endpoint-load-metrics";

/// A longer value is refused unread: a report is a few dozen bytes, and parsing cost
/// must stay bounded whatever a backend sends.
pub const MAX_REPORT_BYTES: usize = 4096;

/// The fields of an `OrcaLoadReport` that weighting uses; an absent field is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Report {
    pub cpu_utilization: f64,
    pub application_utilization: f64,
    pub mem_utilization: f64,
    /// Queries per second the backend served.
    pub rps_fractional: f64,
    /// Errors per second.
    pub eps: f64,
}

impl Report {
    /// The utilization gRPC balances on: the application's own figure when it sends
    /// one, else CPU.
    pub fn utilization(&self) -> f64 {
        if self.application_utilization > 0.0 {
            self.application_utilization
        } else {
            self.cpu_utilization
        }
    }

    /// gRFC A58's weight, `qps / (utilization + error_penalty * eps / qps)`: queries
    /// served per unit of load, errors counted as extra load. None when the report
    /// has no traffic or no utilization, which says nothing about capacity.
    pub fn weight(&self, error_penalty: f64) -> Option<f64> {
        let qps = self.rps_fractional;
        let utilization = self.utilization();
        if !(qps > 0.0 && utilization > 0.0) {
            return None;
        }
        // A bad setting must not make weights NaN or negative.
        let penalty = if error_penalty.is_finite() && error_penalty > 0.0 {
            error_penalty * self.eps / qps
        } else {
            0.0
        };
        let weight = qps / (utilization + penalty);
        (weight.is_finite() && weight > 0.0).then_some(weight)
    }
}

/// Why a report was refused; the reason is for a debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(&'static str);

impl Malformed {
    pub fn reason(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed load report: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

const TOO_LONG: Malformed = Malformed("longer than 4096 bytes");
const NOT_UTF8: Malformed = Malformed("not UTF-8");
const UNKNOWN_FORMAT: Malformed = Malformed("format is neither TEXT nor JSON");
const NOT_A_NUMBER: Malformed = Malformed("value is not a number");
const OUT_OF_RANGE: Malformed = Malformed("number is negative or not finite");
const DUPLICATE: Malformed = Malformed("duplicate key");

/// Parses an `endpoint-load-metrics` value: `TEXT …` or `JSON …`.
pub fn parse(value: &[u8]) -> Result<Report, Malformed> {
    if value.len() > MAX_REPORT_BYTES {
        return Err(TOO_LONG);
    }
    let value = std::str::from_utf8(value)
        .map_err(|_| NOT_UTF8)?
        .trim_ascii();
    let (format, body) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    match format {
        "TEXT" => text::parse(body),
        "JSON" => json::parse(body),
        _ => Err(UNKNOWN_FORMAT),
    }
}

/// The report's fields by name; the second spellings are proto3 JSON's, which
/// protobuf libraries print by default.
const FIELDS: [(&str, &str); 5] = [
    ("cpu_utilization", "cpuUtilization"),
    ("mem_utilization", "memUtilization"),
    ("application_utilization", "applicationUtilization"),
    ("rps_fractional", "rpsFractional"),
    ("eps", "eps"),
];

/// The map families, spelled as [`FIELDS`] are.
const FAMILIES: [(&str, &str); 3] = [
    ("named_metrics", "namedMetrics"),
    ("request_cost", "requestCost"),
    ("utilization", "utilization"),
];

fn field_index(key: &str) -> Option<usize> {
    FIELDS.iter().position(|&(a, b)| key == a || key == b)
}

fn family_index(key: &str) -> Option<usize> {
    FAMILIES.iter().position(|&(a, b)| key == a || key == b)
}

/// A value must be a finite, non-negative number; `-0` reads as 0.
fn checked(value: f64) -> Result<f64, Malformed> {
    if value.is_finite() && value >= 0.0 {
        Ok(value + 0.0)
    } else {
        Err(OUT_OF_RANGE)
    }
}

/// A report being filled key by key, by either encoding.
#[derive(Default)]
struct Fields {
    report: Report,
    /// Bit `i` set once `FIELDS[i]` was given, under either spelling.
    seen: u8,
}

impl Fields {
    fn set(&mut self, index: usize, value: f64) -> Result<(), Malformed> {
        let bit = 1 << index;
        if self.seen & bit != 0 {
            return Err(DUPLICATE);
        }
        self.seen |= bit;
        *self.slot(index) = checked(value)?;
        Ok(())
    }

    /// The field `FIELDS[index]` names.
    fn slot(&mut self, index: usize) -> &mut f64 {
        let r = &mut self.report;
        match index {
            0 => &mut r.cpu_utilization,
            1 => &mut r.mem_utilization,
            2 => &mut r.application_utilization,
            3 => &mut r.rps_fractional,
            _ => &mut r.eps,
        }
    }
}

/// Keys a report does not keep may still not repeat: a repeated key is ambiguous, and
/// Envoy refuses it too. Sorting finds repeats without a hash set per response.
fn no_duplicates<K: Ord>(keys: &mut [K]) -> Result<(), Malformed> {
    keys.sort_unstable();
    if keys.windows(2).any(|w| w[0] == w[1]) {
        return Err(DUPLICATE);
    }
    Ok(())
}
