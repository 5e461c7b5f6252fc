//! Health endpoints: `/health/live` and `/health/ready` with dependency checks.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use serde::Serialize;

type CheckFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The dependency checks behind readiness, each run with a timeout. A cheap `Clone` handle, shared by the HTTP
/// endpoints ([`router`]) and the gRPC health service (`courier-grpc`).
///
/// ```
/// use std::time::Duration;
/// use courier_http::server::health::HealthChecks;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let checks = HealthChecks::new()
///     .timeout(Duration::from_millis(500))
///     .check("database", || async { Ok::<_, std::io::Error>(()) })
///     .check("payments", || async { Err("connection refused") });
/// let report = checks.run().await;
/// assert!(!report.ready);
/// assert_eq!(report.checks[1].error.as_deref(), Some("connection refused"));
/// # }
/// ```
#[derive(Clone)]
pub struct HealthChecks {
    checks: Vec<(String, CheckFn)>,
    timeout: Duration,
}

impl fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.checks.iter().map(|(n, _)| n).collect();
        f.debug_struct("HealthChecks").field("checks", &names).field("timeout", &self.timeout).finish()
    }
}

impl Default for HealthChecks {
    fn default() -> Self {
        Self::new()
    }
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The check's name.
    pub name: String,
    /// `"up"` or `"down"`.
    pub status: &'static str,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the check took, in milliseconds.
    pub duration_ms: u64,
}

/// The result of all checks: the JSON body of `/health/ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadinessReport {
    /// Every check passed.
    pub ready: bool,
    /// `"ready"` or `"not_ready"`.
    pub status: &'static str,
    /// Each check, in registration order.
    pub checks: Vec<CheckReport>,
}

impl HealthChecks {
    /// No checks (always ready), a 2 s timeout per check.
    pub fn new() -> Self {
        Self { checks: Vec::new(), timeout: Duration::from_secs(2) }
    }

    /// How long one check may take before it counts as down.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Adds a check named `name`: ready while `check()` returns `Ok` within the timeout.
    pub fn check<F, Fut, E>(mut self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        let f: CheckFn = Arc::new(move || {
            let fut = check();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        });
        self.checks.push((name.into(), f));
        self
    }

    /// The names of the checks.
    pub fn names(&self) -> Vec<&str> {
        self.checks.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Runs every check concurrently, each bounded by the timeout.
    pub async fn run(&self) -> ReadinessReport {
        let timeout = self.timeout;
        let runs = self.checks.iter().map(|(name, f)| async move {
            let started = Instant::now();
            let result = match tokio::time::timeout(timeout, f()).await {
                Ok(r) => r,
                Err(_) => Err(format!("timed out after {timeout:?}")),
            };
            let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            match result {
                Ok(()) => CheckReport { name: name.clone(), status: "up", error: None, duration_ms },
                Err(e) => CheckReport { name: name.clone(), status: "down", error: Some(e), duration_ms },
            }
        });
        let checks = futures::future::join_all(runs).await;
        let ready = checks.iter().all(|c| c.error.is_none());
        ReadinessReport { ready, status: if ready { "ready" } else { "not_ready" }, checks }
    }
}

/// A router serving `GET /health/live` (always `200` while the process runs) and `GET /health/ready` (`200` when
/// every check passes, else `503`; both with a JSON [`ReadinessReport`]). Merge it into the service's router.
///
/// ```
/// use axum::Router;
/// use courier_http::server::health::{self, HealthChecks};
///
/// let app: Router = Router::new().merge(health::router(HealthChecks::new()));
/// ```
pub fn router<S: Clone + Send + Sync + 'static>(checks: HealthChecks) -> Router<S> {
    Router::new()
        .route("/health/live", get(|| async { Json(serde_json::json!({ "status": "live" })) }))
        .route("/health/ready", get(ready).with_state(checks))
}

async fn ready(State(checks): State<HealthChecks>) -> Response {
    let report = checks.run().await;
    let status = if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    if !report.ready {
        let down: Vec<_> = report.checks.iter().filter(|c| c.error.is_some()).map(|c| c.name.as_str()).collect();
        tracing::warn!(?down, "not ready");
    }
    (status, Json(report)).into_response()
}
