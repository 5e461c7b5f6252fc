//! A tracing span per message, joined to the sender's trace through W3C trace context.

use tracing::Instrument;

use crate::{BoxFuture, Context, HandlerError, Middleware, Next};

/// Wraps each handling in an `info` span `courier.consume` with the message id, type, queue, attempt and the full
/// 32-character W3C trace id and span id, so logs of one business flow can be joined across services. Messages the
/// handler publishes carry the trace forward (see [`Context::publish`]). A handler's failure is logged by the
/// consumer when it settles the message (`handler failed`, with the queue, message id and type, trace id, attempt,
/// handler and error).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tracing;

impl Middleware for Tracing {
    fn handle<'a>(&'a self, ctx: &'a Context, next: Next<'a>) -> BoxFuture<'a, Result<(), HandlerError>> {
        let span = tracing::info_span!(
            "courier.consume",
            message.id = %ctx.message_id(),
            message.type = %ctx.message_type(),
            queue = %ctx.queue(),
            attempt = ctx.attempt(),
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        // No subscriber records it: the rest of the stack runs as it is, with no span around it (a wrapper and a
        // boxed future less for every message).
        if span.is_disabled() {
            return next.run(ctx);
        }
        // The trace context is made only for a span that is recorded.
        let trace = ctx.trace();
        span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
        span.record("span_id", tracing::field::display(format_args!("{:016x}", trace.span_id)));
        Box::pin(next.run(ctx).instrument(span))
    }
}
