//! The admin listener: metrics, liveness, readiness, health summaries and reload.
//! Every answer comes from memory; none calls a backend.

use crate::control::error::ApplyError;
use crate::dataplane::routing::RoutingTable;
use crate::process::app::App;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, TextEncoder};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use vigil_healthcheck::{AdminState, Health};

pub struct AdminApp {
    pub app: Arc<App>,
}

/// The most an admin request body may hold (the admin API takes none today).
const ADMIN_BODY: usize = 64 * 1024;

/// Whether `given` equals `secret`, in a time that depends on `given`'s length alone:
/// neither how much of it matched nor the secret's length shows in the timing.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    if secret.is_empty() {
        return given.is_empty();
    }
    let mut diff = u8::from(given.len() != secret.len());
    for (i, g) in given.iter().enumerate() {
        diff |= g ^ secret[i % secret.len()];
    }
    diff == 0
}

/// Admin request heads: at most 16 KiB and 64 headers, whole within 10 s.
#[derive(Debug)]
pub struct AdminHeadLimits;

impl pingora::protocols::http::v1::server::HeadLimits for AdminHeadLimits {
    fn limits(&self) -> pingora::protocols::http::v1::server::HeadLimitValues {
        pingora::protocols::http::v1::server::HeadLimitValues {
            max_bytes: 16 * 1024,
            max_headers: 64,
            timeout: Some(Duration::from_secs(10)),
        }
    }

    fn refused(&self, _status: u16, _client: Option<&pingora::protocols::l4::socket::SocketAddr>) {}
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        // Status and headers above are all valid constants.
        .expect("valid response")
}

fn json_reply(status: u16, v: Value) -> Response<Vec<u8>> {
    reply(status, "application/json", v.to_string().into_bytes())
}

