//! Idempotency keys at the edge: a POST repeated with the same `Idempotency-Key` gets the first response again
//! instead of running twice.
//!
//! For a request carrying the header, the [`IdempotencyLayer`] claims `method + path + key` in its
//! [`IdempotencyStore`]:
//! - the first request runs; a response below 500 is stored (status, the kept headers, body) for the TTL; a 5xx
//!   (or a dropped request) frees the key so a retry runs again;
//! - a repeat after it finished gets the stored response, with `idempotent-replayed: true`;
//! - a concurrent duplicate waits (polling the store) up to [`wait`](IdempotencyLayer::wait) for the first to
//!   finish, then replays it; if it has not finished by then, it gets `409 Conflict` (a problem, with
//!   `Retry-After: 1`);
//! - a malformed key (empty, over 255 characters, not visible ASCII) gets `400`; a failing store `503`.
//!
//! Requests without the header pass straight through.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use axum::{Router, routing::post};
//! use courier_http::server::idempotency::{IdempotencyLayer, MemoryIdempotencyStore};
//!
//! let app: Router = Router::new()
//!     .route("/charge", post(|| async { "charged" }))
//!     .layer(IdempotencyLayer::new(Arc::new(MemoryIdempotencyStore::new())).wait(Duration::from_secs(2)));
//! ```

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::{HeaderName, HeaderValue, StatusCode};
use tower::{Layer, Service};

#[cfg(feature = "postgres")]
pub use postgres::PostgresIdempotencyStore;
#[cfg(feature = "redis")]
pub use redis::RedisIdempotencyStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteIdempotencyStore;
pub use store::{Begin, IdempotencyStore, MemoryIdempotencyStore, StoreError, StoredResponse};

use crate::problem::Problem;

/// The request header carrying the key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The header set on a replayed response.
pub const REPLAYED: &str = "idempotent-replayed";

#[derive(Debug, Clone)]
struct Settings {
    wait: Duration,
    lease: Duration,
    ttl: Duration,
    max_body: usize,
    keep: Vec<HeaderName>,
}

/// The idempotency middleware (see the [module docs](self)).
#[derive(Clone)]
pub struct IdempotencyLayer {
    store: Arc<dyn IdempotencyStore>,
    settings: Arc<Settings>,
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl IdempotencyLayer {
    /// Keys in `store`; duplicates wait up to 5 s; a claim lapses after 60 s (a crashed holder); responses are
    /// kept 24 h, bodies up to 1 MiB; kept headers: `content-type`, `location`, `etag`, `retry-after`.
    pub fn new(store: Arc<dyn IdempotencyStore>) -> Self {
        let keep = ["content-type", "location", "etag", "retry-after"].map(HeaderName::from_static).to_vec();
        let settings = Settings {
            wait: Duration::from_secs(5),
            lease: Duration::from_secs(60),
            ttl: Duration::from_secs(24 * 3600),
            max_body: 1024 * 1024,
            keep,
        };
        Self { store, settings: Arc::new(settings) }
    }

    fn edit(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        f(Arc::make_mut(&mut self.settings));
        self
    }

    /// How long a concurrent duplicate waits for the first request before getting `409` (zero: at once).
    pub fn wait(self, wait: Duration) -> Self {
        self.edit(|s| s.wait = wait)
    }

    /// How long a claim holds before another request may take the key over (its holder presumably crashed).
    pub fn lease(self, lease: Duration) -> Self {
        self.edit(|s| s.lease = lease)
    }

    /// How long a stored response is replayed.
    pub fn ttl(self, ttl: Duration) -> Self {
        self.edit(|s| s.ttl = ttl)
    }

    /// Largest response body stored; a larger response is returned but not stored (a repeat runs again).
    pub fn max_body(self, bytes: usize) -> Self {
        self.edit(|s| s.max_body = bytes)
    }

    /// Also stores and replays header `name`.
    pub fn keep_header(self, name: HeaderName) -> Self {
        self.edit(|s| s.keep.push(name))
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;
    fn layer(&self, inner: S) -> Idempotency<S> {
        Idempotency { inner, store: self.store.clone(), settings: self.settings.clone() }
    }
}

/// The service of [`IdempotencyLayer`].
#[derive(Clone)]
pub struct Idempotency<S> {
    inner: S,
    store: Arc<dyn IdempotencyStore>,
    settings: Arc<Settings>,
}

impl<S> fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl<S> Service<Request> for Idempotency<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(key) = req.headers().get(IDEMPOTENCY_KEY).cloned() else {
            return Box::pin(inner.call(req));
        };
        let (store, settings) = (self.store.clone(), self.settings.clone());
        Box::pin(async move {
            let key = match valid_key(&key) {
                Some(k) => format!("{} {} {k}", req.method(), req.uri().path()),
                None => {
                    return Ok(Problem::bad_request(
                        "Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID is a good choice)",
                    )
                    .into_response());
                }
            };
            match claim(&*store, &key, &settings).await {
                Ok(None) => {}
                Ok(Some(stored)) => return Ok(replay(stored)),
                Err(resp) => return Ok(*resp),
            }
            let mut claim = Claim { store: store.clone(), key: Some(key.clone()) };
            let resp = inner.call(req).await?;
            if resp.status().is_server_error() {
                return Ok(resp); // `claim` frees the key on drop
            }
            let too_big = axum::body::HttpBody::size_hint(resp.body()).lower() > settings.max_body as u64;
            if too_big {
                tracing::debug!(%key, "response too large to store for idempotent replay");
                return Ok(resp);
            }
            let (parts, body) = resp.into_parts();
            let Ok(body) = axum::body::to_bytes(body, settings.max_body).await else {
                return Ok(
                    Problem::internal("the response could not be stored for idempotent replay; retry").into_response()
                );
            };
            let headers = parts
                .headers
                .iter()
                .filter(|(n, _)| settings.keep.contains(n))
                .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect();
            let stored = StoredResponse { status: parts.status.as_u16(), headers, body: body.clone() };
            match store.complete(&key, &stored, settings.ttl).await {
                Ok(()) => claim.key = None,
                Err(e) => tracing::warn!(%key, error = %e, "could not store the response for idempotent replay"),
            }
            Ok(Response::from_parts(parts, Body::from(body)))
        })
    }
}

