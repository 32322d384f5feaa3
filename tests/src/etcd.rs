//! A real etcd (Debian's `etcd-server`) on loopback ports, in a temporary directory,
//! that tests can kill and start again on the same ports and data.

use crate::{free_port, Vigil};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

pub struct Etcd {
    pub client: SocketAddr,
    peer: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// Starts a one-member etcd and waits until it reports itself healthy.
    pub fn start() -> Etcd {
        let mut e = Etcd {
            client: free_port(),
            peer: free_port(),
            dir: Vigil::temp_path("etcd"),
            child: None,
        };
        e.restart();
        e
    }

    /// `http://127.0.0.1:PORT`, for `fleet.etcd`.
    pub fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    /// Starts it again (same ports, same data) after [`Etcd::kill`].
    pub fn restart(&mut self) {
        self.kill();
        let (c, p) = (
            format!("http://{}", self.client),
            format!("http://{}", self.peer),
        );
        let child = Command::new("etcd")
            .arg("--name=t")
            .arg(format!("--data-dir={}", self.dir.display()))
            .arg(format!("--listen-client-urls={c}"))
            .arg(format!("--advertise-client-urls={c}"))
            .arg(format!("--listen-peer-urls={p}"))
            .arg(format!("--initial-advertise-peer-urls={p}"))
            .arg(format!("--initial-cluster=t={p}"))
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd (apt-get install etcd-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy on {}",
                self.client
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `key` exists (etcd's JSON gateway, `POST /v3/kv/range`).
    pub async fn has_key(&self, key: &str) -> bool {
        let body = format!(
            "{{\"key\":\"{}\",\"count_only\":true}}",
            base64(key.as_bytes())
        );
        let r = crate::request(
            self.client,
            "POST",
            "etcd",
            "/v3/kv/range",
            &[("content-type", "application/json")],
            &body,
        )
        .await
        .expect("etcd answers");
        assert_eq!(r.status, 200, "{}", r.body);
        // proto3 JSON leaves a zero count out.
        let count = r.json()["count"].as_str().unwrap_or("0").to_string();
        count != "0"
    }

    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.client, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let req = format!(
            "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.client
        );
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// SIGKILL: every request to it fails until [`Etcd::restart`].
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Standard base64 with padding (what etcd's JSON gateway takes for bytes).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(plain.as_bytes()), coded);
        }
    }
}
