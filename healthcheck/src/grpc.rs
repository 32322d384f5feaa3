//! The gRPC health check (`grpc.health.v1.Health/Check`) over one HTTP/2 connection per
//! backend, kept open and multiplexed: each check is a new stream on it.
//!
//! The two messages are tiny, so they are encoded by hand: the request is field 1
//! (`service`, a string), the response field 1 (`status`, an enum; 1 = SERVING).

use crate::conn::{Conn, TlsClient};
use crate::outcome::Outcome;
use bytes::{Buf, Bytes};
use h2::client::SendRequest;

#[derive(Debug, Clone, PartialEq)]
pub struct GrpcSpec {
    /// The service asked about; "" = the server as a whole.
    pub service: String,
    /// gRPC health checks run over TLS with ALPN h2.
    pub tls: Option<TlsClient>,
}

/// An open HTTP/2 connection to one backend.
pub(crate) struct H2 {
    send: SendRequest<Bytes>,
}

const PATH: &str = "/grpc.health.v1.Health/Check";

/// HealthCheckResponse.status names, by number.
fn status_name(n: u64) -> &'static str {
    match n {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "an unknown status",
    }
}

impl H2 {
    /// The HTTP/2 handshake on `conn`; its connection task runs on the current runtime
    /// and ends when the connection does.
    pub async fn open(conn: Conn) -> Result<H2, String> {
        let (send, connection) = h2::client::handshake(conn)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(H2 { send })
    }

    /// One check. `Err` means the connection is unusable and must not be kept.
    pub async fn check(&mut self, spec: &GrpcSpec, authority: &str) -> Result<Outcome, Outcome> {
        let broken = |e: h2::Error| Outcome::ConnectError(format!("HTTP/2: {e}"));
        let mut send = self.send.clone().ready().await.map_err(broken)?;
        let scheme = if spec.tls.is_some() { "https" } else { "http" };
        let req = http::Request::post(format!("{scheme}://{authority}{PATH}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| Outcome::Failure(format!("bad request: {e}")))?;
        let (resp, mut body) = send.send_request(req, false).map_err(broken)?;
        body.send_data(frame(&spec.service), true).map_err(broken)?;
        let resp = resp.await.map_err(broken)?;
        if resp.status() != 200 {
            return Ok(Outcome::Failure(format!("HTTP {}", resp.status().as_u16())));
        }
        let headers = resp.headers().clone();
        let mut body = resp.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(broken)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(broken)?;
        // A "trailers-only" answer carries its status in the headers.
        let grpc = trailers.as_ref().unwrap_or(&headers);
        let grpc_status = grpc
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if grpc_status != "0" {
            let message = grpc
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return Ok(Outcome::Failure(
                format!("grpc-status {grpc_status} {message}")
                    .trim_end()
                    .to_string(),
            ));
        }
        Ok(match serving_status(&data) {
            Some(1) => Outcome::success(),
            Some(n) => Outcome::Failure(format!("grpc health {}", status_name(n))),
            None => Outcome::Failure("grpc health: unreadable response".into()),
        })
    }
}

/// A gRPC message frame holding HealthCheckRequest { service }.
fn frame(service: &str) -> Bytes {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        varint(service.len() as u64, &mut msg);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0); // not compressed
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out.into()
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let b = buf.get_u8();
        n |= ((b & 0x7f) as u64) << shift;
        if b < 0x80 {
            return Some(n);
        }
    }
    None
}

/// HealthCheckResponse.status from one gRPC frame; an absent field is 0 (UNKNOWN).
fn serving_status(data: &[u8]) -> Option<u64> {
    if data.len() < 5 || data[0] != 0 {
        return None;
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    let mut msg = data.get(5..5 + len)?;
    let mut status = 0;
    while msg.has_remaining() {
        let key = read_varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = read_varint(&mut msg)?,
            (_, 0) => {
                read_varint(&mut msg)?;
            }
            (_, 2) => {
                let l = read_varint(&mut msg)? as usize;
                if msg.remaining() < l {
                    return None;
                }
                msg.advance(l);
            }
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_response_encoding() {
        assert_eq!(&frame("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(&frame("db")[..], &[0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']);
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(
            serving_status(&[0, 0, 0, 0, 0]),
            Some(0),
            "absent = UNKNOWN"
        );
        assert_eq!(serving_status(&[0, 0, 0, 0, 9, 0x08]), None, "truncated");
        assert_eq!(status_name(2), "NOT_SERVING");
    }
}
