//! Idle HTTP/2 clients for the memory bench (`MEMORY=h2 harness.py memory`): opens COUNT TLS
//! connections to ADDR with ALPN h2, sends one GET on each and reads its answer (as a
//! browser that loaded a page), then holds them all open, quiet, until stdin closes.
//! Prints `ready N` (N connections that got a 200) once all are open.
//!
//! Usage: h2idle ADDR COUNT

use rustls::pki_types::ServerName;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use vigil_proxy::dataplane::upstream_tls::NoVerify;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (addr, count): (std::net::SocketAddr, usize) = match (args.get(1), args.get(2)) {
        (Some(a), Some(c)) => (a.parse().expect("ADDR"), c.parse().expect("COUNT")),
        _ => {
            eprintln!("usage: h2idle ADDR COUNT");
            std::process::exit(2);
        }
    };
    // The bench's certificate is self-signed: any is taken.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut held = Vec::with_capacity(count);
    let mut ok = 0;
    // A few at a time: each is a handshake and a request.
    for chunk in (0..count).collect::<Vec<_>>().chunks(32) {
        let mut opening = Vec::new();
        for _ in chunk {
            let connector = connector.clone();
            opening.push(tokio::spawn(async move {
                let tcp = TcpStream::connect(addr).await.ok()?;
                let name = ServerName::try_from("bench.test").unwrap();
                let tls = connector.connect(name, tcp).await.ok()?;
                let (client, conn) = h2::client::handshake(tls).await.ok()?;
                let task = tokio::spawn(conn);
                let mut client = client.ready().await.ok()?;
                let req = http::Request::get("https://bench.test/").body(()).unwrap();
                let (resp, _) = client.send_request(req, true).ok()?;
                let resp = resp.await.ok()?;
                let status = resp.status().as_u16();
                let mut body = resp.into_body();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.ok()?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                Some((status == 200, client, task))
            }));
        }
        for o in opening {
            if let Ok(Some((good, client, task))) = o.await {
                ok += good as usize;
                held.push((client, task));
            }
        }
    }
    println!("ready {ok}");
    // Quiet until told to go.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    drop(held);
}
