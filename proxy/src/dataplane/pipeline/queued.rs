//! A request that found every backend of its pool at `max_requests`: it waits in the
//! pool's queue (`dataplane/queue.rs`) for a place, or is answered `503` with
//! `Retry-After` when the queue is full or its wait reaches `queue.timeout`.

use super::attempt::Outgoing;
use super::Pipeline;
use crate::dataplane::context::Ctx;
use crate::dataplane::queue::{Refused, RETRY_AFTER};
use pingora::protocols::Stream;
use tokio::time::Instant;

impl Pipeline {
    /// The member the next attempt goes to, after waiting in the queue while every one
    /// is full. Err: the request failed or was refused, and the client has its answer
    /// (its status, and whether its connection can carry another request).
    pub(super) async fn next_member(
        &self,
        client: &mut Stream,
        out: &Outgoing<'_>,
        ctx: &mut Ctx,
    ) -> Result<usize, (u16, bool)> {
        let close = out.asked.close;
        loop {
            match ctx.next_member() {
                Ok(i) => return Ok(i),
                Err(_) if ctx.full => {
                    if let Err(why) = self.queue(ctx).await {
                        return Err(self.refuse_queued(client, why, out, close).await);
                    }
                }
                Err(e) => return Err(self.failed(client, ctx, e, out, close).await),
            }
        }
    }

    /// Waits in the pool's queue: Ok once a backend may have a place (the request then
    /// picks one again), Err when it is refused, counted.
    pub(super) async fn queue(&self, ctx: &mut Ctx) -> Result<(), Refused> {
        // The table may be replaced while the request waits: this one stays its.
        let table = ctx.table.clone().expect("routed request has a table");
        let pool = &table.pools[ctx.pool];
        let config = pool.config.queue;
        let deadline = *ctx
            .queue_deadline
            .get_or_insert_with(|| Instant::now() + config.timeout);
        let metrics = &pool.metrics.queue;
        let started = Instant::now();
        metrics.length.inc();
        let waited = pool.queue.wait(config.size, deadline, ctx.waited).await;
        metrics.length.dec();
        if waited != Err(Refused::Full) {
            metrics.wait.observe(started.elapsed().as_secs_f64());
        }
        ctx.waited = true;
        if let Err(why) = waited {
            metrics.refused[why as usize].inc();
        }
        waited
    }

    /// Answers a request the queue refused: `503` with `Retry-After`. The status the
    /// client got and whether its connection can carry another request.
    pub(super) async fn refuse_queued(
        &self,
        client: &mut Stream,
        why: Refused,
        out: &Outgoing<'_>,
        close: bool,
    ) -> (u16, bool) {
        let body = match why {
            Refused::Full => r#"{"error":"every backend is busy and the queue is full"}"#,
            Refused::TimedOut => r#"{"error":"every backend stayed busy for the queue's timeout"}"#,
        };
        let extra = [("retry-after", RETRY_AFTER)];
        let ok = self
            .respond(client, 503, &extra, body, close, out.asked.head)
            .await;
        (503, ok && !close)
    }
}
