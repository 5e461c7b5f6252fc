//! Immediate retries within one delivery.

use crate::{BoxFuture, Context, HandlerError, Middleware, Next, Retry};

/// Runs the handler again, right away, up to `retries` more times while the failure is retryable under the
/// policy. Delayed redelivery is the consumer's job, after this gives up.
#[derive(Debug, Clone)]
pub struct ImmediateRetry {
    policy: Retry,
}

impl ImmediateRetry {
    /// Immediate retries as `policy` says.
    pub fn new(policy: Retry) -> Self {
        Self { policy }
    }
}

impl Middleware for ImmediateRetry {
    fn handle<'a>(&'a self, ctx: &'a Context, next: Next<'a>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let mut tries_left = self.policy.immediate_retries();
            loop {
                match next.run(ctx).await {
                    Err(e) if tries_left > 0 && self.policy.should_retry(&e) => {
                        tries_left -= 1;
                        tracing::debug!(error = %e, tries_left, "handler failed; retrying immediately");
                        match ctx.handler_metrics() {
                            Some(m) => m.immediate_retries.increment(1),
                            None => {
                                metrics::counter!("courier_immediate_retries_total", "queue" => ctx.queue().to_owned())
                                    .increment(1)
                            }
                        }
                    }
                    result => return result,
                }
            }
        })
    }
}
