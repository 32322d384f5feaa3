//! A raw HTTP/2 client for attack tests: frames written by hand (what a well-behaved
//! client library refuses to send), frames read back by a task of their own so the
//! server's answers never block the flood.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 1;
pub const END_HEADERS: u8 = 4;

/// What the server sent back, as it arrives.
#[derive(Default)]
pub struct Seen {
    /// The connection ended (GOAWAY read, or end of stream, or an error).
    pub closed: AtomicBool,
    /// GOAWAY's error code plus one (0: none seen).
    pub goaway: AtomicU32,
    /// RST_STREAM frames, and how many said REFUSED_STREAM (7).
    pub resets: AtomicU64,
    pub refused: AtomicU64,
    /// HEADERS frames (answers).
    pub answers: AtomicU64,
    pub frames: AtomicU64,
}

impl Seen {
    pub fn goaway_code(&self) -> Option<u32> {
        self.goaway.load(Ordering::SeqCst).checked_sub(1)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

pub struct H2Raw {
    out: OwnedWriteHalf,
    pub seen: Arc<Seen>,
}

/// One frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A header block for `GET /` to authority `app` (HPACK static table and literals
/// without indexing: every block is the same, whatever was sent before).
pub fn get_block() -> Vec<u8> {
    // :method GET, :scheme http, :path /, then :authority (name index 1) literal.
    let mut b = vec![0x82, 0x86, 0x84, 0x01, 3];
    b.extend_from_slice(b"app");
    b
}

impl H2Raw {
    /// Connects, sends the preface and an empty SETTINGS, and starts reading.
    pub async fn connect(addr: std::net::SocketAddr) -> H2Raw {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut rd, mut out) = tcp.into_split();
        out.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        out.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while buf.len() >= 9 {
                    let len = (usize::from(buf[0]) << 16)
                        | (usize::from(buf[1]) << 8)
                        | usize::from(buf[2]);
                    if buf.len() < 9 + len {
                        break;
                    }
                    let kind = buf[3];
                    let payload = &buf[9..9 + len];
                    s.frames.fetch_add(1, Ordering::SeqCst);
                    match kind {
                        HEADERS => {
                            s.answers.fetch_add(1, Ordering::SeqCst);
                        }
                        RST_STREAM if payload.len() >= 4 => {
                            s.resets.fetch_add(1, Ordering::SeqCst);
                            if u32::from_be_bytes(payload[..4].try_into().unwrap()) == 7 {
                                s.refused.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        GOAWAY if payload.len() >= 8 => {
                            let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                            s.goaway.store(code + 1, Ordering::SeqCst);
                        }
                        _ => {}
                    }
                    buf.drain(..9 + len);
                }
            }
            s.closed.store(true, Ordering::SeqCst);
        });
        H2Raw { out, seen }
    }

    /// Sends `bytes`; false once the server has closed (or reset) the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.out.write_all(bytes).await.is_ok()
    }
}