/// Seconds since the epoch, with milliseconds.
fn unix(t: std::time::SystemTime) -> f64 {
    (crate::observe::metrics::unix_seconds(t) * 1e3).floor() / 1e3
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn elapsed_ms(since: Instant) -> f64 {
    ms(since.elapsed())
}

#[derive(Default)]
struct Counts {
    up: usize,
    down: usize,
    unknown: usize,
    /// Ejected or suspect: taken out by what live traffic showed (the summary's shape
    /// is fixed by the contract; `/health/detailed` tells the two apart).
    ejected: usize,
    total: usize,
    routable: usize,
    /// Not checked yet, whatever the label (an unchecked backend can be ejected in panic mode).
    unchecked: usize,
}

/// Counts per pool from the routing snapshot: what the proxy routes by right now, not
/// the checker's live detail, which runs a moment ahead of the published snapshot.
fn counts_by_pool(table: &RoutingTable) -> BTreeMap<String, Counts> {
    let mut out = BTreeMap::new();
    for pool in &table.pools {
        let c: &mut Counts = out.entry(pool.name.to_string()).or_default();
        for m in &pool.members {
            c.total += 1;
            c.routable += m.state.routable() as usize;
            c.unchecked += (m.state.health == Health::Unknown) as usize;
            match m.state.label() {
                "up" => c.up += 1,
                "down" => c.down += 1,
                "ejected" | "suspect" => c.ejected += 1,
                _ => c.unknown += 1,
            }
        }
    }
    out
}

impl AdminApp {
    fn pool_names(&self) -> Vec<String> {
        self.app
            .config()
            .pools
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        let (metrics, table) = (&self.app.metrics, self.app.table());
        metrics.set_pool_latency(table.median_latencies());
        metrics.set_backend_load(table.backend_load());
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.app.registry.gather(), &mut buf) {
            return reply(
                500,
                "text/plain",
                format!("cannot encode metrics: {e}\n").into_bytes(),
            );
        }
        reply(200, "text/plain; version=0.0.4; charset=utf-8", buf)
    }

    fn ready(&self) -> Response<Vec<u8>> {
        let mut reasons = Vec::new();
        if self.app.draining() {
            reasons.push("draining: shutting down".to_string());
        }
        for (pool, c) in counts_by_pool(&self.app.table()) {
            if c.unchecked > 0 {
                reasons.push(format!(
                    "pool {pool}: {} of {} backends not checked yet",
                    c.unchecked, c.total
                ));
            } else if c.routable == 0 {
                reasons.push(format!("pool {pool}: no alive backend"));
            }
        }
        if reasons.is_empty() {
            json_reply(200, json!({"status": "ready"}))
        } else {
            json_reply(503, json!({"status": "not_ready", "reasons": reasons}))
        }
    }

    fn summary(&self, started: Instant) -> Response<Vec<u8>> {
        let counts = counts_by_pool(&self.app.table());
        let all_alive = counts.values().all(|c| c.routable == c.total);
        let any_dead_pool = counts.values().any(|c| c.routable == 0);
        let (word, code) = match (any_dead_pool, all_alive) {
            (true, _) => ("unhealthy", 503),
            (false, true) => ("healthy", 200),
            (false, false) => ("degraded", 200),
        };
        let pools: serde_json::Map<String, Value> = counts
            .iter()
            .map(|(p, c)| {
                (
                    p.clone(),
                    json!({"up": c.up, "down": c.down, "unknown": c.unknown, "ejected": c.ejected}),
                )
            })
            .collect();
        json_reply(
            code,
            json!({"status": word, "pools": pools, "response_time_ms": elapsed_ms(started)}),
        )
    }

    fn detailed(&self, started: Instant) -> Response<Vec<u8>> {
        let table = self.app.table();
        let mut pools: serde_json::Map<String, Value> = self
            .pool_names()
            .into_iter()
            .map(|p| {
                let route = table.pool(&p);
                let panic = route.is_some_and(|r| r.panic);
                let held_out = route.is_some_and(|r| r.members.iter().any(|m| m.state.rescued));
                (
                    p,
                    json!({"panic": panic, "routing_held_out": held_out, "backends": []}),
                )
            })
            .collect();
        // Where each backend came from, and each discovered pool's last lookup.
        let config = self.app.config();
        let sources: std::collections::HashMap<(&str, &str), &str> = config
            .pools
            .iter()
            .flat_map(|p| {
                p.backends
                    .iter()
                    .map(|b| ((p.name.as_str(), b.address.as_str()), b.source.as_str()))
            })
            .collect();
        for (pool, (d, st)) in self.app.discovery.status() {
            if let Some(entry) = pools.get_mut(&pool) {
                entry["discovery"] = json!({
                    "name": d.name.to_string(),
                    "refresh_ms": ms(d.refresh),
                    "last_lookup_unix": st.last_lookup.map(unix),
                    "last_success_unix": st.last_success.map(unix),
                    "last_error": st.last_error,
                    "backends_found": st.found,
                    "empty_answers_in_a_row": st.empty_answers,
                });
            }
        }
        for s in self.app.checker.status() {
            let entry = pools.entry(s.pool.clone()).or_insert_with(
                || json!({"panic": false, "routing_held_out": false, "backends": []}),
            );
            if let Some(list) = entry["backends"].as_array_mut() {
                let source = sources
                    .get(&(s.pool.as_str(), s.address.as_str()))
                    .copied()
                    .unwrap_or("file");
                let (owner, shared_age) = match self.app.fleet.as_ref() {
                    Some(f) => {
                        let (owner, age) = f.backend(&s.pool, &s.address);
                        (Some(owner), age.map(ms))
                    }
                    None => (None, None),
                };
                list.push(json!({
                    "address": s.address,
                    "source": source,
                    "owner": owner,
                    "shared_age_ms": shared_age,
                    "state": s.state_label(),
                    "health": s.health.as_str(),
                    "ejected": s.ejected,
                    "suspect": s.suspect,
                    "admin_state": s.admin.as_str(),
                    "agent": s.agent.map(|a| json!({"state": a.mode.as_str(), "weight_percent": a.weight_percent})),
                    "checks_skipped": s.checks_skipped,
                    "weight": s.weight,
                    "consecutive_successes": s.consecutive_successes,
                    "consecutive_failures": s.consecutive_failures,
                    "checks": s.checks,
                    "last_check_ms_ago": s.last_check_ago.map(ms),
                    "last_latency_ms": s.last_latency.map(ms),
                    "next_check_in_ms": s.next_check_in.map(ms),
                    "last_error": s.last_error,
                    "last_transition_ms_ago": ms(s.last_transition_ago),
                    "ejected_for_ms": s.ejected_for.map(ms),
                    "in_flight_requests": s.in_flight_requests,
                    "shared_with": s.shared_with,
                }));
            }
        }
        let checker = json!({
            "backend_tasks": self.app.checker.tasks_alive(),
            "probes": self.app.checker.probes(),
            "runtime_tasks": self.app.checker.runtime_tasks(),
            "checks_in_flight_peak": self.app.checker.peak_in_flight(),
            "connections_opened": self.app.checker.connections_opened(),
        });
        let fleet = self.app.fleet.as_ref().map(|f| f.summary());
        json_reply(
            200,
            json!({"pools": pools, "checker": checker, "fleet": fleet, "response_time_ms": elapsed_ms(started)}),
        )
    }

    /// Every `POST /admin/*`: checks the token, then reads the body (ignored, so the
    /// connection stays usable; at most [`ADMIN_BODY`] bytes). The `401` answer if the
    /// token is missing or wrong (counted, its value never logged), `413` for a body
    /// past the bound (the connection then closes).
    async fn admin_post(&self, session: &mut ServerSession) -> Result<(), Response<Vec<u8>>> {
        let token = self.app.config().admin.token.clone();
        let given = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| {
                v.as_bytes()
                    .strip_prefix(b"Bearer ")
                    .unwrap_or_default()
                    .to_vec()
            });
        if let Some(token) = token {
            if !given.is_some_and(|g| same_secret(&g, token.as_bytes())) {
                self.app.metrics.admin_unauthorized.inc();
                session.set_keepalive(None);
                return Err(json_reply(
                    401,
                    json!({"status": "error", "errors": ["missing or wrong bearer token"]}),
                ));
            }
        }
        let too_long = || {
            json_reply(
                413,
                json!({"status": "error", "errors": [format!("request body over {ADMIN_BODY} bytes")]}),
            )
        };
        let announced = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|n| n > ADMIN_BODY as u64) {
            session.set_keepalive(None);
            return Err(too_long());
        }
        let mut read = 0;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            read += chunk.len();
            if read > ADMIN_BODY {
                session.set_keepalive(None);
                return Err(too_long());
            }
        }
        Ok(())
    }

    async fn reload(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if let Err(denied) = self.admin_post(session).await {
            return denied;
        }
        match self.app.control.reload().await {
            Ok(summary) => json_reply(
                200,
                json!({"status": "reloaded", "changes": summary.to_json()}),
            ),
            Err(e @ ApplyError::Stopped) => {
                json_reply(503, json!({"status": "error", "errors": e.lines()}))
            }
            Err(e) => json_reply(400, json!({"status": "error", "errors": e.lines()})),
        }
    }
}

