//! The standard layers of a service's edge, and the one place where error responses become problems.

use std::any::Any;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;

use super::TraceContextLayer;
use crate::problem::{PROBLEM_JSON, Problem};

/// The layers every Courier HTTP service puts around its router, outermost first:
///
/// 1. trace context ([`TraceContextLayer`]);
/// 2. problem responses: any error response (status >= 400) that is not already JSON becomes an RFC 9457
///    `application/problem+json` body with its status and, as `detail`, its text. This is the one place where
///    errors of axum's extractors (bad JSON: 400, wrong data: 422, wrong content type: 415), of the body limit
///    (413), of routing (404, 405) and of panics turn into the wire format;
/// 3. panics caught and answered `500` (a panic in a handler never takes the connection down);
/// 4. the request body limit (tower-http's `RequestBodyLimitLayer`, and axum's extractor limit set to match).
///
/// ```
/// use axum::{Json, Router, routing::post};
/// use courier_http::server::Edge;
///
/// let app = Edge::new().body_limit(64 * 1024).apply(
///     Router::new().route("/orders", post(|Json(v): Json<serde_json::Value>| async move { Json(v) })),
/// );
/// # let _: Router = app;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Edge {
    body_limit: usize,
    trace: bool,
}

impl Default for Edge {
    fn default() -> Self {
        Self::new()
    }
}

impl Edge {
    /// A 1 MiB body limit, trace context on.
    pub fn new() -> Self {
        Self { body_limit: 1024 * 1024, trace: true }
    }

    /// Largest request body accepted, in bytes (larger gets `413`).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Leaves out the trace-context layer (when an outer layer already extracts it).
    pub fn without_trace_context(mut self) -> Self {
        self.trace = false;
        self
    }

    /// Wraps every route (and the fallback) of `router`.
    pub fn apply<S: Clone + Send + Sync + 'static>(self, router: Router<S>) -> Router<S> {
        let router = router
            .layer(DefaultBodyLimit::max(self.body_limit))
            .layer(RequestBodyLimitLayer::new(self.body_limit))
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(axum::middleware::map_response(problem_responses));
        if self.trace { router.layer(TraceContextLayer::new()) } else { router }
    }
}

fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked; answered 500");
    Problem::internal("the request could not be completed; it is safe to retry if the call was idempotent")
        .into_response()
}

/// Largest error body read to become a problem's `detail`.
const MAX_DETAIL: usize = 4096;

/// Turns an error response that is not JSON into a problem (see [`Edge`]).
pub async fn problem_responses(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(PROBLEM_JSON) || ct.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_DETAIL).await.unwrap_or_default();
    let mut problem = Problem::new(status);
    let detail = String::from_utf8_lossy(&text).trim().to_owned();
    if !detail.is_empty() {
        problem = problem.with_detail(detail);
    }
    let mut out = problem.into_response();
    for (name, value) in parts.headers.iter() {
        if name != CONTENT_TYPE && name != http::header::CONTENT_LENGTH {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}
