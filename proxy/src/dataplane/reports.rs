//! Load reports (ORCA) from backends, for pools with `balance: load_report`: each
//! answer's `endpoint-load-metrics` header or trailer is taken in by its backend's
//! `LoadReports`, and the pool's selector turns them into weights (`balance.rs`). A
//! malformed report changes nothing and is counted.

use crate::dataplane::context::Ctx;
use tokio::time::Instant;
use vigil_conf::Balance;
use vigil_healthcheck::load_report::{Malformed, Report};

/// An answer's load report, parsed or refused.
pub(crate) type LoadReport = Result<Report, Malformed>;

impl Ctx {
    /// The request's pool balances by load reports: its answers' reports are read.
    pub(crate) fn takes_load_reports(&self) -> bool {
        self.pool()
            .is_some_and(|p| p.config.balance == Balance::LoadReport)
    }

    /// The current attempt's answer carried `report`.
    pub(crate) fn load_reported(&self, report: LoadReport) {
        let (Some(pool), Some(backend)) = (self.pool(), self.current_backend()) else {
            return;
        };
        match report {
            Ok(r) => {
                let penalty = pool.config.load_report.error_penalty;
                backend.load.record(&r, penalty, Instant::now());
            }
            Err(e) => {
                pool.metrics.malformed_reports.inc();
                tracing::debug!(pool = %pool.name, backend = %backend.address, "{e}");
            }
        }
    }
}
