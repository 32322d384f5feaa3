//! A fake HTTP/1.1 backend on loopback with a control handle and counters, so tests
//! can make it fail, hang or slow down, and count what reached it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

/// What the backend does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Answer normally.
    Normal = 0,
    /// Read the request and never answer.
    Hang = 1,
    /// Answer, then close the connection without saying so.
    CloseAfterResponse = 2,
    /// Close the connection as soon as the request arrives, without answering.
    Reset = 3,
}

/// Counters; may be shared by many backends to measure a group.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    /// HTTPS backends: handshakes completed, of them resumed, and failed.
    pub tls_handshakes: AtomicU64,
    pub tls_resumed: AtomicU64,
    pub tls_failures: AtomicU64,
    pub open_connections: AtomicI64,
    /// Open connections that carried a health check.
    pub open_check_connections: AtomicI64,
    pub requests: AtomicU64,
    pub health_requests: AtomicU64,
    pub in_flight: AtomicI64,
    pub peak_in_flight: AtomicI64,
    /// Requests in flight that are not health checks, and the most at once.
    pub traffic_in_flight: AtomicI64,
    pub peak_traffic_in_flight: AtomicI64,
    pub health_times: Mutex<Vec<Instant>>,
    pub last_request: Mutex<Option<Request>>,
    /// Paths of every request that was not a health check, in arrival order.
    pub paths: Mutex<Vec<String>>,
    /// Every request that was not a health check, in arrival order.
    pub seen: Mutex<Vec<Request>>,
}

impl Stats {
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
    pub fn open(&self) -> i64 {
        self.open_connections.load(Ordering::SeqCst)
    }
    pub fn open_check_connections(&self) -> i64 {
        self.open_check_connections.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn health_requests(&self) -> u64 {
        self.health_requests.load(Ordering::SeqCst)
    }
    pub fn peak_in_flight(&self) -> i64 {
        self.peak_in_flight.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which of the backend's connections carried it (numbered from 1 as they open).
    pub connection: u64,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Knobs a test turns while the backend runs.
#[derive(Debug)]
pub struct Control {
    /// Status for the health path.
    pub health_status: AtomicU16,
    /// Status for every other path.
    pub status: AtomicU16,
    mode: AtomicU8,
    /// Delay before answering, in milliseconds.
    pub delay_ms: AtomicU64,
    /// Answer with chunked encoding instead of Content-Length.
    pub chunked: AtomicBool,
    /// Also delay health checks (otherwise only traffic is delayed).
    pub delay_health: AtomicBool,
    /// Requests whose path starts with this hang (as in [`Mode::Hang`]); others are
    /// answered.
    hang_path: Mutex<Option<String>>,
    /// `hang_path` is set: most backends never take its lock.
    hang_path_set: AtomicBool,
    /// The health path's body (agent checks read words from it); `"{name} ok"` when
    /// None.
    health_body: Mutex<Option<String>>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            health_status: AtomicU16::new(200),
            status: AtomicU16::new(200),
            mode: AtomicU8::new(Mode::Normal as u8),
            delay_ms: AtomicU64::new(0),
            chunked: AtomicBool::new(false),
            delay_health: AtomicBool::new(false),
            hang_path: Mutex::new(None),
            hang_path_set: AtomicBool::new(false),
            health_body: Mutex::new(None),
        }
    }
}

impl Control {
    pub fn set_mode(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::SeqCst);
    }
    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            1 => Mode::Hang,
            2 => Mode::CloseAfterResponse,
            3 => Mode::Reset,
            _ => Mode::Normal,
        }
    }
    pub fn set_health(&self, status: u16) {
        self.health_status.store(status, Ordering::SeqCst);
    }
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
    /// Requests for paths starting with `prefix` hang from now; `None` ends it.
    pub fn set_hang_path(&self, prefix: Option<&str>) {
        *self.hang_path.lock().unwrap() = prefix.map(str::to_string);
        self.hang_path_set.store(prefix.is_some(), Ordering::SeqCst);
    }
    fn hangs(&self, path: &str) -> bool {
        self.mode() == Mode::Hang
            || self.hang_path_set.load(Ordering::SeqCst)
                && self
                    .hang_path
                    .lock()
                    .unwrap()
                    .as_deref()
                    .is_some_and(|p| path.starts_with(p))
    }
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }
    /// The health path answers `body` from now on (e.g. agent words: `"drain\n"`).
    pub fn set_health_body(&self, body: &str) {
        *self.health_body.lock().unwrap() = Some(body.to_string());
    }
}

