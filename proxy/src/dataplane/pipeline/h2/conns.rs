//! Connections to `protocol: h2` backends: one per backend on each worker thread (the
//! thread's `idle` lists play this part for HTTP/1), its streams multiplexed, opened
//! when a request first needs it and closed after `UPSTREAM_IDLE_TIMEOUT` without one.
//! A connection the backend closed, or on which it refused new streams (GOAWAY), is
//! replaced by the next request.

use super::other;
use crate::dataplane::context::UPSTREAM_IDLE_TIMEOUT;
use crate::dataplane::idle::Key;
use bytes::Bytes;
use pingora::protocols::tls::{SslDigest, ALPN};
use pingora::protocols::{SocketDigest, Stream};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// HTTP/2 receive windows towards a backend, per stream and per connection (Pingora's
/// own, so that answers come as fast as on its proxy).
const WINDOW: u32 = 1 << 23;

/// One connection to a backend, shared by the streams of this thread's requests.
pub(in crate::dataplane::pipeline) struct Conn {
    pub send: h2::client::SendRequest<Bytes>,
    /// Its socket, for the stall detector (an attempt's `up.id()`) and its digests.
    pub fd: i32,
    pub socket: Option<Arc<SocketDigest>>,
    pub ssl: Option<Arc<SslDigest>>,
    pub scheme: http::uri::Scheme,
    /// The backend's address as configured: `:authority` for a request without `Host`.
    pub authority: Box<str>,
    /// Streams open on it now.
    streams: AtomicUsize,
    /// A stream opened since the idle timer last looked.
    used: AtomicBool,
    /// The connection ended or refuses new streams: not to be used again.
    closed: AtomicBool,
}

impl Conn {
    /// A stream begins on it (`H2Upstream::new`); `stream_ended` when it is dropped.
    pub(super) fn stream_began(&self) {
        self.streams.fetch_add(1, Ordering::Relaxed);
        self.used.store(true, Ordering::Relaxed);
    }

    pub(super) fn stream_ended(&self) {
        self.streams.fetch_sub(1, Ordering::Relaxed);
    }

    /// The backend went away or refused a new stream: the next request dials anew.
    pub(super) fn broken(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

thread_local! {
    static CONNS: RefCell<HashMap<Key, Arc<Conn>>> = RefCell::default();
}

/// This thread's connection to the backend `key`, while it can take a stream.
pub(in crate::dataplane::pipeline) fn find(key: Key) -> Option<Arc<Conn>> {
    CONNS.with(|c| {
        let mut conns = c.borrow_mut();
        let conn = conns.get(&key)?;
        if conn.closed.load(Ordering::Relaxed) {
            conns.remove(&key);
            return None;
        }
        Some(conn.clone())
    })
}

/// Makes `stream`, just dialled to the backend `key`, this thread's HTTP/2 connection
/// to it: the handshake within `timeout`, then a task drives it.
pub(in crate::dataplane::pipeline) async fn open(
    key: Key,
    stream: Stream,
    scheme: http::uri::Scheme,
    authority: &str,
    timeout: Duration,
) -> io::Result<Arc<Conn>> {
    if stream.get_ssl_digest().is_some() && stream.selected_alpn_proto() != Some(ALPN::H2) {
        return Err(other("the backend did not agree to HTTP/2 (ALPN)"));
    }
    let (fd, socket, ssl) = (
        stream.id(),
        stream.get_socket_digest(),
        stream.get_ssl_digest(),
    );
    let handshake = h2::client::Builder::new()
        .enable_push(false)
        .max_frame_size(64 * 1024)
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .handshake::<_, Bytes>(stream);
    let (send, connection) = match tokio::time::timeout(timeout, handshake).await {
        Ok(done) => done.map_err(other)?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "HTTP/2 handshake")),
    };
    let conn = Arc::new(Conn {
        send,
        fd,
        socket,
        ssl,
        scheme,
        authority: authority.into(),
        streams: AtomicUsize::new(0),
        used: AtomicBool::new(true),
        closed: AtomicBool::new(false),
    });
    tokio::spawn(drive(conn.clone(), connection));
    CONNS.with(|c| c.borrow_mut().insert(key, conn.clone()));
    Ok(conn)
}

/// Drives the connection until the backend closes it or it has carried no stream for
/// `UPSTREAM_IDLE_TIMEOUT` (then dropping it closes the socket).
async fn drive(conn: Arc<Conn>, connection: h2::client::Connection<Stream, Bytes>) {
    let mut connection = std::pin::pin!(connection);
    loop {
        tokio::select! {
            end = &mut connection => {
                if let Err(e) = end {
                    tracing::debug!("HTTP/2 connection to {} ended: {e}", conn.authority);
                }
                break;
            }
            _ = tokio::time::sleep(UPSTREAM_IDLE_TIMEOUT) => {
                let used = conn.used.swap(false, Ordering::Relaxed);
                if conn.streams.load(Ordering::Relaxed) == 0 {
                    if !used {
                        break;
                    }
                    // Kept, quiet: the room its streams took is given back (h2 patch 2).
                    connection.release_room();
                }
            }
        }
    }
    conn.closed.store(true, Ordering::Relaxed);
    // Spawned on the thread that opened it (Pingora's runtimes have one thread each).
    CONNS.with(|c| {
        let mut conns = c.borrow_mut();
        conns.retain(|_, kept| !Arc::ptr_eq(kept, &conn));
    });
}
