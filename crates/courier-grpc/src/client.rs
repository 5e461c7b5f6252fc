//! A tonic channel behind courier-resilience's pipeline.
//!
//! [`ResilientChannel`] is a tower service over `http::Request<tonic::body::Body>`, so any tonic-generated client
//! takes it: `InventoryClient::new(channel)`. Each call's request body is buffered (gRPC unary requests are small)
//! so it can be sent again by the retry and hedging layers; streaming calls work too but are sent once.
//!
//! The status of a call is read from the response headers (the trailers-only responses servers send for an error
//! returned by a handler). `UNAVAILABLE`, `RESOURCE_EXHAUSTED`, `ABORTED`, `DEADLINE_EXCEEDED`, `INTERNAL` and
//! `UNKNOWN` count as failures (the breaker counts them; they are retried when the call is idempotent); every
//! other status is the caller's answer and passes through. A status sent in trailers after a streamed body is not
//! seen by the pipeline. Layer failures come back as statuses: deadline -> `DEADLINE_EXCEEDED`, open breaker ->
//! `UNAVAILABLE` ("circuit ... is open"), bulkhead or rate limit -> `RESOURCE_EXHAUSTED`.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use courier_resilience::pipeline::{PipelineService, ResiliencePipeline};
use courier_resilience::retry::{Idempotency, RetryPredicate};
use courier_resilience::{CallError, ErrorKind, ResilienceError};
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, Uri};
use http_body_util::BodyExt;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::{Service, ServiceExt};

pub use courier_resilience::balance::BalanceConfig;
pub use courier_resilience::bulkhead::{Bulkhead, BulkheadConfig};
pub use courier_resilience::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitState};
pub use courier_resilience::hedge::HedgeDelay;
pub use courier_resilience::retry::RetryPolicy;

/// A gRPC call with its body read, so the pipeline can send it again.
#[derive(Debug, Clone)]
pub struct GrpcRequest {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    idempotent: bool,
}

impl GrpcRequest {
    /// The RPC's path (`/package.Service/Method`).
    pub fn path(&self) -> &str {
        self.uri.path()
    }
}

impl Idempotency for GrpcRequest {
    fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    fn idempotency_key(&self) -> Option<&str> {
        self.headers.get("idempotency-key").and_then(|v| v.to_str().ok())
    }
}

/// Why a call failed, as the pipeline sees it.
#[derive(Debug)]
pub enum GrpcError {
    /// The server answered with a failure status.
    Status(Status),
    /// The connection failed.
    Transport(tonic::transport::Error),
}

impl fmt::Display for GrpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrpcError::Status(s) => write!(f, "{}: {}", s.code(), s.message()),
            GrpcError::Transport(e) => write!(f, "transport error: {e}"),
        }
    }
}

impl std::error::Error for GrpcError {}

impl CallError for GrpcError {
    fn is_retryable(&self) -> bool {
        match self {
            GrpcError::Status(s) => is_failure(s.code()),
            GrpcError::Transport(_) => true,
        }
    }
}

/// The statuses that say the dependency is failing (rather than answering).
fn is_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::Unknown
    )
}

/// One server, reached through a tonic [`Channel`]; failure statuses become [`GrpcError`]s.
#[derive(Debug, Clone)]
struct Endpoint {
    channel: Channel,
}

impl Service<GrpcRequest> for Endpoint {
    type Response = http::Response<tonic::body::Body>;
    type Error = GrpcError;
    type Future = BoxFuture<'static, Result<Self::Response, GrpcError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GrpcError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: GrpcRequest) -> Self::Future {
        let mut channel = self.channel.clone();
        Box::pin(async move {
            let mut request = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(req.body)));
            *request.method_mut() = req.method;
            *request.uri_mut() = req.uri;
            *request.headers_mut() = req.headers;
            channel.ready().await.map_err(GrpcError::Transport)?;
            let response = channel.call(request).await.map_err(GrpcError::Transport)?;
            if let Some(status) = Status::from_header_map(response.headers())
                && is_failure(status.code())
            {
                return Err(GrpcError::Status(status));
            }
            Ok(response)
        })
    }
}

/// The status a failed call ends with.
fn status_of(error: ResilienceError<GrpcError>) -> Status {
    let text = error.to_string();
    match error.kind() {
        ErrorKind::DeadlineExceeded | ErrorKind::AttemptTimeout => Status::deadline_exceeded(text),
        ErrorKind::CircuitOpen | ErrorKind::NoHealthyEndpoint => Status::unavailable(text),
        ErrorKind::BulkheadFull | ErrorKind::RateLimited => Status::resource_exhausted(text),
        _ => match error.into_inner() {
            Some(GrpcError::Status(status)) => status,
            Some(GrpcError::Transport(e)) => Status::unavailable(format!("cannot reach the server: {e}")),
            None => Status::unknown(text),
        },
    }
}

/// A tonic channel behind a resilience pipeline; see the [module docs](self). A cheap `Clone` handle.
#[derive(Clone)]
pub struct ResilientChannel {
    name: Arc<str>,
    service: PipelineService<GrpcRequest, http::Response<tonic::body::Body>, GrpcError>,
    idempotent: Arc<HashSet<String>>,
    breaker: Option<CircuitBreaker>,
}

impl fmt::Debug for ResilientChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResilientChannel").field("name", &self.name).finish_non_exhaustive()
    }
}

impl ResilientChannel {
    /// A builder for a channel to the server at `url` (such as `http://127.0.0.1:50051`).
    pub fn builder(url: impl Into<String>) -> ResilientChannelBuilder {
        ResilientChannelBuilder::new(vec![url.into()])
    }

