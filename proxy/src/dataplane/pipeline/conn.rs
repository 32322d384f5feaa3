//! A client connection between requests: who it is, waiting for its next request (and
//! the linger of a drain), reading a head until it is whole, reading a body held whole.

use super::h2::H2Client;
use super::head::{self, Env, Head};
use super::{Pipeline, DRAIN_LINGER};
use bytes::BytesMut;
use pingora::apps::IDLE_KEEPALIVE;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

/// A client connection as the loop knows it.
pub(super) struct Conn {
    pub client: Option<SocketAddr>,
    /// Its IP address as text, formatted once (`X-Forwarded-For`, the hash key).
    pub client_ip: Option<Box<str>>,
    /// Its address as text, for the access log: formatted when first logged.
    client_text: std::sync::OnceLock<String>,
}

impl Conn {
    pub(super) fn new(client: Option<SocketAddr>) -> Conn {
        let ip = client.as_ref().and_then(|a| a.as_inet()).map(|a| a.ip());
        Conn {
            client_ip: ip.map(ip_text),
            client_text: std::sync::OnceLock::new(),
            client,
        }
    }

    pub(super) fn client_text(&self) -> &str {
        self.client_text.get_or_init(|| {
            self.client
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_default()
        })
    }
}

/// An IP address as text: an IPv4 one without `fmt` (formatted for every HTTP/2
/// stream, where `Display` cost a tenth of the request's instructions).
fn ip_text(ip: std::net::IpAddr) -> Box<str> {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string().into_boxed_str();
    };
    let mut text = String::with_capacity(15);
    let mut digits = itoa::Buffer::new();
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        text.push_str(digits.format(octet));
    }
    text.into_boxed_str()
}

impl Pipeline {
    /// Reads until `buf` holds `want` bytes, by `deadline` (`limits.body_timeout`).
    /// `Err(true)`: the client was too slow (it gets 408); `Err(false)`: it went away.
    pub(super) async fn read_body(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        want: usize,
        deadline: tokio::time::Instant,
    ) -> std::result::Result<(), bool> {
        while buf.len() < want {
            buf.reserve(want - buf.len());
            match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Err(false),
                Err(_) => return Err(true),
            }
        }
        Ok(())
    }

    /// Waits until the client sends something: true when it did. A new connection's
    /// first request is awaited whatever the shutdown watch says (see pingora-core
    /// patch 3); later ones are not.
    pub(super) async fn idle(
        &self,
        stream: &mut Stream,
        shutdown: &ShutdownWatch,
        first: bool,
    ) -> bool {
        if first {
            let readable = timeout(IDLE_KEEPALIVE, stream.wait_readable());
            return matches!(readable.await, Ok(Ok(_)));
        }
        if !*shutdown.borrow() {
            let mut shutdown = shutdown.clone();
            tokio::select! {
                ready = timeout(IDLE_KEEPALIVE, stream.wait_readable()) => {
                    return matches!(ready, Ok(Ok(_)))
                }
                _ = shutdown.changed() => {}
            }
        }
        // Draining (the watch turns at its start): the client may have sent its next
        // request just now, not knowing. A request that comes within DRAIN_LINGER is
        // still answered, with `Connection: close`; a client quiet that long is not
        // racing us, and its connection closes. The drain waits for the linger.
        let _lingering = self.plane.in_flight.start();
        let ready = timeout(DRAIN_LINGER, stream.wait_readable()).await;
        matches!(ready, Ok(Ok(_)))
    }

    /// Reads until `buf` starts with a whole head. `Err(Some(status))`: it is refused
    /// with `status` (too slow); `Err(None)`: the client closed or failed.
    pub(super) async fn read_head(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        env: &Env<'_>,
    ) -> std::result::Result<Head, Option<u16>> {
        if env.h2 {
            // An HTTP/2 stream's head is at hand, as fields.
            return match (stream.as_any()).downcast_ref::<H2Client>() {
                Some(client) => Ok(head::parse_stream(client.head(), env)),
                None => Err(None),
            };
        }
        if buf.is_empty() && env.https {
            // A TLS stream cannot wait for its next request without reading it (`idle`
            // returns at once): its first bytes are read small, so that a client idle
            // between requests holds no 4 KiB buffer. The rest of the record is in
            // rustls's buffer already, and the reads below take it without a system call.
            let mut first = [0u8; 512];
            match timeout(IDLE_KEEPALIVE, stream.read(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {
                    buf.reserve(4096);
                    buf.extend_from_slice(&first[..n]);
                }
                _ => return Err(None),
            }
        }
        // Until the first byte the keep-alive limit applies, then the head's own.
        let mut deadline = None;
        loop {
            if !buf.is_empty() {
                match head::parse(buf, env) {
                    Head::Partial => {}
                    other => return Ok(other),
                }
                if deadline.is_none() {
                    deadline = env.limits.timeout.map(|t| tokio::time::Instant::now() + t);
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            let read = match deadline {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
                        Ok(read) => read,
                        Err(_) => return Err(Some(408)),
                    }
                }
                None => match timeout(IDLE_KEEPALIVE, stream.read_buf(buf)).await {
                    Ok(read) => read,
                    Err(_) => return Err(None),
                },
            };
            match read {
                Ok(0) | Err(_) => return Err(None),
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ip_text;

    #[test]
    fn an_ip_address_reads_as_display_writes_it() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "::1",
            "2001:db8::8",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(&*ip_text(ip), ip.to_string());
        }
    }
}
