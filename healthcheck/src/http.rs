//! The HTTP/1.1 check exchange: one request, one response read to its very end, so
//! the connection can be reused, the body searched and its agent words read.

use crate::agent::AgentReply;
use crate::conn::{Conn, TlsClient};
use crate::outcome::Outcome;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Response headers larger than this fail the check.
const MAX_HEAD: usize = 16 * 1024;
/// Body bytes kept for `expected_body` and agent words; the rest is read and dropped.
const MAX_KEPT_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct HttpSpec {
    pub path: String,
    /// Host header; the backend address when None.
    pub host: Option<String>,
    /// Inclusive ranges of accepted status codes.
    pub expected_status: Vec<(u16, u16)>,
    /// A substring the body must contain.
    pub expected_body: Option<String>,
    pub reuse_connections: bool,
    pub max_connection_age: Duration,
    /// HTTPS: the connection is TLS, one handshake per `max_connection_age`.
    pub tls: Option<TlsClient>,
}

impl Default for HttpSpec {
    fn default() -> Self {
        HttpSpec {
            path: "/health".into(),
            host: None,
            expected_status: vec![(200, 399)],
            expected_body: None,
            reuse_connections: true,
            max_connection_age: Duration::from_secs(60),
            tls: None,
        }
    }
}

pub(crate) struct Exchange {
    pub outcome: Outcome,
    /// The stream, when the response left it clean for another request.
    pub reusable: Option<Conn>,
}

#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// EOF or reset before the first response byte.
    ClosedBeforeResponse,
    Io(std::io::Error),
    Protocol(String),
}

impl ExchangeError {
    pub fn into_outcome(self) -> Outcome {
        match self {
            ExchangeError::ClosedBeforeResponse => {
                Outcome::ConnectError("connection closed".into())
            }
            ExchangeError::Io(e) => Outcome::Failure(format!("i/o error: {e}")),
            ExchangeError::Protocol(m) => Outcome::Failure(m),
        }
    }
}