    /// A builder for a channel balancing over several servers (power of two choices, passive ejection).
    pub fn balanced<I: IntoIterator<Item = U>, U: Into<String>>(urls: I) -> ResilientChannelBuilder {
        ResilientChannelBuilder::new(urls.into_iter().map(Into::into).collect())
    }

    /// The breaker, if the channel has one (share it with a bus consumer as its gate).
    pub fn circuit_breaker(&self) -> Option<&CircuitBreaker> {
        self.breaker.as_ref()
    }
}

impl Service<http::Request<tonic::body::Body>> for ResilientChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let service = self.service.clone();
        let idempotent = self.idempotent.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| Status::internal(format!("cannot read the request body: {e}")))?
                .to_bytes();
            let mut headers = parts.headers;
            if !headers.contains_key(courier_http::trace::TRACEPARENT) {
                let traceparent = courier_http::trace::outgoing(None).to_string();
                if let Ok(value) = HeaderValue::try_from(traceparent) {
                    headers.insert(courier_http::trace::TRACEPARENT, value);
                }
            }
            let request = GrpcRequest {
                idempotent: idempotent.contains(parts.uri.path()),
                method: parts.method,
                uri: parts.uri,
                headers,
                body,
            };
            service.oneshot(request).await.map_err(status_of)
        })
    }
}

/// Builds a [`ResilientChannel`]; layers left unset are left out.
pub struct ResilientChannelBuilder {
    urls: Vec<String>,
    name: Option<String>,
    pipeline: ResiliencePipeline<GrpcRequest>,
    idempotent: HashSet<String>,
    breaker: Option<CircuitBreakerConfig>,
    bulkhead: Option<usize>,
    connect_timeout: Duration,
}

impl fmt::Debug for ResilientChannelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResilientChannelBuilder").field("urls", &self.urls).finish_non_exhaustive()
    }
}

impl ResilientChannelBuilder {
    fn new(urls: Vec<String>) -> Self {
        Self {
            name: None,
            pipeline: ResiliencePipeline::new(urls.first().cloned().unwrap_or_default()),
            urls,
            idempotent: HashSet::new(),
            breaker: None,
            bulkhead: None,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// Names the channel (metrics, errors); default: the first URL.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Bounds each whole call, retries included.
    pub fn deadline(mut self, total: Duration) -> Self {
        self.pipeline = self.pipeline.deadline(total);
        self
    }

    /// Bounds each attempt (inside the breaker, so a hanging server counts as failing).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.pipeline = self.pipeline.attempt_timeout(timeout);
        self
    }

    /// Retries failed idempotent calls (see [`idempotent`](Self::idempotent)) as `policy` says.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.pipeline = self.pipeline.retry(policy);
        self
    }

    /// Sends a second attempt (to another server when balanced) if an idempotent call has not answered after
    /// `delay`.
    pub fn hedge(mut self, delay: HedgeDelay) -> Self {
        self.pipeline = self.pipeline.hedge(delay);
        self
    }

    /// Declares RPCs safe to send twice, by path (`/courier.example.v1.Inventory/GetStock`). Only these (and
    /// calls carrying an `idempotency-key` metadata entry) are retried and hedged.
    pub fn idempotent<I: IntoIterator<Item = S>, S: Into<String>>(mut self, paths: I) -> Self {
        self.idempotent.extend(paths.into_iter().map(Into::into));
        self
    }

    /// Guards calls with a circuit breaker.
    pub fn circuit_breaker(mut self, config: CircuitBreakerConfig) -> Self {
        self.breaker = Some(config);
        self
    }

    /// Limits concurrent calls; beyond, calls fail at once with `RESOURCE_EXHAUSTED`.
    pub fn bulkhead(mut self, max_concurrent: usize) -> Self {
        self.bulkhead = Some(max_concurrent);
        self
    }

    /// How long to wait for a connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The channel. Connections are made lazily, on the first call; a bad URL fails here, named.
    pub fn build(self) -> Result<ResilientChannel, Status> {
        let name = self.name.unwrap_or_else(|| self.urls.first().cloned().unwrap_or_default());
        if self.urls.is_empty() {
            return Err(Status::invalid_argument("give at least one server URL"));
        }
        let mut endpoints = Vec::new();
        for url in &self.urls {
            let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
                .map_err(|e| Status::invalid_argument(format!("server URL {url:?}: {e}")))?
                .connect_timeout(self.connect_timeout)
                .tcp_nodelay(true);
            endpoints.push((url.clone(), Endpoint { channel: endpoint.connect_lazy() }));
        }
        let breaker = self.breaker.map(|config| CircuitBreaker::new(name.clone(), config));
        let mut pipeline = self.pipeline.retry_when(RetryPredicate::idempotent());
        if let Some(breaker) = &breaker {
            pipeline = pipeline.circuit_breaker(breaker.clone());
        }
        if let Some(limit) = self.bulkhead {
            pipeline = pipeline.bulkhead(Bulkhead::new(name.clone(), BulkheadConfig::new(limit)));
        }
        let service =
            if endpoints.len() == 1 { pipeline.service(endpoints.remove(0).1) } else { pipeline.balanced(endpoints) }
                .map_err(|e| Status::invalid_argument(format!("pipeline setting {:?}: {}", e.key(), e.reason())))?;
        Ok(ResilientChannel { name: name.into(), service, idempotent: Arc::new(self.idempotent), breaker })
    }
}
