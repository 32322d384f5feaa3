//! After a `101`: the client's and the backend's bytes copied both ways until both
//! sides have closed, either fails, or neither has sent anything for the pool's
//! `read_timeout`. A tunnel's end, a reset included, is not an error: nothing is logged.

use super::client::Client;
use bytes::{Buf, BytesMut};
use pingora::protocols::Stream;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes read at once from either side.
const READ_AT_ONCE: usize = 16 * 1024;

/// Runs the tunnel between `client` (with what it sent after its request head, still
/// in `pending`) and `up`. `idle`: the longest silence in both directions;
/// `write_limit`: the longest a side may take to accept one write.
pub(super) async fn run(
    client: &mut Client<'_>,
    up: &mut Stream,
    idle: Duration,
    write_limit: Duration,
) {
    // What the client sent before the 101 arrived belongs to the tunnel.
    if !client.pending.is_empty() {
        let early = std::mem::take(client.pending);
        if !write(up, &early, write_limit).await {
            return;
        }
    }
    let mut from_client = BytesMut::with_capacity(READ_AT_ONCE);
    let mut from_up = BytesMut::with_capacity(READ_AT_ONCE);
    let (mut client_open, mut up_open) = (true, true);
    while client_open || up_open {
        from_client.clear();
        from_up.clear();
        tokio::select! {
            read = client.stream.read_buf(&mut from_client), if client_open => match read {
                Ok(n) if n > 0 => {
                    if !write(up, &from_client, write_limit).await {
                        return;
                    }
                }
                Ok(_) => {
                    // The client is done sending: the backend is told, and may still answer.
                    client_open = false;
                    let _ = up.shutdown().await;
                }
                Err(_) => return,
            },
            read = up.read_buf(&mut from_up), if up_open => match read {
                Ok(n) if n > 0 => {
                    if !write(client.stream, &from_up, write_limit).await {
                        return;
                    }
                }
                Ok(_) => {
                    up_open = false;
                    let _ = client.stream.shutdown().await;
                }
                Err(_) => return,
            },
            _ = tokio::time::sleep(idle) => return,
        }
    }
}

/// Writes all of `bytes` within `limit`: false when the side failed or was too slow.
async fn write(to: &mut Stream, mut bytes: &[u8], limit: Duration) -> bool {
    let written = tokio::time::timeout(limit, async {
        while bytes.has_remaining() {
            let n = to.write(bytes).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            bytes.advance(n);
        }
        to.flush().await
    });
    matches!(written.await, Ok(Ok(())))
}
