//! Probes: what one check does on the wire.
//!
//! A backend's task owns its [`Probe`], so the network one ([`Prober`]) can keep that
//! backend's single pooled check connection without a lock: checks of one backend
//! never overlap. [`Probes`] is the seam: tests hand the checker scripted probes and
//! run it under paused time.

use crate::conn::Conn;
use crate::grpc::{GrpcSpec, H2};
use crate::http::{self, HttpSpec};
use crate::outcome::Outcome;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq)]
pub enum ProbeSpec {
    /// Success when a TCP connection is accepted.
    Tcp,
    Http(HttpSpec),
    /// `grpc.health.v1.Health/Check`, SERVING = success.
    Grpc(GrpcSpec),
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a backend's task checks it with. The task bounds each check by the policy's
/// timeout and drops the future when it passes: a probe must not keep a connection that
/// was in use when that happened.
pub trait Probe: Send + 'static {
    /// One check (connect included), however long it takes.
    fn check<'a>(&'a mut self, spec: &'a ProbeSpec) -> BoxFuture<'a, Outcome>;
    /// Connections opened so far.
    fn connections_opened(&self) -> u64;
    /// The address or the probe settings changed: forget any pooled connection.
    fn retarget(&mut self, addr: SocketAddr);
}

/// Makes each backend's [`Probe`].
pub trait Probes: Send + Sync + 'static {
    fn probe(&self, addr: SocketAddr) -> Box<dyn Probe>;
}

/// Real checks on the network: one [`Prober`] per backend.
pub struct NetProbes;

impl Probes for NetProbes {
    fn probe(&self, addr: SocketAddr) -> Box<dyn Probe> {
        Box::new(Prober::new(addr))
    }
}

impl Probe for Prober {
    fn check<'a>(&'a mut self, spec: &'a ProbeSpec) -> BoxFuture<'a, Outcome> {
        // The pooled connection is taken out before it is used, so a check dropped
        // half-way leaves nothing half-read in the pool.
        Box::pin(self.check_inner(spec))
    }

    fn connections_opened(&self) -> u64 {
        self.opened
    }

    fn retarget(&mut self, addr: SocketAddr) {
        self.addr = addr;
        self.reset();
    }
}

/// A kept-alive check connection and when it was opened.
pub(crate) struct Pooled {
    pub stream: Conn,
    pub opened: Instant,
}

/// Runs checks against one backend, keeping at most one idle connection.
pub struct Prober {
    addr: SocketAddr,
    idle: Option<Pooled>,
    /// The HTTP request, built once; cleared with the settings it was built from.
    request: Option<Arc<[u8]>>,
    /// gRPC checks: the HTTP/2 connection every check opens a stream on.
    h2: Option<H2>,
    opened: u64,
}

impl Prober {
    pub fn new(addr: SocketAddr) -> Self {
        Prober {
            addr,
            idle: None,
            request: None,
            h2: None,
            opened: 0,
        }
    }

    /// Closes the pooled connection, e.g. when the probe settings changed.
    pub fn reset(&mut self) {
        self.idle = None;
        self.request = None;
        self.h2 = None;
    }

    async fn check_inner(&mut self, spec: &ProbeSpec) -> Outcome {
        match spec {
            ProbeSpec::Tcp => match self.connect().await {
                Ok(_stream) => Outcome::success(),
                Err(e) => Outcome::ConnectError(e.to_string()),
            },
            ProbeSpec::Http(h) => self.http(h).await,
            ProbeSpec::Grpc(g) => self.grpc(g).await,
        }
    }

    async fn grpc(&mut self, spec: &GrpcSpec) -> Outcome {
        let authority = match &spec.tls {
            Some(t) => format!("{}:{}", t.host(), self.addr.port()),
            None => self.addr.to_string(),
        };
        if let Some(h2) = self.h2.as_mut() {
            match h2.check(spec, &authority).await {
                Ok(o) => return o,
                // The kept connection broke: once more on a new one.
                Err(_) => self.h2 = None,
            }
        }
        let tcp = match self.connect().await {
            Ok(s) => s,
            Err(e) => return Outcome::ConnectError(e.to_string()),
        };
        let conn = match Conn::open(tcp, spec.tls.as_ref()).await {
            Ok(c) => c,
            Err(e) => return Outcome::ConnectError(e.to_string()),
        };
        let mut h2 = match H2::open(conn).await {
            Ok(h) => h,
            Err(e) => return Outcome::ConnectError(e),
        };
        match h2.check(spec, &authority).await {
            Ok(o) => {
                self.h2 = Some(h2);
                o
            }
            Err(o) => o,
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
        let stream = match Conn::open(stream, spec.tls.as_ref()).await {
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
