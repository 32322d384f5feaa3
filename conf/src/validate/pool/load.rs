//! A pool's protection of its backends from load: the retry budget and how backends'
//! own load reports weigh (`load_report`).

use crate::bounds::{self, DurationRange, FloatRange};
use crate::duration::format_duration;
use crate::schema::*;
use crate::types::*;
use crate::validate::Validator;
use std::time::Duration;

impl Validator<'_> {
    /// `retry_budget`: the share of requests in flight that may be retries, and the
    /// floor.
    pub(super) fn retry_budget(&mut self, path: &str, raw: RawRetryBudget) -> RetryBudget {
        let ratio = self.float_in(
            &format!("{path}.ratio"),
            raw.ratio,
            RetryBudget::DEFAULT_RATIO,
            bounds::RETRY_BUDGET_RATIO,
        );
        let min = self.int(
            &format!("{path}.min"),
            raw.min,
            RetryBudget::DEFAULT_MIN.into(),
            bounds::RETRY_BUDGET_MIN,
        ) as u32;
        RetryBudget { ratio, min }
    }

    /// `load_report`: when reports start and stop counting, and how errors weigh.
    pub(super) fn load_report(&mut self, path: &str, raw: RawLoadReport) -> LoadReportConfig {
        let d = LoadReportConfig::default();
        let blackout = self.duration_in(
            &format!("{path}.blackout"),
            &raw.blackout,
            d.blackout,
            bounds::LOAD_REPORT_BLACKOUT,
        );
        let expiry = self.duration_in(
            &format!("{path}.expiry"),
            &raw.expiry,
            d.expiry,
            bounds::LOAD_REPORT_EXPIRY,
        );
        let error_penalty = self.float_in(
            &format!("{path}.error_penalty"),
            raw.error_penalty,
            d.error_penalty,
            bounds::ERROR_PENALTY,
        );
        LoadReportConfig {
            blackout,
            expiry,
            error_penalty,
        }
    }

    /// A number within `range`; the default (and an error) when outside it.
    fn float_in(&mut self, path: &str, raw: Option<f64>, default: f64, range: FloatRange) -> f64 {
        let Some(v) = raw else { return default };
        if range.contains(v) {
            return v;
        }
        let key = path.rsplit('.').next().unwrap_or(path);
        let (min, max) = (range.min, range.max);
        self.error(
            path,
            format!("{key} must be between {min} and {max}, got {v}"),
        );
        default
    }

    /// A duration within `range`; the default (and an error) when outside it.
    fn duration_in(
        &mut self,
        path: &str,
        raw: &Option<String>,
        default: Duration,
        range: DurationRange,
    ) -> Duration {
        let d = self.duration(path, raw, default);
        if range.contains(d) {
            return d;
        }
        let key = path.rsplit('.').next().unwrap_or(path);
        self.error(
            path,
            format!(
                "{key} must be between {} and {}, got {}",
                format_duration(range.min),
                format_duration(range.max),
                format_duration(d)
            ),
        );
        default
    }
}
