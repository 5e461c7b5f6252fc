//! The resilient JSON client: requests go through courier-resilience's pipeline (deadline -> retry -> hedge ->
//! circuit breaker -> attempt timeout -> bulkhead -> rate limit -> balancer) over reqwest.
//!
//! ```no_run
//! use std::time::Duration;
//! use courier_http::client::{CircuitBreakerConfig, HttpClient, RetryPolicy};
//!
//! #[derive(serde::Serialize)]
//! struct Charge { order_id: u64, cents: u64 }
//! #[derive(serde::Deserialize)]
//! struct Receipt { id: String }
//!
//! # #[tokio::main] async fn main() -> Result<(), courier_http::client::HttpError> {
//! let payments = HttpClient::builder("http://127.0.0.1:8081")
//!     .deadline(Duration::from_secs(2))
//!     .retry(RetryPolicy::budgeted())
//!     .circuit_breaker(CircuitBreakerConfig::failure_rate(0.5))
//!     .build()?;
//! let receipt: Receipt = payments
//!     .post("/charge")
//!     .json(&Charge { order_id: 7, cents: 4200 })
//!     .idempotency_key("order-7")
//!     .send_json()
//!     .await?;
//! # let _ = receipt.id; Ok(()) }
//! ```
//!
//! What is retried: idempotent methods (GET, PUT, DELETE, HEAD, OPTIONS) and requests with an idempotency key,
//! on the errors [`HttpError::is_retryable`] names (the server's `Retry-After` is honoured); change it with
//! [`HttpClientBuilder::retry_when`]. A 4xx never opens the breaker; 5xx, timeouts and connection failures do.
//! Every request carries `traceparent`: a child of [`trace::current`](crate::trace::current) (or of the parent
//! given with [`RequestBuilder::trace_parent`]), else a new root.

mod error;
mod request;
mod transport;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};

pub use courier_resilience::balance::BalanceConfig;
pub use courier_resilience::bulkhead::{Bulkhead, BulkheadConfig};
pub use courier_resilience::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitState, Window};
pub use courier_resilience::hedge::HedgeDelay;
pub use courier_resilience::rate_limit::{RateLimitConfig, RateLimiter};
pub use courier_resilience::retry::{RetryBudget, RetryPolicy, RetryPredicate};
pub use error::{HttpError, HttpErrorKind};
pub use request::{RequestBuilder, Response};
pub use transport::{Endpoint, HttpRequest, HttpResponse};

use courier_resilience::pipeline::{PipelineService, ResiliencePipeline};

/// Something that becomes the client's circuit breaker: a [`CircuitBreakerConfig`] (a breaker named after the
/// client) or a [`CircuitBreaker`] (shared with others, such as a bus consumer gate).
pub trait IntoCircuitBreaker {
    /// The breaker, named `name` if it is made here.
    fn into_breaker(self, name: &str) -> CircuitBreaker;
}

impl IntoCircuitBreaker for CircuitBreakerConfig {
    fn into_breaker(self, name: &str) -> CircuitBreaker {
        CircuitBreaker::new(name, self)
    }
}

impl IntoCircuitBreaker for CircuitBreaker {
    fn into_breaker(self, _: &str) -> CircuitBreaker {
        self
    }
}

/// Something that becomes the client's bulkhead: a maximum of concurrent calls (`usize`), a [`BulkheadConfig`]
/// or a shared [`Bulkhead`].
pub trait IntoBulkhead {
    /// The bulkhead, named `name` if it is made here.
    fn into_bulkhead(self, name: &str) -> Bulkhead;
}

impl IntoBulkhead for usize {
    fn into_bulkhead(self, name: &str) -> Bulkhead {
        Bulkhead::new(name, BulkheadConfig::new(self))
    }
}

impl IntoBulkhead for BulkheadConfig {
    fn into_bulkhead(self, name: &str) -> Bulkhead {
        Bulkhead::new(name, self)
    }
}

impl IntoBulkhead for Bulkhead {
    fn into_bulkhead(self, _: &str) -> Bulkhead {
        self
    }
}

/// Makes a named protection once the client's name is known.
type MakeNamed<T> = Box<dyn FnOnce(&str) -> T + Send>;

