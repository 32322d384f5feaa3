//! An HTTP/2 client connection, served in one task: the `h2` codec's handshake (with
//! the contract's `http2` limits), then its streams accepted and each carried by the
//! loop (`Pipeline::serve` over an `H2Client`), all of them polled here beside the
//! codec, as HAProxy's mux and its streams share one thread's loop. A stream's request,
//! its backend's answer and the frames that carry both then take one wake-up of one
//! task, where a task per stream (Pingora's HTTP/2 server) took several: the stream's,
//! and the codec's for every frame the stream queued.
//!
//! A connection a second without a stream gives back the room its streams took (an idle
//! client holds little); one busy again sooner keeps it for its next streams.
//!
//! The connection ends when the client closes it, on a codec error (a flood cut with
//! GOAWAY among them), after `http2.idle_timeout` without a stream, or, once vigil
//! shuts down, when its streams are done: it is told with GOAWAY at once, and the
//! streams it opened before that are still served.

use super::H2Client;
use crate::dataplane::pipeline::Pipeline;
use crate::observe::logging::H2_HANDSHAKE_TARGET;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use pingora::protocols::http::v2::server::handshake;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Serves the HTTP/2 connection `stream` until it ends.
pub(in crate::dataplane::pipeline) async fn serve(
    pipeline: &Pipeline,
    stream: Stream,
    shutdown: &ShutdownWatch,
) {
    let socket = stream.get_socket_digest();
    let ssl = stream.get_ssl_digest();
    let options = pipeline.pingora.h2_options.clone();
    let idle_timeout = pipeline
        .pingora
        .server_options
        .as_ref()
        .and_then(|o| o.h2_idle_timeout);
    let mut conn = match handshake(stream, options).await {
        Ok(conn) => conn,
        Err(e) => {
            // A client that chose HTTP/2 and did not speak it: counted, not logged each.
            tracing::error!(target: H2_HANDSHAKE_TARGET, "H2 handshake error {e}");
            return;
        }
    };
    let mut streams = FuturesUnordered::new();
    let mut signal = Box::pin(signal_changed(shutdown.clone()));
    let mut closing = false;
    let mut idle = Idle::new(idle_timeout);
    // The codec is polled only when it asked to be (its socket, or a stream that
    // queued a frame): a stream's progress with its backend does not poll it again.
    let parent = Arc::new(AtomicWaker::new());
    let codec = Arc::new(Turn::new(parent.clone()));
    let codec_waker = Waker::from(codec.clone());
    // The same for the shutdown signal (polling it takes the watch's lock).
    let told = Arc::new(Turn::new(parent.clone()));
    let told_waker = Waker::from(told.clone());
    let ended = poll_fn(|cx| {
        parent.register(cx.waker());
        if !closing
            && told.taken()
            && signal
                .as_mut()
                .poll(&mut Context::from_waker(&told_waker))
                .is_ready()
        {
            // GOAWAY now; the streams it opened before are still served.
            conn.graceful_shutdown();
            closing = true;
            codec.woken.store(true, Ordering::Relaxed);
        }
        loop {
            while let Poll::Ready(Some(_)) = streams.poll_next_unpin(cx) {}
            if !codec.taken() {
                break;
            }
            // (A wake while it is polled schedules this task again: no need to loop.)
            match conn.poll_accept(&mut Context::from_waker(&codec_waker)) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    idle.busy();
                    let client = H2Client::new(request, respond, socket.clone(), ssl.clone());
                    streams.push(pipeline.serve(Box::new(client), shutdown, true));
                    // The new stream starts, and the codec is asked for the next.
                    codec.woken.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Some(Err(e))) => {
                    // Often a client that just closed its socket.
                    tracing::debug!(error = %e, "HTTP/2 connection ended");
                    return Poll::Ready(true);
                }
                Poll::Ready(None) => return Poll::Ready(true),
                Poll::Pending => break,
            }
        }
        if streams.is_empty() && !closing {
            while let Poll::Ready(step) = idle.poll(cx) {
                match step {
                    // Quiet: the room its streams took is given back; a connection busy
                    // again soon (a client's next batch of requests) keeps it.
                    Step::Quiet => conn.release_room(),
                    // Idle: closed at once (no GOAWAY to wait on from a peer that may
                    // be gone).
                    Step::Idle => return Poll::Ready(false),
                }
            }
        }
        Poll::Pending
    })
    .await;
    // The codec is gone: its streams see the connection end, and finish.
    drop(conn);
    if ended {
        while streams.next().await.is_some() {}
    }
}

/// How long a connection carries no stream before its codec gives back the room its
/// streams and their frames took (h2 patch 2).
const QUIET: Duration = Duration::from_secs(1);

