//! TLS for tests: server configs for HTTPS fake backends, and a client that speaks
//! HTTP/1.1 or HTTP/2 over TLS to vigil, trusting only a test CA.

use crate::certs::Leaf;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read(path).unwrap();
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// An HTTPS backend's config: `leaf`, HTTP/1.1 only, session tickets on.
pub fn server_config(leaf: &Leaf) -> Arc<rustls::ServerConfig> {
    server_config_alpn(leaf, &["http/1.1"])
}

/// [`server_config`] offering `alpn`.
pub fn server_config_alpn(leaf: &Leaf, alpn: &[&str]) -> Arc<rustls::ServerConfig> {
    let pem = std::fs::read(&leaf.key).unwrap();
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .unwrap()
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs(&leaf.cert), key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    config.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    Arc::new(config)
}

/// A client trusting only `ca`, offering `alpn`.
pub fn client_config(ca: &Path, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca) {
        roots.add(c).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Connects to `addr` with `sni`; the error is the handshake's.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The certificate the server presented (its leaf) and the ALPN it chose.
pub fn negotiated(s: &TlsStream<TcpStream>) -> (Vec<u8>, Option<Vec<u8>>) {
    let (_, conn) = s.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].to_vec();
    (leaf, conn.alpn_protocol().map(<[u8]>::to_vec))
}

/// One HTTP/1.1 GET on `s` (kept alive); status and body.
pub async fn get1<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    request1(s, req.as_bytes()).await
}

/// One raw HTTP/1.1 request on `s` (kept alive); status and body (Content-Length).
pub async fn request1<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    req: &[u8],
) -> std::io::Result<(u16, String)> {
    s.write_all(req).await?;
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) {
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            if buf.len() >= head + len {
                let body = String::from_utf8_lossy(&buf[head..head + len]).to_string();
                return Ok((resp.code.unwrap_or(0), body));
            }
        }
    }
}

/// One HTTP/2 GET over `s`; status and body.
pub async fn get2<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    s: S,
    authority: &str,
    path: &str,
) -> Result<(u16, String), h2::Error> {
    let (mut client, conn) = h2::client::handshake(s).await?;
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://{authority}{path}"))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true)?;
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let out = read_body(&mut resp.into_body()).await?;
    Ok((status, String::from_utf8_lossy(&out).to_string()))
}

/// Reads an HTTP/2 body to its end, giving the window back as it goes.
pub async fn read_body(body: &mut h2::RecvStream) -> Result<Vec<u8>, h2::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
