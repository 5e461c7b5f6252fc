//! Handler duration and outcome metrics.

use std::sync::Arc;
use std::time::Instant;

use metrics::{Counter, Histogram, SharedString};

use crate::{BoxFuture, Context, FailureKind, HandlerError, Middleware, Next};

/// Records `courier_handler_duration_seconds` (histogram) and `courier_handler_calls_total` (counter, with an
/// `outcome` label) per queue and message type, through the `metrics` facade: install any exporter (before starting
/// the bus) to see them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing;

/// A handler's metric handles, registered once per queue and message type when the bus starts, so the hot path
/// allocates nothing for labels.
#[derive(Debug)]
pub struct HandlerMetrics {
    duration: Histogram,
    ok: Counter,
    transient: Counter,
    permanent: Counter,
    undecodable: Counter,
    pub(crate) immediate_retries: Counter,
}

impl HandlerMetrics {
    pub(crate) fn new(queue: &Arc<str>, message_type: &str) -> Self {
        let queue = SharedString::from(queue.clone());
        let ty = SharedString::from(message_type.to_owned());
        let calls = |outcome: &'static str| metrics::counter!("courier_handler_calls_total", "queue" => queue.clone(), "type" => ty.clone(), "outcome" => outcome);
        Self {
            duration: metrics::histogram!("courier_handler_duration_seconds", "queue" => queue.clone(), "type" => ty.clone()),
            ok: calls("ok"),
            transient: calls("transient"),
            permanent: calls("permanent"),
            undecodable: calls("undecodable"),
            immediate_retries: metrics::counter!("courier_immediate_retries_total", "queue" => queue.clone()),
        }
    }

    fn record(&self, result: &Result<(), HandlerError>, seconds: f64) {
        self.duration.record(seconds);
        match result {
            Ok(()) => &self.ok,
            Err(e) => match e.kind() {
                FailureKind::Transient => &self.transient,
                FailureKind::Permanent => &self.permanent,
                FailureKind::Undecodable => &self.undecodable,
            },
        }
        .increment(1);
    }
}

impl Middleware for Timing {
    fn handle<'a>(&'a self, ctx: &'a Context, next: Next<'a>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let start = Instant::now();
            let result = next.run(ctx).await;
            match ctx.handler_metrics() {
                Some(m) => m.record(&result, start.elapsed().as_secs_f64()),
                None => HandlerMetrics::new(&Arc::from(ctx.queue()), ctx.message_type())
                    .record(&result, start.elapsed().as_secs_f64()),
            }
            result
        })
    }
}