struct Inner {
    name: String,
    bases: Vec<String>,
    headers: HeaderMap,
    breaker: Option<CircuitBreaker>,
    bulkhead: Option<Bulkhead>,
}

/// A resilient HTTP/JSON client for one service (one base URL, or several balanced). A cheap `Clone` handle:
/// clones share the connection pool, the breaker, the bulkhead and the retry budget.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
    service: PipelineService<HttpRequest, HttpResponse, HttpError>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").field("name", &self.inner.name).field("bases", &self.inner.bases).finish()
    }
}

impl HttpClient {
    /// A builder for a client of the service at `base_url` (such as `http://127.0.0.1:8081`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use courier_http::client::HttpClient;
    ///
    /// let client = HttpClient::builder("http://127.0.0.1:8081").deadline(Duration::from_secs(1)).build().unwrap();
    /// assert_eq!(client.name(), "127.0.0.1:8081");
    /// ```
    pub fn builder(base_url: impl Into<String>) -> HttpClientBuilder {
        HttpClientBuilder::new(vec![base_url.into()])
    }

    /// A builder for a client balancing over several replicas (power of two choices, passive ejection).
    pub fn balanced<I, U>(base_urls: I) -> HttpClientBuilder
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        HttpClientBuilder::new(base_urls.into_iter().map(Into::into).collect())
    }

    /// A request with `method` to `path` (starting with `/`, query allowed).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        RequestBuilder::new(self.clone(), method, path)
    }

    /// A GET request.
    pub fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    /// A POST request.
    pub fn post(&self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path)
    }

    /// A PUT request.
    pub fn put(&self, path: &str) -> RequestBuilder {
        self.request(Method::PUT, path)
    }

    /// A PATCH request.
    pub fn patch(&self, path: &str) -> RequestBuilder {
        self.request(Method::PATCH, path)
    }

    /// A DELETE request.
    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.request(Method::DELETE, path)
    }

    /// The client's name (its breaker's and bulkhead's name, in metrics).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The circuit breaker, if the client has one (watch its state, force it open...).
    pub fn circuit_breaker(&self) -> Option<&CircuitBreaker> {
        self.inner.breaker.as_ref()
    }

    /// The bulkhead, if the client has one.
    pub fn bulkhead(&self) -> Option<&Bulkhead> {
        self.inner.bulkhead.as_ref()
    }
}

/// Builds an [`HttpClient`]; see [`HttpClient::builder`]. Layers left unset are left out.
pub struct HttpClientBuilder {
    bases: Vec<String>,
    name: Option<String>,
    headers: HeaderMap,
    connect_timeout: Duration,
    pipeline: ResiliencePipeline<HttpRequest>,
    breaker_spec: Option<MakeNamed<CircuitBreaker>>,
    bulkhead_spec: Option<MakeNamed<Bulkhead>>,
    rate_limit: Option<RateLimitConfig>,
    predicate: Option<RetryPredicate<HttpRequest>>,
    error: Option<HttpError>,
}

