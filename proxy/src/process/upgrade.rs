//! Zero-downtime binary upgrade: `vigil run --upgrade` takes over the listening
//! sockets of the vigil running on the same config, and the health it found.
//!
//! Every running vigil listens on a Unix socket (`upgrade_socket`, by default named
//! after its admin address, so two instances on one host do not collide). A new
//! process connects to it and receives:
//!
//! 1. one JSON message (a 4-byte big-endian length, then the text): the old
//!    process's pid, the addresses of the sockets that follow, and every backend's
//!    health and admin state;
//! 2. each listening socket (the proxy's and the admin's), one per message, as
//!    `SCM_RIGHTS`.
//!
//! The new process seeds its checker with that health, so it routes from its first
//! moment and no backend flaps to unknown; it accepts on the same sockets (a socket
//! never closes, so no connection is refused) and then writes `ready PID`. Only then
//! does the old process stop accepting and drain, as on SIGTERM. If the new process
//! fails before `ready`, the old one keeps serving as if nothing happened.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{self, BufRead, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use vigil_healthcheck::{AdminState, Checker, Health};

/// How long the old process waits for the new one to say it is ready.
pub(crate) const READY_WITHIN: Duration = Duration::from_secs(60);

#[derive(Serialize, Deserialize)]
struct Hello {
    pid: u32,
    sockets: Vec<String>,
    backends: Vec<CarriedBackend>,
}

#[derive(Serialize, Deserialize)]
struct CarriedBackend {
    pool: String,
    address: String,
    health: String,
    admin: String,
}

/// What the new process received from the old one.
pub struct Handoff {
    pub from_pid: u32,
    sockets: HashMap<String, OwnedFd>,
    pub backends: HashMap<(String, String), (Health, AdminState)>,
    stream: UnixStream,
}

impl Handoff {
    /// The old process's listening socket on `addr`, if it had one.
    pub fn take(&mut self, addr: &SocketAddr) -> Option<OwnedFd> {
        self.sockets.remove(&addr.to_string())
    }

    /// Tells the old process to stop accepting and drain.
    pub fn ready(mut self) -> io::Result<()> {
        writeln!(self.stream, "ready {}", std::process::id())?;
        self.stream.flush()
    }
}

/// Why the new process could not take over.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("no running vigil answers on the upgrade socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("the upgrade from the running vigil failed: {0}")]
    Protocol(io::Error),
}

fn protocol(e: impl Into<io::Error>) -> UpgradeError {
    UpgradeError::Protocol(e.into())
}

/// The new process's side: connects to the running vigil at `path` and receives its
/// sockets and backend states.
pub fn take_over(path: &Path) -> Result<Handoff, UpgradeError> {
    let mut stream = UnixStream::connect(path).map_err(|source| UpgradeError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(protocol)?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).map_err(protocol)?;
    let mut text = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut text).map_err(protocol)?;
    let hello: Hello = serde_json::from_slice(&text).map_err(protocol)?;
    let mut sockets = HashMap::new();
    for addr in hello.sockets {
        sockets.insert(addr, recv_fd(&stream).map_err(protocol)?);
    }
    let backends = hello
        .backends
        .into_iter()
        .filter_map(|b| {
            let health = match b.health.as_str() {
                "up" => Health::Up,
                "down" => Health::Down,
                _ => return None,
            };
            let admin = AdminState::parse(&b.admin).unwrap_or_default();
            Some(((b.pool, b.address), (health, admin)))
        })
        .collect();
    Ok(Handoff {
        from_pid: hello.pid,
        sockets,
        backends,
        stream,
    })
}

fn send_fd(stream: &UnixStream, fd: &OwnedFd) -> io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd.as_fd()];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("control buffer too small"));
    }
    sendmsg(
        stream,
        &[IoSlice::new(b"s")],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

fn recv_fd(stream: &UnixStream) -> io::Result<OwnedFd> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let got = recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if got.bytes == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    Err(io::Error::other("a socket was announced but not sent"))
}

/// The running process's side: answers upgrade requests on `path` for as long as it
/// runs. `sockets` are copies of its listening sockets; `handed_over` turns true when a
/// new process has taken them and is ready.
pub fn serve(
    rt: &tokio::runtime::Runtime,
    path: &Path,
    checker: Checker,
    sockets: Vec<(String, OwnedFd)>,
    handed_over: watch::Sender<bool>,
) {
    // A file left by a process that is gone is stale: nothing answers on it. (The old
    // process of an upgrade still answers, but on the file it bound, which we replace.)
    let _ = std::fs::remove_file(path);
    let _enter = rt.enter();
    let listener = match tokio::net::UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot listen on the upgrade socket; `vigil run --upgrade` cannot take over from this process");
            return;
        }
    };
    let sockets = Arc::new(sockets);
    let path = path.to_path_buf();
    rt.spawn(async move {
        let mut closed = handed_over.subscribe();
        loop {
            let stream = tokio::select! {
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(_) => continue,
                },
                _ = closed.changed() => return,
            };
            let Ok(stream) = stream.into_std() else {
                continue;
            };
            let (checker, sockets) = (checker.clone(), sockets.clone());
            let answered =
                tokio::task::spawn_blocking(move || hand_over(stream, &checker, &sockets)).await;
            match answered {
                Ok(Ok(pid)) => {
                    tracing::info!(new_pid = pid, path = %path.display(), "a new vigil took over the listening sockets; draining");
                    let _ = handed_over.send(true);
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "upgrade abandoned: the new process did not take over; still serving")
                }
                Err(e) => tracing::warn!(error = %e, "upgrade task failed; still serving"),
            }
        }
    });
}

/// Sends the sockets and states, then waits for `ready`. Returns the new pid.
fn hand_over(
    mut stream: UnixStream,
    checker: &Checker,
    sockets: &[(String, OwnedFd)],
) -> io::Result<u32> {
    stream.set_nonblocking(false)?;
    let backends = checker
        .status()
        .into_iter()
        .map(|s| CarriedBackend {
            pool: s.pool,
            address: s.address,
            health: s.health.as_str().to_string(),
            admin: s.admin.as_str().to_string(),
        })
        .collect();
    let hello = Hello {
        pid: std::process::id(),
        sockets: sockets.iter().map(|(a, _)| a.clone()).collect(),
        backends,
    };
    let text = serde_json::to_vec(&hello).map_err(io::Error::other)?;
    stream.write_all(&(text.len() as u32).to_be_bytes())?;
    stream.write_all(&text)?;
    for (_, fd) in sockets {
        send_fd(&stream, fd)?;
    }
    stream.set_read_timeout(Some(READY_WITHIN))?;
    let mut line = String::new();
    io::BufReader::new(stream.take(64)).read_line(&mut line)?;
    line.strip_prefix("ready ")
        .and_then(|pid| pid.trim().parse().ok())
        .ok_or_else(|| io::Error::other("the new process did not say ready"))
}
