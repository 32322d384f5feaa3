//! `vigil demo`: the embedded config plus three tiny backends on loopback, the third
//! failing and recovering on a cycle, so state changes show within seconds.

use crate::process::error::StartError;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

pub const CONFIG: &str = include_str!("demo.yaml");
/// The flapping backend is healthy for this long, then failing for as long.
const CYCLE: Duration = Duration::from_secs(10);

/// Starts the demo backends on `rt`. Fails if a demo port is taken.
pub fn start_backends(rt: &tokio::runtime::Handle, addrs: &[SocketAddr]) -> Result<(), StartError> {
    let born = Instant::now();
    for (i, addr) in addrs.iter().enumerate() {
        let failed = |source| StartError::DemoBackend {
            addr: *addr,
            source,
        };
        let listener = std::net::TcpListener::bind(addr).map_err(failed)?;
        listener.set_nonblocking(true).map_err(failed)?;
        let flapping = i == addrs.len() - 1;
        let name = format!("demo-backend-{}", i + 1);
        rt.spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else { return };
            while let Ok((mut sock, _)) = listener.accept().await {
                let name = name.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut have = 0;
                    loop {
                        let Ok(n) = sock.read(&mut buf[have..]).await else { return };
                        if n == 0 {
                            return;
                        }
                        have += n;
                        let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
                            if have == buf.len() {
                                return;
                            }
                            continue;
                        };
                        let failing = flapping && (born.elapsed().as_secs() / CYCLE.as_secs()) % 2 == 1;
                        let (status, body) = if failing {
                            ("503 Service Unavailable", format!("{name}: failing (it recovers every {}s)\n", CYCLE.as_secs()))
                        } else {
                            ("200 OK", format!("hello from {name}\n"))
                        };
                        let resp = format!("HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if sock.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                    }
                });
            }
        });
    }
    Ok(())
}

pub fn banner(listen: SocketAddr, admin: SocketAddr) -> String {
    format!(
        "\nvigil demo: a proxy on http://{listen} in front of three backends; the third fails and\n\
         recovers every {cycle}s. Try, in another terminal:\n\
         \n  curl -s http://{listen}/                      # round robin over the alive backends\n\
         \x20 curl -s http://{admin}/health               # pool summary\n\
         \x20 curl -s http://{admin}/health/detailed      # every backend's state\n\
         \x20 curl -s http://{admin}/metrics | grep vigil_backend_up\n\
         \nState changes are logged below. Ctrl-C stops it.\n",
        cycle = CYCLE.as_secs()
    )
}
