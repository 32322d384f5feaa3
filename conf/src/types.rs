//! The validated configuration: plain data with typed values and every default
//! filled in (the defaults are named in `defaults`). Nothing here can be invalid;
//! `validate` is the only way to build it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Proxy worker threads.
    pub threads: usize,
    /// Whether proxy worker threads are pinned one per CPU.
    pub cpu_affinity: CpuAffinity,
    /// How long SIGTERM waits for in-flight requests.
    pub grace_period: Duration,
    pub listeners: Vec<ListenerConfig>,
    pub admin: AdminConfig,
    pub checker: CheckerConfig,
    pub metrics: MetricsConfig,
    pub limits: LimitsConfig,
    pub http2: Http2Config,
    pub access_log: AccessLogConfig,
    /// Where a running vigil hands its listening sockets to `vigil run --upgrade`.
    pub upgrade_socket: std::path::PathBuf,
    /// Where discovery sends its DNS queries.
    pub dns: DnsConfig,
    /// Shared health with other vigils through etcd; None: this vigil checks every
    /// backend itself.
    pub fleet: Option<FleetConfig>,
    /// Shared with the routing snapshot built from this config: one copy per pool.
    pub pools: Vec<Arc<PoolConfig>>,
}

/// `cpu_affinity`: with `auto`, when there are as many proxy worker threads as CPUs
/// vigil may run on, each worker is pinned to its own CPU (two workers then never
/// wait for one another on one CPU while the other runs something else); with any
/// other thread count, or `off`, the kernel places them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuAffinity {
    #[default]
    Auto,
    Off,
}

/// A fleet of vigils sharing health through etcd (docs/fleet.md).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// etcd endpoints, `http://host:port`.
    pub etcd: Vec<String>,
    /// Keys live under it; no trailing slash.
    pub prefix: String,
    /// This member's name, unique in the fleet.
    pub node: String,
    /// A silent member loses its backends after this.
    pub lease_ttl: Duration,
    /// Members probing each backend.
    pub copies: usize,
}

/// DNS for pools' `discovery`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DnsConfig {
    /// Empty: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
}

/// A pool's backends from DNS, merged with its `backends`.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryConfig {
    pub name: DiscoveryName,
    /// At most this long between lookups; a shorter TTL wins (down to a floor).
    pub refresh: Duration,
    /// Where `srv` / `a` is written, for what is reported about it later.
    pub at: Place,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DiscoveryName {
    /// An SRV name: targets, ports and weights from its records.
    Srv(String),
    /// An A/AAAA name and the port its backends listen on.
    A { host: String, port: u16 },
}

impl std::fmt::Display for DiscoveryName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiscoveryName::Srv(name) => write!(f, "SRV {name}"),
            DiscoveryName::A { host, port } => write!(f, "A/AAAA {host} (port {port})"),
        }
    }
}

/// Per-request limits, answered by vigil without calling a backend.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Request line plus headers; over it 431.
    pub header_bytes: usize,
    /// Header count; over it 431.
    pub headers: usize,
    /// The whole request head within this of its first byte, else 408 and close.
    pub header_timeout: Duration,
    /// Request body; over it 413. 0 = no limit.
    pub body_bytes: u64,
    /// The whole request body within this of its head, else 408 and close.
    pub body_timeout: Duration,
    /// A client that takes longer than this to take a write of its answer is cut.
    pub client_write_timeout: Duration,
}

/// HTTP/2 from clients (h2 and h2c): what one connection may hold and do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Config {
    /// Streams open at once per connection; more are refused (REFUSED_STREAM).
    pub max_concurrent_streams: u32,
    /// A request's decoded header list; over it the stream is refused.
    pub max_header_list_bytes: u32,
    /// Flow-control window each stream starts with.
    pub initial_stream_window: u32,
    /// Flow-control window of the whole connection.
    pub initial_connection_window: u32,
    /// Streams the client resets before vigil has taken them (rapid reset); past it
    /// the connection ends with GOAWAY ENHANCE_YOUR_CALM.
    pub max_pending_resets: usize,
    /// Streams vigil resets for the client's protocol errors; past it GOAWAY.
    pub max_error_resets: usize,
    /// PING, SETTINGS and RST_STREAM frames a client may send in one second; past one,
    /// GOAWAY ENHANCE_YOUR_CALM. 0: no limit.
    pub max_pings_per_second: u32,
    pub max_settings_per_second: u32,
    pub max_resets_per_second: u32,
    /// A connection with no stream open is closed after this.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogFormat {
    #[default]
    Off,
    Text,
    Json,
}

/// Off by default (its format's `#[default]`), to stdout when on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccessLogConfig {
    pub format: AccessLogFormat,
    /// A file, reopened on SIGUSR1; None writes to stdout.
    pub path: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// Client connections open at once; beyond it new ones are closed at once (and
    /// counted) instead of taking memory and file descriptors.
    pub max_connections: usize,
    /// None: plain HTTP.
    pub tls: Option<ListenerTls>,
    /// With TLS, ALPN offers h2 and http/1.1; plain, h2c by prior knowledge.
    pub http2: bool,
}

/// Where a value was written, for problems found after validation (a certificate file
/// that cannot be read, say), reported as `FILE:LINE:COL: message` all the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: String,
    pub line: usize,
    pub col: usize,
}

