//! A stand-in for systemd's end of the notify protocol (sd_notify(3)): a Unix datagram
//! socket for `$NOTIFY_SOCKET` that, like systemd, takes each message's sender pid from
//! its credentials and keeps every message in order.

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixAddr};
use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// One notification: who sent it, and its `KEY=VALUE` lines.
#[derive(Debug, Clone)]
pub struct Note {
    pub pid: i32,
    pub fields: Vec<(String, String)>,
}

impl Note {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn says(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }
}

/// The service manager's end: every message received, in order.
pub struct Manager {
    path: PathBuf,
    notes: Arc<Mutex<Vec<Note>>>,
    stop: Arc<AtomicBool>,
}

impl Manager {
    pub fn start() -> Manager {
        let path = crate::Vigil::temp_path("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        // As systemd does: the kernel attaches the sender's pid to every message.
        setsockopt(&socket, sockopt::PassCred, &true).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let notes: Arc<Mutex<Vec<Note>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopped) = (Arc::clone(&notes), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                if let Some(note) = receive(&socket) {
                    sink.lock().unwrap().push(note);
                }
            }
        });
        Manager { path, notes, stop }
    }

    /// The variable that points vigil here.
    pub fn env(&self) -> (&'static str, &str) {
        ("NOTIFY_SOCKET", self.path.to_str().unwrap())
    }

    pub fn notes(&self) -> Vec<Note> {
        self.notes.lock().unwrap().clone()
    }

    /// The first message at index `from` or later that `matches`, and its index.
    pub async fn wait(
        &self,
        what: &str,
        from: usize,
        matches: impl Fn(&Note) -> bool,
    ) -> (usize, Note) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let notes = self.notes();
            if let Some(i) = (from..notes.len()).find(|&i| matches(&notes[i])) {
                return (i, notes[i].clone());
            }
            assert!(
                Instant::now() < deadline,
                "no {what} after message {from} within 30s; messages: {notes:#?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One message with its sender's credentials; None on the read timeout.
fn receive(socket: &UnixDatagram) -> Option<Note> {
    let mut buf = [0u8; 4096];
    let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
    let (len, pid) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<UnixAddr>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .ok()?;
        let pid = msg.cmsgs().ok()?.find_map(|c| match c {
            ControlMessageOwned::ScmCredentials(c) => Some(c.pid()),
            _ => None,
        });
        (msg.bytes, pid.expect("credentials on every message"))
    };
    let text = String::from_utf8_lossy(&buf[..len]);
    let fields = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(Note { pid, fields })
}

/// CLOCK_MONOTONIC in microseconds, the clock of `MONOTONIC_USEC=`.
pub fn monotonic_usec() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
}
