//! A raw client connection for what the one-shot client cannot do: pipelining,
//! protocol upgrades, `Expect: 100-continue`, heads sent a byte at a time.

use crate::Response;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every read waits at most this long: a test that expects an answer never hangs.
const READ_LIMIT: Duration = Duration::from_secs(10);

pub struct RawConn {
    pub stream: TcpStream,
    /// Bytes read but not yet handed out.
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        RawConn {
            stream: TcpStream::connect(addr).await.expect("connect to vigil"),
            buf: Vec::new(),
        }
    }

    /// A connection that has had one `GET path` (Host `app`) answered 200, kept open.
    pub async fn served(addr: SocketAddr, path: &str) -> RawConn {
        let mut c = RawConn::connect(addr).await;
        c.send(format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(c.response().await.unwrap().status, 200);
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads more bytes; Ok(0) at end of stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(READ_LIMIT, self.stream.read(&mut chunk))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s")
            })??;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next response head alone (for 100 and 101, which have no body).
    pub async fn head(&mut self) -> std::io::Result<Response> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&self.buf) {
                let r = Response {
                    status: resp.code.unwrap_or(0),
                    headers: crate::client::owned_headers(resp.headers),
                    body: String::new(),
                };
                self.buf.drain(..n);
                return Ok(r);
            }
            if self.fill().await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "closed before a response head; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    /// The next whole response (Content-Length or chunked body).
    pub async fn response(&mut self) -> std::io::Result<Response> {
        let mut r = self.head().await?;
        let chunked = r
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"));
        let len: usize = r
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        loop {
            if chunked {
                if let Some((body, used)) = crate::backend::chunked_body(&self.buf) {
                    r.body = String::from_utf8_lossy(&body).into_owned();
                    self.buf.drain(..used);
                    return Ok(r);
                }
            } else if self.buf.len() >= len {
                r.body = String::from_utf8_lossy(&self.buf[..len]).into_owned();
                self.buf.drain(..len);
                return Ok(r);
            }
            if self.fill().await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed mid-body",
                ));
            }
        }
    }

    /// Bytes read and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Exactly `n` raw bytes (tunnelled data).
    pub async fn bytes(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed",
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// True when the peer closes (or resets) within `limit` having sent nothing more.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(limit, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => self.buf.is_empty(),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
            Err(_) => false,
        }
    }
}
