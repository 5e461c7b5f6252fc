//! For tonic servers: W3C trace context from request metadata, and the standard `grpc.health.v1` service driven by
//! readiness checks.

use std::future::Future;
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

/// Continues the caller's trace: courier-http's layer, which works on tonic servers as on axum routers. It reads
/// `traceparent` from the request metadata, runs the call inside a span carrying the trace id, and makes the
/// context current ([`courier_http::trace::current`]), so calls the handler makes through Courier are its children.
///
/// ```no_run
/// # async fn demo(addr: std::net::SocketAddr) -> Result<(), tonic::transport::Error> {
/// use courier_grpc::example::{InventoryServer, MemoryInventory};
/// tonic::transport::Server::builder()
///     .layer(courier_grpc::server::TraceContextLayer::new())
///     .add_service(InventoryServer::new(MemoryInventory::with_demo_stock()))
///     .serve(addr)
///     .await
/// # }
/// ```
pub use courier_http::server::{TraceContext, TraceContextLayer};

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