pub struct FakeBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    pub ctl: Arc<Control>,
    stop: watch::Sender<bool>,
}

impl FakeBackend {
    /// Starts a backend on `127.0.0.1:0` that answers `name` in its body.
    pub async fn start(name: &str) -> FakeBackend {
        Self::start_with(
            name,
            Arc::new(Stats::default()),
            Arc::new(Control::default()),
        )
        .await
    }

    pub async fn start_with(name: &str, stats: Arc<Stats>, ctl: Arc<Control>) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        Self::serve(name, listener, stats, ctl)
    }

    /// Starts on a given address (to bring a killed backend back on its port).
    pub async fn start_at(
        name: &str,
        addr: SocketAddr,
        stats: Arc<Stats>,
        ctl: Arc<Control>,
    ) -> FakeBackend {
        let listener = TcpListener::bind(addr).await.expect("rebind backend port");
        Self::serve(name, listener, stats, ctl)
    }

    /// Starts an HTTPS backend on `127.0.0.1:0` serving `leaf`.
    pub async fn start_tls(name: &str, leaf: &crate::certs::Leaf) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let config = crate::tls::server_config(leaf);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let stats = Arc::new(Stats::default());
        Self::serve_with(
            name,
            listener,
            stats,
            Arc::new(Control::default()),
            Some(acceptor),
        )
    }

    fn serve(
        name: &str,
        listener: TcpListener,
        stats: Arc<Stats>,
        ctl: Arc<Control>,
    ) -> FakeBackend {
        Self::serve_with(name, listener, stats, ctl, None)
    }

    fn serve_with(
        name: &str,
        listener: TcpListener,
        stats: Arc<Stats>,
        ctl: Arc<Control>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> FakeBackend {
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let (n, s, c) = (name.to_string(), stats.clone(), ctl.clone());
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = rx.changed() => return,
                    accepted = listener.accept() => {
                        let Ok((sock, _)) = accepted else { continue };
                        let _ = sock.set_nodelay(true);
                        let (n, s, c, rx) = (n.clone(), s.clone(), c.clone(), stop_rx.clone());
                        match tls.clone() {
                            None => { tokio::spawn(connection(sock, n, s, c, rx)); }
                            Some(acceptor) => {
                                tokio::spawn(async move {
                                    let Ok(tls) = acceptor.accept(sock).await else {
                                        s.tls_failures.fetch_add(1, Ordering::SeqCst);
                                        return;
                                    };
                                    s.tls_handshakes.fetch_add(1, Ordering::SeqCst);
                                    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                                        s.tls_resumed.fetch_add(1, Ordering::SeqCst);
                                    }
                                    connection(tls, n, s, c, rx).await
                                });
                            }
                        }
                    }
                }
            }
        });
        FakeBackend {
            name: name.to_string(),
            addr,
            stats,
            ctl,
            stop,
        }
    }

    /// Closes the listener and every connection: new connections are refused.
    pub fn kill(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

struct OpenGuard(Arc<Stats>, bool);
impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
        if self.1 {
            self.0.open_check_connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut sock: S,
    name: String,
    stats: Arc<Stats>,
    ctl: Arc<Control>,
    mut stop: watch::Receiver<bool>,
) {
    let connection = stats.connections.fetch_add(1, Ordering::SeqCst) + 1;
    stats.open_connections.fetch_add(1, Ordering::SeqCst);
    let mut guard = OpenGuard(stats.clone(), false);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Read one request head (and its Content-Length body).
        let req = loop {
            if let Some((mut req, used)) = parse_request(&buf) {
                buf.drain(..used);
                req.connection = connection;
                break req;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::select! {
                r = sock.read(&mut chunk) => match r { Ok(n) => n, Err(_) => return },
                _ = stop.changed() => return,
            };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let is_health = req.path.starts_with("/health");
        stats.requests.fetch_add(1, Ordering::SeqCst);
        if is_health {
            if !guard.1 {
                guard.1 = true;
                stats.open_check_connections.fetch_add(1, Ordering::SeqCst);
            }
            stats.health_requests.fetch_add(1, Ordering::SeqCst);
            stats.health_times.lock().unwrap().push(Instant::now());
        } else {
            stats.paths.lock().unwrap().push(req.path.clone());
            *stats.last_request.lock().unwrap() = Some(req.clone());
            stats.seen.lock().unwrap().push(req.clone());
        }
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        let _in_flight = InFlight(stats.clone());
        let _traffic = (!is_health).then(|| {
            let now = stats.traffic_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            stats
                .peak_traffic_in_flight
                .fetch_max(now, Ordering::SeqCst);
            TrafficInFlight(stats.clone())
        });
        match ctl.mode() {
            Mode::Reset => return,
            _ if ctl.hangs(&req.path) => {
                // Hold the connection until the client gives up or the backend is killed.
                let mut chunk = [0u8; 1024];
                loop {
                    tokio::select! {
                        r = sock.read(&mut chunk) => if !matches!(r, Ok(n) if n > 0) { return },
                        _ = stop.changed() => return,
                    }
                }
            }
            _ => {}
        }
        if let Some(protocol) = req.header("upgrade").map(str::to_string) {
            // A protocol switch: say yes, then echo every byte back until either side closes.
            drop(_in_flight);
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {protocol}\r\nx-backend: {name}\r\n\r\n"
            );
            if sock.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            if !buf.is_empty() && sock.write_all(&std::mem::take(&mut buf)).await.is_err() {
                return;
            }
            let mut chunk = [0u8; 4096];
            loop {
                let n = tokio::select! {
                    r = sock.read(&mut chunk) => match r { Ok(n) if n > 0 => n, _ => return },
                    _ = stop.changed() => return,
                };
                if sock.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
            }
        }
        let delay = ctl.delay_ms.load(Ordering::SeqCst);
        if delay > 0 && (!is_health || ctl.delay_health.load(Ordering::SeqCst)) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
                _ = stop.changed() => return,
            }
        }
        let status = if is_health {
            ctl.health_status.load(Ordering::SeqCst)
        } else {
            ctl.status.load(Ordering::SeqCst)
        };
        let body = if is_health {
            let set = ctl.health_body.lock().unwrap().clone();
            set.unwrap_or_else(|| format!("{name} ok"))
        } else {
            name.clone()
        };
        let head_only = req.method == "HEAD";
        let resp = if ctl.chunked.load(Ordering::SeqCst) {
            let mut r = format!(
                "HTTP/1.1 {status} X\r\nx-backend: {name}\r\nx-path: {}\r\ntransfer-encoding: chunked\r\n\r\n",
                req.path
            );
            if !head_only {
                let (a, b) = body.split_at(body.len() / 2);
                r += &format!("{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len());
            }
            r
        } else {
            let mut r = format!(
                "HTTP/1.1 {status} X\r\nx-backend: {name}\r\nx-path: {}\r\ncontent-length: {}\r\n\r\n",
                req.path,
                body.len()
            );
            if !head_only {
                r += &body;
            }
            r
        };
        // Finished before the answer leaves: the client may start its next request
        // the moment it reads this one.
        drop(_in_flight);
        if sock.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
        if ctl.mode() == Mode::CloseAfterResponse {
            return;
        }
    }
}

