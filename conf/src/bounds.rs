//! The bounds of every value that has them, named once: `validate` checks values
//! against these constants and `reference` documents the same constants, so the
//! documentation cannot drift from what is enforced.

use std::time::Duration;

/// An inclusive range of integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntRange {
    pub min: i64,
    pub max: i64,
}

impl IntRange {
    const fn new(min: i64, max: i64) -> Self {
        IntRange { min, max }
    }
}

/// A range of numbers, its minimum included; its maximum too when `max_included`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloatRange {
    pub min: f64,
    pub max: f64,
    pub max_included: bool,
}

impl FloatRange {
    pub fn contains(&self, v: f64) -> bool {
        if self.max_included {
            (self.min..=self.max).contains(&v)
        } else {
            (self.min..self.max).contains(&v)
        }
    }
}

/// An inclusive range of durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
}

impl DurationRange {
    pub fn contains(&self, d: Duration) -> bool {
        (self.min..=self.max).contains(&d)
    }
}

pub const THREADS: IntRange = IntRange::new(1, 1024);
pub const MAX_CONNECTIONS: IntRange = IntRange::new(1, 10_000_000);
pub const MAX_CONCURRENT_CHECKS: IntRange = IntRange::new(1, 1_000_000);
pub const FLEET_COPIES: IntRange = IntRange::new(1, 16);
/// etcd's shortest lease is 2s.
pub const LEASE_TTL: DurationRange = DurationRange {
    min: Duration::from_secs(2),
    max: Duration::from_secs(60),
};
/// `fleet.node`: what a member's name may be made of, and its longest.
pub const NODE_NAME: &str = "[A-Za-z0-9._-]+";
pub const NODE_NAME_MAX_LEN: usize = 128;

/// Pingora reads at most 1 MiB of request head.
pub const HEADER_BYTES: IntRange = IntRange::new(1024, 1024 * 1024 - 1);
/// httparse, under Pingora, parses at most 256 headers.
pub const HEADERS: IntRange = IntRange::new(1, 256);
pub const BODY_BYTES: IntRange = IntRange::new(0, i64::MAX);

// HTTP/2: within what RFC 9113 (§6.5.2, §6.9.1) allows.
pub const H2_MAX_CONCURRENT_STREAMS: IntRange = IntRange::new(1, 10_000);
pub const H2_MAX_HEADER_LIST_BYTES: IntRange = IntRange::new(1024, 16 << 20);
pub const H2_WINDOW: IntRange = IntRange::new(65_535, (1 << 31) - 1);
pub const H2_MAX_PENDING_RESETS: IntRange = IntRange::new(1, 10_000);
pub const H2_MAX_ERROR_RESETS: IntRange = IntRange::new(1, 100_000);
/// PING, SETTINGS or RST_STREAM frames a client may send per second; 0: no limit.
pub const H2_FRAMES_PER_SECOND: IntRange = IntRange::new(0, 100_000);

/// `pools[].name`.
pub const POOL_NAME: &str = "[a-z0-9_-]+";
pub const RETRIES: IntRange = IntRange::new(0, 100);
/// HTTP status codes, in `retry_on_status` and `expected_status`.
pub const STATUS: IntRange = IntRange::new(100, 599);
pub const PERCENT: FloatRange = FloatRange {
    min: 0.0,
    max: 100.0,
    max_included: true,
};
pub const WEIGHT: IntRange = IntRange::new(1, 1_000_000);
pub const SLOW_START_MAX: Duration = Duration::from_secs(3600);
pub const MAX_REQUESTS: IntRange = IntRange::new(0, 1_000_000);
pub const QUEUE_SIZE: IntRange = IntRange::new(0, 1_000_000);
pub const QUEUE_TIMEOUT: DurationRange = DurationRange {
    min: Duration::from_millis(1),
    max: Duration::from_secs(3600),
};
/// `retry_budget.ratio`: a share of the requests in flight.
pub const RETRY_BUDGET_RATIO: FloatRange = FloatRange {
    min: 0.0,
    max: 1.0,
    max_included: true,
};
pub const RETRY_BUDGET_MIN: IntRange = IntRange::new(0, 1_000_000);
pub const LOAD_REPORT_BLACKOUT: DurationRange = DurationRange {
    min: Duration::ZERO,
    max: Duration::from_secs(3600),
};
pub const LOAD_REPORT_EXPIRY: DurationRange = DurationRange {
    min: Duration::from_secs(1),
    max: Duration::from_secs(86_400),
};
pub const ERROR_PENALTY: FloatRange = FloatRange {
    min: 0.0,
    max: 100.0,
    max_included: true,
};
pub const DISCOVERY_REFRESH: DurationRange = DurationRange {
    min: Duration::from_millis(100),
    max: Duration::from_secs(3600),
};

pub const RISE: IntRange = IntRange::new(1, 1000);
pub const FALL: IntRange = IntRange::new(1, 1000);
pub const BACKOFF_MULTIPLIER: FloatRange = FloatRange {
    min: 1.0,
    max: 100.0,
    max_included: true,
};
pub const JITTER: FloatRange = FloatRange {
    min: 0.0,
    max: 1.0,
    max_included: false,
};

pub const CONSECUTIVE_FAILURES: IntRange = IntRange::new(0, 1_000_000);
pub const STALL_FACTOR: FloatRange = FloatRange {
    min: 2.0,
    max: 1000.0,
    max_included: true,
};
pub const STALL_MIN_FLOOR: Duration = Duration::from_millis(50);