/// A connection's one timer while it carries no stream, moved when it becomes idle (not
/// one made for every request): `QUIET`, then `http2.idle_timeout` (if set) from the
/// same moment.
struct Idle {
    timer: Pin<Box<Sleep>>,
    timeout: Option<Duration>,
    armed: bool,
    /// When the connection is idle; None: never.
    until: Option<Instant>,
    quiet: bool,
}

/// What an idle connection's timer says.
enum Step {
    Quiet,
    Idle,
}

impl Idle {
    fn new(timeout: Option<Duration>) -> Idle {
        Idle {
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            timeout,
            armed: false,
            until: None,
            quiet: false,
        }
    }

    /// A stream began: the timer starts again when the connection next has none.
    fn busy(&mut self) {
        self.armed = false;
    }

    /// Polled while the connection carries no stream: `Quiet` once, then `Idle`.
    fn poll(&mut self, cx: &mut Context) -> Poll<Step> {
        if !self.armed {
            self.armed = true;
            self.quiet = false;
            let now = Instant::now();
            self.until = self.timeout.map(|timeout| now + timeout);
            self.timer.as_mut().reset(now + QUIET);
        }
        if self.quiet && self.until.is_none() {
            return Poll::Pending;
        }
        ready!(self.timer.as_mut().poll(cx));
        if self.quiet {
            return Poll::Ready(Step::Idle);
        }
        self.quiet = true;
        if let Some(until) = self.until {
            self.timer.as_mut().reset(until);
        }
        Poll::Ready(Step::Quiet)
    }
}

/// A part of the connection's task polled only when it asked to be (its waker was
/// called): the task is woken, and the part's turn noted. Each part starts with a turn.
struct Turn {
    woken: AtomicBool,
    parent: Arc<AtomicWaker>,
}

impl Turn {
    fn new(parent: Arc<AtomicWaker>) -> Turn {
        Turn {
            woken: AtomicBool::new(true),
            parent,
        }
    }

    /// Whether it is this part's turn, which is then taken.
    fn taken(&self) -> bool {
        self.woken.swap(false, Ordering::AcqRel)
    }
}

impl Wake for Turn {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.parent.wake();
    }
}

/// Ready once vigil shuts down (or the signal's sender is gone).
async fn signal_changed(mut signal: ShutdownWatch) {
    if !*signal.borrow() {
        let _ = signal.changed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::{Idle, Step, QUIET};
    use std::future::poll_fn;
    use std::task::Poll;
    use std::time::Duration;

    /// What the timer says once `after` has passed: Some step, or None if it waits.
    async fn step_after(idle: &mut Idle, after: Duration) -> Option<&'static str> {
        tokio::time::advance(after).await;
        poll_fn(|cx| {
            Poll::Ready(match idle.poll(cx) {
                Poll::Ready(Step::Quiet) => Some("quiet"),
                Poll::Ready(Step::Idle) => Some("idle"),
                Poll::Pending => None,
            })
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_quiet_after_a_second_then_idle_at_its_timeout() {
        let mut idle = Idle::new(Some(Duration::from_secs(5)));
        let ms = Duration::from_millis;
        assert_eq!(step_after(&mut idle, ms(0)).await, None);
        assert_eq!(step_after(&mut idle, QUIET - ms(1)).await, None);
        assert_eq!(step_after(&mut idle, ms(1)).await, Some("quiet"));
        assert_eq!(step_after(&mut idle, ms(0)).await, None, "quiet once");
        assert_eq!(step_after(&mut idle, ms(3_999)).await, None);
        // The timeout counts from when the last stream ended, not from the quiet.
        assert_eq!(step_after(&mut idle, ms(1)).await, Some("idle"));
        // A stream, then none again: both start over.
        idle.busy();
        assert_eq!(step_after(&mut idle, ms(0)).await, None);
        assert_eq!(step_after(&mut idle, QUIET).await, Some("quiet"));
        assert_eq!(step_after(&mut idle, ms(4_000)).await, Some("idle"));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_timeout_an_idle_connection_is_only_ever_quiet() {
        let mut idle = Idle::new(None);
        assert_eq!(step_after(&mut idle, Duration::ZERO).await, None);
        assert_eq!(step_after(&mut idle, QUIET).await, Some("quiet"));
        assert_eq!(step_after(&mut idle, Duration::from_secs(3600)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_shorter_than_the_quiet_closes_right_after_it() {
        let mut idle = Idle::new(Some(Duration::from_millis(200)));
        assert_eq!(step_after(&mut idle, Duration::ZERO).await, None);
        assert_eq!(step_after(&mut idle, QUIET).await, Some("quiet"));
        assert_eq!(step_after(&mut idle, Duration::ZERO).await, Some("idle"));
    }
}