impl AdminApp {
    /// `POST /admin/backend?pool=P&address=A&state=ready|drain|maintenance`.
    async fn backend(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if let Err(denied) = self.admin_post(session).await {
            return denied;
        }
        let query = session.req_header().uri.query().unwrap_or("").to_string();
        let param = |name: &str| {
            query.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (decode(k).as_deref() == Some(name)).then(|| decode(v))?
            })
        };
        let (Some(pool), Some(address), Some(state)) =
            (param("pool"), param("address"), param("state"))
        else {
            return json_reply(
                400,
                json!({"status": "error", "errors": ["give pool, address and state (ready, drain or maintenance)"]}),
            );
        };
        let Some(admin) = AdminState::parse(&state) else {
            return json_reply(
                400,
                json!({"status": "error", "errors": [format!("unknown state {state:?}: use ready, drain or maintenance")]}),
            );
        };
        match self
            .app
            .control
            .set_admin(pool.clone(), address.clone(), admin)
            .await
        {
            Some(before) => json_reply(
                200,
                json!({"pool": pool, "address": address, "admin_state": admin.as_str(), "previous": before.as_str()}),
            ),
            None => json_reply(
                404,
                json!({"status": "error", "errors": [format!("no backend {address} in pool {pool:?}")]}),
            ),
        }
    }
}

/// The client side of `POST /admin/backend`, for `vigil backend STATE POOL ADDRESS`:
/// calls the admin API of the vigil running on `config`. Returns the status and body.
pub fn set_backend_state(
    config: &vigil_conf::Config,
    pool: &str,
    address: &str,
    state: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut addr = config.admin.address;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let encode = |v: &str| {
        percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let auth = config
        .admin
        .token
        .as_ref()
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST /admin/backend?pool={}&address={}&state={} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n",
        encode(pool),
        encode(address),
        encode(state)
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// `%XX` and `+` in a query component; None if it is not valid UTF-8.
fn decode(s: &str) -> Option<String> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let started = Instant::now();
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let get = method == Method::GET || method == Method::HEAD;
        match path.as_str() {
            "/metrics" if get => self.metrics(),
            "/health/live" if get => json_reply(200, json!({"status": "alive"})),
            "/health/ready" if get => self.ready(),
            "/health" if get => self.summary(started),
            "/health/detailed" if get => self.detailed(started),
            "/admin/reload" if method == Method::POST => self.reload(session).await,
            "/admin/backend" if method == Method::POST => self.backend(session).await,
            "/metrics" | "/health/live" | "/health/ready" | "/health" | "/health/detailed"
            | "/admin/reload" | "/admin/backend" => {
                json_reply(405, json!({"error": "method not allowed"}))
            }
            _ => json_reply(404, json!({"error": "not found"})),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        for given in [
            &b""[..],
            b"s3cre",
            b"s3cret!",
            b"S3cret",
            b"s3cres",
            b"s3crets3cret",
        ] {
            assert!(!same_secret(given, b"s3cret"), "{given:?}");
        }
        assert!(same_secret(b"", b""));
        assert!(!same_secret(b"x", b""));
    }
}