struct InFlight(Arc<Stats>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

struct TrafficInFlight(Arc<Stats>);
impl Drop for TrafficInFlight {
    fn drop(&mut self) {
        self.0.traffic_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn parse_request(buf: &[u8]) -> Option<(Request, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = req.parse(buf).ok()? else {
        return None;
    };
    let headers = crate::client::owned_headers(req.headers);
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let (body, used) = if chunked {
        let (body, len) = chunked_body(&buf[head..])?;
        (body, head + len)
    } else {
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() < head + len {
            return None;
        }
        (buf[head..head + len].to_vec(), head + len)
    };
    Some((
        Request {
            method: req.method?.to_string(),
            path: req.path?.to_string(),
            headers,
            body,
            connection: 0,
        },
        used,
    ))
}

/// A whole chunked body at the start of `raw` (no trailers): its bytes and the length
/// it took on the wire; None while incomplete.
pub(crate) fn chunked_body(mut raw: &[u8]) -> Option<(Vec<u8>, usize)> {
    let total = raw.len();
    let mut out = Vec::new();
    loop {
        let i = raw.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&raw[..i])
                .ok()?
                .split(';')
                .next()?
                .trim(),
            16,
        )
        .ok()?;
        raw = &raw[i + 2..];
        if size == 0 {
            // Trailer lines, then the empty line that ends the body.
            loop {
                let end = raw.windows(2).position(|w| w == b"\r\n")?;
                raw = &raw[end + 2..];
                if end == 0 {
                    return Some((out, total - raw.len()));
                }
            }
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}
