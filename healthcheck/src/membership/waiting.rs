//! Attempts waiting for their answer on a backend (pools with stall detection), and
//! cutting their connections when the backend is stuck or one waits too long alone.

use super::{clock_ms, Endpoint};
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Whether a waiting attempt's request may be sent to another backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// Not idempotent, or its body is gone: it must wait.
    Never,
    /// A retry: resent if its backend turns out stuck, not for being slow alone.
    IfStuck,
    /// A first attempt: also resent, once, when it alone waits too long.
    First,
}

/// One attempt waiting for its answer.
#[derive(Debug)]
pub(super) struct Waiting {
    id: u64,
    fd: RawFd,
    local: SocketAddr,
    since_ms: u64,
    repeat: Repeat,
    cut: Option<Cut>,
}

/// Why a waiting attempt's connection was shut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Its backend became suspect.
    Stuck,
    /// It alone waited too long.
    Slow,
}

impl Endpoint {
    /// Attempt `id` waits for its answer on socket `fd` (whose local address is
    /// `local`). `repeat` says whether its request could be sent elsewhere.
    pub fn waiting_on(&self, id: u64, fd: RawFd, local: SocketAddr, repeat: Repeat) {
        self.waiting.lock().unwrap().push(Waiting {
            id,
            fd,
            local,
            since_ms: clock_ms(),
            repeat,
            cut: None,
        });
    }

    /// Attempt `id` got its answer or ended; its socket is no longer ours to cut.
    /// Returns why its connection was cut, if it was.
    pub fn done_waiting(&self, id: u64) -> Option<Cut> {
        let mut waiting = self.waiting.lock().unwrap();
        let i = waiting.iter().position(|w| w.id == id)?;
        waiting.swap_remove(i).cut
    }

    /// How long the oldest attempt that could be resent on its own has waited.
    pub(crate) fn oldest_resendable(&self, now_ms: u64) -> Option<std::time::Duration> {
        // Nothing waits without a request in flight: no lock for idle backends.
        if self.in_flight() == 0 {
            return None;
        }
        let waiting = self.waiting.lock().unwrap();
        waiting
            .iter()
            .filter(|w| w.repeat == Repeat::First && w.cut.is_none())
            .map(|w| std::time::Duration::from_millis(now_ms.saturating_sub(w.since_ms)))
            .max()
    }

    /// The backend is stuck: shuts the connections of at most `max` waiting attempts
    /// that may be repeated; their reads fail at once and the proxy retries them on
    /// other backends. A connection that also carries a request that may not be
    /// repeated (HTTP/2) is left alone. Returns how many attempts were cut.
    pub(crate) fn cut_waiting(&self, max: usize) -> usize {
        self.cut(max, Cut::Stuck, |_, _| true)
    }

    /// Shuts the connections of at most `max` first attempts waiting longer than
    /// `threshold` alone on their connection, each to be retried once elsewhere.
    pub(crate) fn cut_slow(
        &self,
        now_ms: u64,
        threshold: std::time::Duration,
        max: usize,
    ) -> usize {
        let threshold = threshold.as_millis() as u64;
        self.cut(max, Cut::Slow, |w, alone| {
            alone && w.repeat == Repeat::First && now_ms.saturating_sub(w.since_ms) > threshold
        })
    }

    fn cut(&self, max: usize, why: Cut, pick: impl Fn(&Waiting, bool) -> bool) -> usize {
        let mut waiting = self.waiting.lock().unwrap();
        let mut cut = 0;
        for i in 0..waiting.len() {
            let w = &waiting[i];
            if cut == max || w.cut.is_some() || w.repeat == Repeat::Never {
                continue;
            }
            let (fd, local) = (w.fd, w.local);
            let others = || {
                waiting
                    .iter()
                    .filter(move |o| o.fd == fd && o.local == local)
            };
            let alone = others().count() == 1;
            if !pick(w, alone) || others().any(|o| o.repeat == Repeat::Never) {
                continue;
            }
            let sharing = others().filter(|o| o.cut.is_none()).count();
            if cut + sharing > max || !self.shut(fd, local) {
                continue;
            }
            for o in waiting
                .iter_mut()
                .filter(|o| o.fd == fd && o.local == local)
            {
                o.cut = Some(why);
            }
            cut += sharing;
        }
        cut
    }

    /// Shuts socket `fd` if it is still the connection from `local` to this backend.
    fn shut(&self, fd: RawFd, local: SocketAddr) -> bool {
        use nix::sys::socket::{getpeername, getsockname, shutdown, Shutdown, SockaddrStorage};
        let inet = |a: SockaddrStorage| -> Option<SocketAddr> {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::V4((*v4).into()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into())))
        };
        // An attempt that failed may have closed its socket before it deregistered,
        // and the number been reused: cut only the very connection registered.
        let same = getsockname::<SockaddrStorage>(fd).ok().and_then(inet) == Some(local)
            && getpeername::<SockaddrStorage>(fd).ok().and_then(inet) == Some(self.socket_addr);
        same && shutdown(fd, Shutdown::Both).is_ok()
    }
}