/// The check request's bytes; the prober builds them once per spec and address.
pub(crate) fn request(spec: &HttpSpec, addr: SocketAddr) -> Vec<u8> {
    let host = spec.host.clone().unwrap_or_else(|| addr.to_string());
    let connection = if spec.reuse_connections {
        "keep-alive"
    } else {
        "close"
    };
    format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: vigil-health-check\r\nAccept: */*\r\nConnection: {connection}\r\n\r\n",
        spec.path
    )
    .into_bytes()
}

pub(crate) async fn exchange(
    mut stream: Conn,
    spec: &HttpSpec,
    request: &[u8],
) -> Result<Exchange, ExchangeError> {
    if let Err(e) = stream.write_all(request).await {
        return Err(match e.kind() {
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                ExchangeError::ClosedBeforeResponse
            }
            _ => ExchangeError::Io(e),
        });
    }
    let mut buf = Vec::with_capacity(1024);
    let (status, head_len, framing, keep_alive) = loop {
        let n = read_more(&mut stream, &mut buf).await.map_err(|e| {
            if buf.is_empty() {
                ExchangeError::ClosedBeforeResponse
            } else {
                ExchangeError::Io(e)
            }
        })?;
        if n == 0 {
            return Err(if buf.is_empty() {
                ExchangeError::ClosedBeforeResponse
            } else {
                ExchangeError::Protocol("connection closed inside the response header".into())
            });
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = resp.code.unwrap_or(0);
                let (framing, keep_alive) = framing(&resp, status);
                break (status, len, framing, keep_alive);
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(ExchangeError::Protocol("response header too large".into()))
            }
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(ExchangeError::Protocol(format!("malformed response: {e}"))),
        }
    };
    buf.drain(..head_len);
    let mut body = Body { kept: Vec::new() };
    let clean = match framing {
        Framing::Empty => true,
        Framing::Length(n) => {
            body.read_exact_len(&mut stream, &mut buf, n).await?;
            true
        }
        Framing::Chunked => {
            body.read_chunked(&mut stream, &mut buf).await?;
            true
        }
        Framing::UntilClose => {
            body.read_to_close(&mut stream, &mut buf).await?;
            false
        }
    };
    let reusable = (clean && keep_alive && buf.is_empty()).then_some(stream);
    let outcome = judge(spec, status, &body.kept);
    Ok(Exchange { outcome, reusable })
}

fn judge(spec: &HttpSpec, status: u16, body: &[u8]) -> Outcome {
    if !spec
        .expected_status
        .iter()
        .any(|(lo, hi)| (*lo..=*hi).contains(&status))
    {
        return Outcome::Failure(format!("HTTP {status}"));
    }
    if let Some(needle) = &spec.expected_body {
        let found = needle.is_empty() || body.windows(needle.len()).any(|w| w == needle.as_bytes());
        if !found {
            return Outcome::Failure(format!("HTTP {status}: body lacks {needle:?}"));
        }
    }
    // Bounded (`agent::MAX_MESSAGE`): cheap enough for every check, and then pools that
    // share this probe each decide whether the words count.
    Outcome::Success(AgentReply::parse(body))
}

enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

fn framing(resp: &httparse::Response, status: u16) -> (Framing, bool) {
    let mut length = None;
    let mut chunked = false;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        let v = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            length = v.parse::<u64>().ok();
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().ends_with("chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = v.to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            } else if v.contains("keep-alive") && resp.version == Some(0) {
                close = false;
            }
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    (framing, !close)
}

/// Reads into `buf`'s spare capacity. No stack buffer: it would live inside every
/// idle backend task's future (8 KiB × 10,000 backends).
async fn read_more(stream: &mut Conn, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.reserve(4096);
    stream.read_buf(buf).await
}

fn truncated() -> ExchangeError {
    ExchangeError::Protocol("connection closed inside the response body".into())
}

struct Body {
    kept: Vec<u8>,
}

impl Body {
    fn keep(&mut self, bytes: &[u8]) {
        let room = MAX_KEPT_BODY.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Consumes `n` body bytes from `buf` and then the stream.
    async fn read_exact_len(
        &mut self,
        s: &mut Conn,
        buf: &mut Vec<u8>,
        mut n: u64,
    ) -> Result<(), ExchangeError> {
        loop {
            let take = (buf.len() as u64).min(n) as usize;
            self.keep(&buf[..take]);
            buf.drain(..take);
            n -= take as u64;
            if n == 0 {
                return Ok(());
            }
            if read_more(s, buf).await.map_err(ExchangeError::Io)? == 0 {
                return Err(truncated());
            }
        }
    }

    async fn read_line(s: &mut Conn, buf: &mut Vec<u8>) -> Result<Vec<u8>, ExchangeError> {
        loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                let line = buf[..i].to_vec();
                buf.drain(..i + 2);
                return Ok(line);
            }
            if buf.len() > MAX_HEAD {
                return Err(ExchangeError::Protocol("chunk header too long".into()));
            }
            if read_more(s, buf).await.map_err(ExchangeError::Io)? == 0 {
                return Err(truncated());
            }
        }
    }

    async fn read_chunked(&mut self, s: &mut Conn, buf: &mut Vec<u8>) -> Result<(), ExchangeError> {
        loop {
            let line = Self::read_line(s, buf).await?;
            let text = String::from_utf8_lossy(&line);
            let size_text = text.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_text, 16)
                .map_err(|_| ExchangeError::Protocol(format!("bad chunk size {size_text:?}")))?;
            if size == 0 {
                // Trailers, then the empty line that ends the message.
                while !Self::read_line(s, buf).await?.is_empty() {}
                return Ok(());
            }
            self.read_exact_len(s, buf, size).await?;
            if !Self::read_line(s, buf).await?.is_empty() {
                return Err(ExchangeError::Protocol("chunk not followed by CRLF".into()));
            }
        }
    }

    async fn read_to_close(
        &mut self,
        s: &mut Conn,
        buf: &mut Vec<u8>,
    ) -> Result<(), ExchangeError> {
        loop {
            self.keep(buf);
            buf.clear();
            if read_more(s, buf).await.map_err(ExchangeError::Io)? == 0 {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_status_and_body() {
        let spec = HttpSpec {
            expected_status: vec![(200, 299), (404, 404)],
            ..Default::default()
        };
        assert!(judge(&spec, 204, b"").is_success());
        assert!(judge(&spec, 404, b"").is_success());
        assert_eq!(judge(&spec, 500, b""), Outcome::Failure("HTTP 500".into()));
        let spec = HttpSpec {
            expected_body: Some("ok".into()),
            ..Default::default()
        };
        assert!(judge(&spec, 200, b"all ok here").is_success());
        assert!(!judge(&spec, 200, b"degraded").is_success());
    }

    #[test]
    fn a_passing_check_carries_the_agent_words() {
        let spec = HttpSpec::default();
        let pass = judge(&spec, 200, b"drain 50%\n");
        assert_eq!(pass, Outcome::Success(AgentReply::parse(b"drain 50%")));
        // A failing check's body is not an agent message.
        assert_eq!(
            judge(&spec, 503, b"ready"),
            Outcome::Failure("HTTP 503".into())
        );
    }
}