impl fmt::Debug for HttpClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClientBuilder")
            .field("bases", &self.bases)
            .field("name", &self.name)
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl HttpClientBuilder {
    fn new(bases: Vec<String>) -> Self {
        Self {
            bases,
            name: None,
            headers: HeaderMap::new(),
            connect_timeout: Duration::from_secs(5),
            pipeline: ResiliencePipeline::new(""),
            breaker_spec: None,
            bulkhead_spec: None,
            rate_limit: None,
            predicate: None,
            error: None,
        }
    }

    /// Names the client (default: the first base URL's host and port).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Bounds each whole call, retries and backoffs included.
    pub fn deadline(mut self, total: Duration) -> Self {
        self.pipeline = self.pipeline.deadline(total);
        self
    }

    /// Bounds each attempt.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.pipeline = self.pipeline.attempt_timeout(timeout);
        self
    }

    /// Retries as `policy` says (only safe requests: see [`retry_when`](Self::retry_when)).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.pipeline = self.pipeline.retry(policy);
        self
    }

    /// Which requests may be retried and hedged (default: idempotent methods and requests with an
    /// idempotency key).
    pub fn retry_when(mut self, predicate: RetryPredicate<HttpRequest>) -> Self {
        self.predicate = Some(predicate);
        self
    }

    /// Sends a second attempt (to another replica when balanced) if the first has not answered after `delay`.
    pub fn hedge(mut self, delay: HedgeDelay) -> Self {
        self.pipeline = self.pipeline.hedge(delay);
        self
    }

    /// Guards calls with a circuit breaker (a config, or a shared [`CircuitBreaker`]).
    ///
    /// Pair it with an [`attempt_timeout`](Self::attempt_timeout): that timeout runs inside the breaker, so a
    /// hanging dependency is counted as failing. The [`deadline`](Self::deadline) runs outside it (it bounds
    /// retries too), and a call it cuts off is not counted: the breaker cannot tell it from a cancelled hedge.
    pub fn circuit_breaker(mut self, breaker: impl IntoCircuitBreaker + Send + 'static) -> Self {
        self.breaker_spec = Some(Box::new(move |name| breaker.into_breaker(name)));
        self
    }

    /// Limits concurrent calls (a number, a [`BulkheadConfig`] or a shared [`Bulkhead`]).
    pub fn bulkhead(mut self, bulkhead: impl IntoBulkhead + Send + 'static) -> Self {
        self.bulkhead_spec = Some(Box::new(move |name| bulkhead.into_bulkhead(name)));
        self
    }

    /// Limits the rate of calls.
    pub fn rate_limit(mut self, config: RateLimitConfig) -> Self {
        self.rate_limit = Some(config);
        self
    }

    /// Passive ejection settings for a balanced client.
    pub fn balance(mut self, config: BalanceConfig) -> Self {
        self.pipeline = self.pipeline.balance(config);
        self
    }

    /// Sends `name: value` on every request.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(n), Ok(v)) => {
                self.headers.insert(n, v);
            }
            _ => {
                self.error.get_or_insert(HttpError::new(HttpErrorKind::Config, format!("invalid header {name:?}")));
            }
        }
        self
    }

    /// How long to wait for a TCP connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The client; fails on an invalid base URL or layer setting, naming it.
    pub fn build(self) -> Result<HttpClient, HttpError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let config = |msg: String| HttpError::new(HttpErrorKind::Config, msg);
        if self.bases.is_empty() {
            return Err(config("no base URL: give at least one".into()));
        }
        let mut first_host = None;
        for base in &self.bases {
            let url = reqwest::Url::parse(base).map_err(|e| config(format!("base URL {base:?}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(config(format!("base URL {base:?}: expected http://host[:port] or https://...")));
            }
            first_host.get_or_insert_with(|| match url.port() {
                Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
                None => url.host_str().unwrap_or_default().to_owned(),
            });
        }
        let name = self.name.or(first_host).unwrap_or_default();
        let client = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .map_err(|e| config("the HTTP client could not be built".into()).with_source(e))?;
        let breaker = self.breaker_spec.map(|f| f(&name));
        let bulkhead = self.bulkhead_spec.map(|f| f(&name));
        let mut pipeline = self.pipeline;
        if let Some(b) = &breaker {
            pipeline = pipeline.circuit_breaker(b.clone());
        }
        if let Some(b) = &bulkhead {
            pipeline = pipeline.bulkhead(b.clone());
        }
        if let Some(r) = self.rate_limit {
            pipeline = pipeline.rate_limit(RateLimiter::new(name.clone(), r));
        }
        let pipeline = pipeline.retry_when(self.predicate.unwrap_or_else(RetryPredicate::idempotent));
        let built = if self.bases.len() == 1 {
            pipeline.service(Endpoint::new(client, &self.bases[0]))
        } else {
            let endpoints = self.bases.iter().map(|b| (b.clone(), Endpoint::new(client.clone(), b)));
            pipeline.balanced(endpoints)
        };
        let service = built.map_err(|e| config(format!("pipeline setting {:?}: {}", e.key(), e.reason())))?;
        let inner = Inner { name, bases: self.bases, headers: self.headers, breaker, bulkhead };
        Ok(HttpClient { inner: Arc::new(inner), service })
    }
}
