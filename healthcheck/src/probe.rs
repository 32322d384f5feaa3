//! Probes: what one check does on the wire, and what it concluded.
//!
//! A [`Prober`] belongs to one backend's task, so it can own that backend's single
//! pooled check connection without a lock: checks of one backend never overlap.

use crate::http::{self, HttpSpec};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq)]
pub enum ProbeSpec {
    /// Success when a TCP connection is accepted.
    Tcp,
    Http(HttpSpec),
}

/// The result of one check, with the label it is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The backend answered, but not as expected.
    Failure(String),
    /// No complete answer within the check's timeout.
    Timeout,
    /// The connection could not be made (refused, unreachable, reset before a reply).
    ConnectError(String),
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// `result` label of `vigil_health_checks_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure(_) => "failure",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError(_) => "connect_error",
        }
    }

    /// For logs and `last_error`.
    pub fn describe(&self, timeout: Duration) -> String {
        match self {
            Outcome::Success => "check passed".to_string(),
            Outcome::Failure(why) => why.clone(),
            Outcome::Timeout => format!("no answer within {timeout:?}"),
            Outcome::ConnectError(why) => format!("connect error: {why}"),
        }
    }
}

/// A kept-alive check connection and when it was opened.
pub(crate) struct Pooled {
    pub stream: TcpStream,
    pub opened: Instant,
}

/// Runs checks against one backend, keeping at most one idle connection.
pub struct Prober {
    addr: SocketAddr,
    idle: Option<Pooled>,
    /// The HTTP request, built once; cleared with the settings it was built from.
    request: Option<Arc<[u8]>>,
    opened: u64,
}

impl Prober {
    pub fn new(addr: SocketAddr) -> Self {
        Prober {
            addr,
            idle: None,
            request: None,
            opened: 0,
        }
    }

    /// Connections opened so far by this prober.
    pub fn connections_opened(&self) -> u64 {
        self.opened
    }

    /// Closes the pooled connection, e.g. when the probe settings changed.
    pub fn reset(&mut self) {
        self.idle = None;
        self.request = None;
    }

    pub fn set_addr(&mut self, addr: SocketAddr) {
        if addr != self.addr {
            self.addr = addr;
            self.reset();
        }
    }

    /// One check, bounded by `timeout` from the moment it is called (connect included).
    pub async fn check(&mut self, spec: &ProbeSpec, timeout: Duration) -> Outcome {
        match tokio::time::timeout(timeout, self.check_inner(spec)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                // The connection may hold half a response; never reuse it.
                self.idle = None;
                Outcome::Timeout
            }
        }
    }

    async fn check_inner(&mut self, spec: &ProbeSpec) -> Outcome {
        match spec {
            ProbeSpec::Tcp => match self.connect().await {
                Ok(_stream) => Outcome::Success,
                Err(e) => Outcome::ConnectError(e.to_string()),
            },
            ProbeSpec::Http(h) => self.http(h).await,
        }
    }

    async fn connect(&mut self) -> std::io::Result<TcpStream> {
        let stream = TcpStream::connect(self.addr).await?;
        self.opened += 1;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn http(&mut self, spec: &HttpSpec) -> Outcome {
        let now = Instant::now();
        let addr = self.addr;
        let request = self
            .request
            .get_or_insert_with(|| http::request(spec, addr).into())
            .clone();
        let pooled = self.idle.take().filter(|p| {
            spec.reuse_connections && now.duration_since(p.opened) < spec.max_connection_age
        });
        if let Some(p) = pooled {
            match http::exchange(p.stream, spec, &request).await {
                Ok(r) => return self.finish(r, p.opened, spec),
                // The backend closed an idle keep-alive connection before it saw our
                // request: any HTTP client retries that once on a fresh connection.
                Err(http::ExchangeError::ClosedBeforeResponse) => {}
                Err(e) => return e.into_outcome(),
            }
        }
        let stream = match self.connect().await {
            Ok(s) => s,
            Err(e) => return Outcome::ConnectError(e.to_string()),
        };
        match http::exchange(stream, spec, &request).await {
            Ok(r) => self.finish(r, now, spec),
            Err(http::ExchangeError::ClosedBeforeResponse) => {
                Outcome::ConnectError("connection closed before any response".into())
            }
            Err(e) => e.into_outcome(),
        }
    }

    fn finish(&mut self, r: http::Exchange, opened: Instant, spec: &HttpSpec) -> Outcome {
        if let Some(stream) = r.reusable {
            if spec.reuse_connections {
                self.idle = Some(Pooled { stream, opened });
            }
        }
        r.outcome
    }
}
