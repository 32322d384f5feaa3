//! Every default `validate` fills in for a key left out, in one place: `Default` impls
//! for whole sections, `DEFAULT_*` constants for single values (a word's default is
//! its `#[default]` variant, in `types`). The
//! reference (`reference`) shows these same values, and its tests check that writing
//! each one gives the same configuration as leaving it out.

use crate::types::*;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

impl Config {
    pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);
}

impl ListenerConfig {
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
}

impl AdminConfig {
    pub const DEFAULT_ADDRESS: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9901));
}

impl Default for CheckerConfig {
    fn default() -> Self {
        CheckerConfig {
            max_concurrent_checks: 1024,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { per_backend: true }
    }
}

impl FleetConfig {
    pub const DEFAULT_PREFIX: &'static str = "/vigil";
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);
    pub const DEFAULT_COPIES: usize = 1;
}

impl PoolConfig {
    pub const DEFAULT_RETRIES: u32 = 2;
    pub const DEFAULT_RETRY_ON_STATUS: [u16; 3] = [502, 503, 504];
    /// Percent; 0: never route to all backends (§3 of the contract says why).
    pub const DEFAULT_PANIC_THRESHOLD: f64 = 0.0;
    pub const DEFAULT_FAIL_OPEN: bool = true;
    pub const DEFAULT_FORWARD_ORIGINAL_PATH: bool = false;
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
    /// Zero: off.
    pub const DEFAULT_SLOW_START: Duration = Duration::ZERO;
    /// Zero: no limit.
    pub const DEFAULT_MAX_REQUESTS: u32 = 0;
}

impl QueueConfig {
    /// Zero: no queue, a request finding every backend full is refused at once.
    pub const DEFAULT_SIZE: u32 = 0;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            size: QueueConfig::DEFAULT_SIZE,
            timeout: QueueConfig::DEFAULT_TIMEOUT,
        }
    }
}

impl RetryBudget {
    /// Envoy's defaults: 20% of the requests in flight, at least 3.
    pub const DEFAULT_RATIO: f64 = 0.2;
    pub const DEFAULT_MIN: u32 = 3;
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: RetryBudget::DEFAULT_RATIO,
            min: RetryBudget::DEFAULT_MIN,
        }
    }
}

impl LoadReportConfig {
    /// gRPC's weighted round robin's defaults (gRFC A58).
    pub const DEFAULT_BLACKOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(180);
    pub const DEFAULT_ERROR_PENALTY: f64 = 1.0;
}

impl Default for LoadReportConfig {
    fn default() -> Self {
        LoadReportConfig {
            blackout: LoadReportConfig::DEFAULT_BLACKOUT,
            expiry: LoadReportConfig::DEFAULT_EXPIRY,
            error_penalty: LoadReportConfig::DEFAULT_ERROR_PENALTY,
        }
    }
}

impl RouteConfig {
    /// Every host.
    pub const DEFAULT_HOST: &'static str = "*";
    pub const DEFAULT_PATH_PREFIX: &'static str = "/";
}

impl BackendConfig {
    pub const DEFAULT_WEIGHT: u32 = 1;
}

impl DiscoveryConfig {
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);
}

impl UpstreamTls {
    pub const DEFAULT_VERIFY: bool = true;
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_concurrent_streams: 100,
            max_header_list_bytes: 64 * 1024,
            initial_stream_window: 65_535,
            initial_connection_window: 1024 * 1024,
            max_pending_resets: 20,
            max_error_resets: 1024,
            max_pings_per_second: 50,
            max_settings_per_second: 20,
            max_resets_per_second: 200,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            header_bytes: 32 * 1024,
            headers: 100,
            header_timeout: Duration::from_secs(10),
            body_bytes: 0,
            body_timeout: Duration::from_secs(30),
            client_write_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: CheckKind::Http,
            path: "/health".to_string(),
            host: None,
            expected_status: vec![(200, 399)],
            expected_body: None,
            interval: Duration::from_secs(5),
            fast_interval: Duration::from_secs(1),
            down_interval: Duration::from_secs(5),
            backoff_multiplier: 2.0,
            max_down_interval: Duration::from_secs(60),
            jitter: 0.1,
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            reuse_connections: true,
            max_connection_age: Duration::from_secs(60),
            grpc_service: String::new(),
            skip_while_serving: false,
            agent: false,
        }
    }
}

impl Default for PassiveConfig {
    fn default() -> Self {
        PassiveConfig {
            consecutive_failures: 5,
            ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(300),
            max_ejected_percent: 50.0,
            stall_detection: true,
            stall_factor: 10.0,
            stall_min: Duration::from_millis(250),
        }
    }
}
