//! The YAML schema as serde sees it: every key optional, so `validate` can tell a
//! default from a value the operator wrote and point at the line of the latter.
//! Unknown keys are not rejected here but collected (see `lib.rs`), so that one pass
//! reports all of them.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    pub threads: Option<i64>,
    pub cpu_affinity: Option<String>,
    pub grace_period: Option<String>,
    pub listeners: Option<Vec<RawListener>>,
    pub admin: Option<RawAdmin>,
    pub checker: Option<RawChecker>,
    pub metrics: Option<RawMetrics>,
    pub limits: Option<RawLimits>,
    pub http2: Option<RawHttp2>,
    pub access_log: Option<RawAccessLog>,
    pub upgrade_socket: Option<String>,
    pub dns: Option<RawDns>,
    pub fleet: Option<RawFleet>,
    pub pools: Option<Vec<RawPool>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawFleet {
    pub etcd: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub node: Option<String>,
    pub lease_ttl: Option<String>,
    pub copies: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawDns {
    pub nameservers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawDiscovery {
    pub srv: Option<String>,
    pub a: Option<String>,
    pub refresh: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawLimits {
    pub header_bytes: Option<i64>,
    pub headers: Option<i64>,
    pub header_timeout: Option<String>,
    pub body_bytes: Option<i64>,
    pub body_timeout: Option<String>,
    pub client_write_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawHttp2 {
    pub max_concurrent_streams: Option<i64>,
    pub max_header_list_bytes: Option<i64>,
    pub initial_stream_window: Option<i64>,
    pub initial_connection_window: Option<i64>,
    pub max_pending_resets: Option<i64>,
    pub max_error_resets: Option<i64>,
    pub max_pings_per_second: Option<i64>,
    pub max_settings_per_second: Option<i64>,
    pub max_resets_per_second: Option<i64>,
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAccessLog {
    pub format: Option<String>,
    pub path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawListener {
    pub address: Option<String>,
    pub max_connections: Option<i64>,
    pub tls: Option<RawListenerTls>,
    pub http2: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawListenerTls {
    pub certificates: Option<Vec<RawCertificate>>,
    pub min_version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawCertificate {
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawUpstreamTls {
    pub sni: Option<String>,
    pub ca: Option<String>,
    pub verify: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAdmin {
    pub address: Option<String>,
    pub token: Option<String>,
    pub allow_unauthenticated: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawChecker {
    pub max_concurrent_checks: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawMetrics {
    pub per_backend: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawPool {
    pub name: Option<String>,
    pub routes: Option<Vec<RawRoute>>,
    pub balance: Option<String>,
    pub hash_key: Option<String>,
    pub retries: Option<i64>,
    pub retry_on_status: Option<Vec<i64>>,
    pub panic_threshold: Option<f64>,
    pub fail_open: Option<bool>,
    pub forward_original_path: Option<bool>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub backends: Option<Vec<RawBackend>>,
    pub health_check: Option<RawHealthCheck>,
    pub passive: Option<RawPassive>,
    pub tls: Option<RawUpstreamTls>,
    pub protocol: Option<String>,
    pub slow_start: Option<String>,
    pub discovery: Option<RawDiscovery>,
    pub max_requests: Option<i64>,
    pub queue: Option<RawQueue>,
    pub retry_budget: Option<RawRetryBudget>,
    pub load_report: Option<RawLoadReport>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRetryBudget {
    pub ratio: Option<f64>,
    pub min: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawLoadReport {
    pub blackout: Option<String>,
    pub expiry: Option<String>,
    pub error_penalty: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawQueue {
    pub size: Option<i64>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRoute {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawBackend {
    pub address: Option<String>,
    pub weight: Option<i64>,
}

/// `200` or `"200-399"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawStatus {
    Code(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
pub struct RawHealthCheck {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expected_status: Option<Vec<RawStatus>>,
    pub expected_body: Option<String>,
    pub interval: Option<String>,
    pub fast_interval: Option<String>,
    pub down_interval: Option<String>,
    pub backoff_multiplier: Option<f64>,
    pub max_down_interval: Option<String>,
    pub jitter: Option<f64>,
    pub timeout: Option<String>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
    pub reuse_connections: Option<bool>,
    pub max_connection_age: Option<String>,
    pub grpc_service: Option<String>,
    pub skip_while_serving: Option<bool>,
    pub agent: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawPassive {
    pub consecutive_failures: Option<i64>,
    pub ejection_time: Option<String>,
    pub max_ejection_time: Option<String>,
    pub max_ejected_percent: Option<f64>,
    pub stall_detection: Option<bool>,
    pub stall_factor: Option<f64>,
    pub stall_min: Option<String>,
}
