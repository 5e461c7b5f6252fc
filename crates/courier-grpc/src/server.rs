//! For tonic servers: W3C trace context from request metadata, and the standard `grpc.health.v1` service driven by
//! readiness checks.

use std::future::Future;
use std::task::{Context, Poll};
use std::time::Duration;

use courier_core::TraceParent;
use futures::future::BoxFuture;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tower::{Layer, Service};
use tracing::Instrument;

/// Continues the caller's trace: reads `traceparent` from the request metadata, runs the call inside a
/// `grpc.request` span carrying the trace id and the RPC path, and makes it the current trace context
/// ([`courier_http::trace::current`]), so calls the handler makes (HTTP or gRPC through Courier) are its children.
/// A request without one starts a new trace.
///
/// ```no_run
/// # async fn demo(addr: std::net::SocketAddr) -> Result<(), tonic::transport::Error> {
/// use courier_grpc::example::{InventoryServer, MemoryInventory};
/// tonic::transport::Server::builder()
///     .layer(courier_grpc::server::TraceContextLayer)
///     .add_service(InventoryServer::new(MemoryInventory::with_demo_stock()))
///     .serve(addr)
///     .await
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextLayer;

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContext<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceContext { inner }
    }
}

/// The service [`TraceContextLayer`] makes.
#[derive(Debug, Clone)]
pub struct TraceContext<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for TraceContext<S>
where
    S: Service<http::Request<B>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let parent = req
            .headers()
            .get(courier_http::trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        let trace = parent.map_or_else(TraceParent::new_root, |p| p.child());
        let span = tracing::info_span!(
            "grpc.request",
            rpc = %req.uri().path(),
            trace_id = %trace.trace_id_hex(),
            parent_span = parent.map(|p| format!("{:016x}", p.span_id)).unwrap_or_default(),
        );
        let future = self.inner.call(req);
        Box::pin(courier_http::trace::scope(trace, future).instrument(span))
    }
}

/// The `grpc.health.v1` service and its reporter: `(reporter, service)`; add the service to the server.
pub fn health() -> (HealthReporter, HealthServer<impl Health>) {
    tonic_health::server::health_reporter()
}

/// Keeps `service`'s health status in step with `check`: runs it every `interval` and reports `SERVING` while it
/// returns `true`, `NOT_SERVING` otherwise. Runs until the returned task is aborted.
pub fn report_readiness<F, Fut>(
    reporter: HealthReporter,
    service: impl Into<String>,
    interval: Duration,
    check: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let service = service.into();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let status = if check().await { ServingStatus::Serving } else { ServingStatus::NotServing };
            reporter.set_service_status(&service, status).await;
        }
    })
}
