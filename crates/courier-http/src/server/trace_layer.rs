//! Extracts W3C trace context from incoming requests.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use courier_core::TraceParent;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::trace::{self, TRACEPARENT};

/// The trace context of an incoming request, put in its extensions by [`TraceContextLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTrace {
    /// The caller's `traceparent`, if it sent a valid one.
    pub parent: Option<TraceParent>,
    /// This server's span: a child of `parent`, or a new root.
    pub current: TraceParent,
}

/// A tower layer (for axum routers and tonic servers alike) that reads `traceparent`, starts a child of it (or a
/// new root when it is missing or invalid), runs the handler inside a `tracing` span carrying `trace_id` and
/// `span_id`, and makes the context [current](crate::trace::current) so outgoing calls continue the trace.
///
/// ```
/// use axum::{Router, routing::get};
/// use courier_http::server::TraceContextLayer;
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { courier_http::trace::current().unwrap().trace_id_hex() }))
///     .layer(TraceContextLayer::new());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextLayer {
    _private: (),
}

impl TraceContextLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContext<S>;
    fn layer(&self, inner: S) -> TraceContext<S> {
        TraceContext { inner }
    }
}

/// The service of [`TraceContextLayer`].
#[derive(Debug, Clone)]
pub struct TraceContext<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for TraceContext<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let parent = req.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(TraceParent::parse);
        let current = parent.map_or_else(TraceParent::new_root, |p| p.child());
        req.extensions_mut().insert(RequestTrace { parent, current });
        let span = tracing::info_span!(
            "request",
            method = %req.method(),
            path = %req.uri().path(),
            trace_id = %current.trace_id_hex(),
            span_id = %format_args!("{:016x}", current.span_id),
            parent_span_id = parent.map(|p| tracing::field::display(format!("{:016x}", p.span_id))),
        );
        let fut = span.in_scope(|| trace::sync_scope(current, || self.inner.call(req)));
        Box::pin(trace::scope(current, fut.instrument(span)))
    }
}