impl Place {
    pub fn error(&self, message: impl Into<String>) -> crate::ConfigError {
        crate::ConfigError {
            file: self.file.clone(),
            line: self.line,
            col: self.col,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    V1_2,
    V1_3,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    /// SNI picks by each certificate's names; the first is the default.
    pub certificates: Vec<CertificateFiles>,
    pub min_version: TlsVersion,
}

/// A certificate chain and its key, PEM files read at start and on every reload.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub cert_at: Place,
    pub key_at: Place,
}

/// HTTPS to a pool's backends (and its health checks).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// None: the backend's host as written in its address.
    pub sni: Option<String>,
    /// A PEM file of CA certificates; None: the system's roots.
    pub ca: Option<std::path::PathBuf>,
    pub ca_at: Option<Place>,
    /// false only when written: backends' certificates are not checked at all.
    pub verify: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Http1,
    H2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// When set, `POST /admin/*` needs `Authorization: Bearer TOKEN`.
    pub token: Option<String>,
    /// A non-loopback address without a token is refused unless this is set.
    pub allow_unauthenticated: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckerConfig {
    pub max_concurrent_checks: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    pub per_backend: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub routes: Vec<RouteConfig>,
    pub balance: Balance,
    pub hash_key: Option<HashKey>,
    pub retries: u32,
    pub retry_on_status: Vec<u16>,
    /// Percent of alive backends below which the pool routes to all of them; 0 = never.
    pub panic_threshold: f64,
    /// With no backend routable, a request is tried on the pool's other checked, ready
    /// backends (best first) before it is answered 503.
    pub fail_open: bool,
    /// Route by the normalized path but send the client's own target upstream.
    pub forward_original_path: bool,
    /// Connecting to a backend; a timeout is retried on another backend.
    pub connect_timeout: Duration,
    /// Waiting for each read from a backend (its response header, then each body chunk).
    pub read_timeout: Duration,
    pub backends: Vec<BackendConfig>,
    pub health_check: HealthCheckConfig,
    pub passive: PassiveConfig,
    /// None: plain HTTP to the backends.
    pub tls: Option<UpstreamTls>,
    pub protocol: Protocol,
    /// After a backend becomes routable again its weight ramps up over this; 0 = off.
    pub slow_start: Duration,
    /// Backends from DNS as well as (or instead of) `backends`.
    pub discovery: Option<DiscoveryConfig>,
    /// Requests in flight per backend at most; 0: no limit.
    pub max_requests: u32,
    /// Where requests wait when every routable backend is at `max_requests`.
    pub queue: QueueConfig,
    /// How many retries the pool's requests may have in flight at once.
    pub retry_budget: RetryBudget,
    /// How backends' load reports become weights (`balance: load_report`).
    pub load_report: LoadReportConfig,
}

/// Retries of any cause in flight at once, per pool: at most `ratio` of the pool's
/// requests in flight, and `min` whatever the ratio (Envoy's `retry_budget`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min: u32,
}

/// `balance: load_report`: a backend's ORCA reports set its weight once it has
/// reported for `blackout`, until its last report is `expiry` old.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadReportConfig {
    pub blackout: Duration,
    pub expiry: Duration,
    /// Errors per second over queries per second, times this, add to the utilization.
    pub error_penalty: f64,
}

/// A pool's queue of requests waiting for a backend below its `max_requests`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueConfig {
    /// Requests waiting at most; 0: none wait (503 at once).
    pub size: u32,
    /// The longest a request waits, then 503 with `Retry-After`.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteConfig {
    pub host: HostPattern,
    pub path_prefix: String,
}

/// Host patterns, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `*`
    Any,
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    LeastRequests,
    ConsistentHash,
    /// The lowest usual answer time × (requests in flight + 1), failures penalised.
    PeakEwma,
    /// Weights from the backends' own load reports (ORCA), as client-side WRR.
    LoadReport,
}

impl Balance {
    /// The spelling the config file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::WeightedRoundRobin => "weighted_round_robin",
            Balance::LeastRequests => "least_requests",
            Balance::ConsistentHash => "consistent_hash",
            Balance::PeakEwma => "peak_ewma",
            Balance::LoadReport => "load_report",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// Lower-cased header name.
    Header(String),
    ClientIp,
    Path,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// As written in the file: the backend's identity in state, logs and metrics.
    pub address: String,
    /// What `address` resolved to at load time.
    pub socket_addr: SocketAddr,
    pub weight: u32,
    /// Where it came from: the file, or a pool's DNS discovery.
    pub source: BackendSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendSource {
    File,
    Dns,
}

impl BackendSource {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendSource::File => "file",
            BackendSource::Dns => "dns",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckKind {
    #[default]
    Http,
    Tcp,
    /// `grpc.health.v1.Health/Check`; needs `protocol: h2`.
    Grpc,
}

impl CheckKind {
    /// The spelling the config file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
            CheckKind::Grpc => "grpc",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub kind: CheckKind,
    pub path: String,
    pub host: Option<String>,
    /// Inclusive ranges.
    pub expected_status: Vec<(u16, u16)>,
    pub expected_body: Option<String>,
    pub interval: Duration,
    pub fast_interval: Duration,
    pub down_interval: Duration,
    pub backoff_multiplier: f64,
    pub max_down_interval: Duration,
    pub jitter: f64,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub reuse_connections: bool,
    pub max_connection_age: Duration,
    /// The service a gRPC check asks about; "" = the server as a whole.
    pub grpc_service: String,
    /// Skip a check when live requests to the backend succeeded since the last one.
    pub skip_while_serving: bool,
    /// Read HAProxy agent-check words (`up`, `drain`, `maint`, `NN%`) from the answer.
    pub agent: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PassiveConfig {
    /// Connect errors / 5xx in a row that eject; 0 turns passive detection off.
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejected_percent: f64,
    /// Stuck requests make a backend suspect (no new requests, a check at once).
    pub stall_detection: bool,
    /// Suspect when its oldest request has waited this many times what the pool
    /// normally takes to answer...
    pub stall_factor: f64,
    /// ...and at least this long.
    pub stall_min: Duration,
}