fn valid_key(key: &HeaderValue) -> Option<&str> {
    let s = key.to_str().ok()?;
    (!s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic())).then_some(s)
}

/// Claims `key`: `Ok(None)` when this request holds it, `Ok(Some(_))` to replay, `Err(_)` to answer at once.
async fn claim(
    store: &dyn IdempotencyStore,
    key: &str,
    settings: &Settings,
) -> Result<Option<StoredResponse>, Box<Response>> {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match store.begin(key, settings.lease).await {
            Ok(Begin::Started) => return Ok(None),
            Ok(Begin::Completed(stored)) => return Ok(Some(stored)),
            Ok(Begin::InProgress) => {
                let waited = started.elapsed();
                if waited >= settings.wait {
                    let mut resp = Problem::conflict(
                        "a request with this Idempotency-Key is still being processed; retry after it finishes",
                    )
                    .into_response();
                    resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return Err(Box::new(resp));
                }
                tokio::time::sleep(pause.min(settings.wait - waited)).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => {
                tracing::error!(error = %e, "idempotency store unavailable");
                let problem = Problem::unavailable("the idempotency store is unavailable; retry later");
                return Err(Box::new(problem.into_response()));
            }
        }
    }
}

fn replay(stored: StoredResponse) -> Response {
    let mut resp = Response::new(Body::from(stored.body));
    *resp.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    for (name, value) in stored.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            resp.headers_mut().append(n, v);
        }
    }
    resp.headers_mut().insert(REPLAYED, HeaderValue::from_static("true"));
    resp
}

/// Frees the key if the request ends without storing a response (a 5xx, an error, or the caller went away).
struct Claim {
    store: Arc<dyn IdempotencyStore>,
    key: Option<String>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let (Some(key), Ok(rt)) = (self.key.take(), tokio::runtime::Handle::try_current()) {
            let store = self.store.clone();
            rt.spawn(async move {
                if let Err(e) = store.release(&key).await {
                    tracing::warn!(%key, error = %e, "could not free the idempotency key");
                }
            });
        }
    }
}
