use std::fmt;
use std::sync::Arc;

/// Tells whether a request is safe to send twice: its method is idempotent (GET, PUT, DELETE...) or it carries
/// an idempotency key the server deduplicates on. Implemented for `http::Request` with the `http` feature.
pub trait Idempotency {
    /// Whether sending the request twice has the same effect as once.
    fn is_idempotent(&self) -> bool;
    /// The request's idempotency key, if it has one.
    fn idempotency_key(&self) -> Option<&str> {
        None
    }
}

#[cfg(feature = "http")]
impl<B> Idempotency for http::Request<B> {
    fn is_idempotent(&self) -> bool {
        self.method().is_idempotent()
    }
    fn idempotency_key(&self) -> Option<&str> {
        self.headers().get("idempotency-key").and_then(|v| v.to_str().ok())
    }
}

/// Decides which requests may be retried (or hedged): the hook that keeps a retry from charging a card twice.
///
/// ```
/// use courier_resilience::retry::{Idempotency, RetryPredicate};
///
/// struct Call { method: &'static str, key: Option<String> }
/// impl Idempotency for Call {
///     fn is_idempotent(&self) -> bool { matches!(self.method, "GET" | "PUT" | "DELETE") }
///     fn idempotency_key(&self) -> Option<&str> { self.key.as_deref() }
/// }
///
/// let safe = RetryPredicate::<Call>::idempotent();
/// assert!(safe.allows(&Call { method: "GET", key: None }));
/// assert!(safe.allows(&Call { method: "POST", key: Some("order-1".into()) }));
/// assert!(!safe.allows(&Call { method: "POST", key: None }));
/// ```
pub struct RetryPredicate<Req> {
    check: Arc<dyn Fn(&Req) -> bool + Send + Sync>,
}

impl<Req> RetryPredicate<Req> {
    /// Retries requests for which `f` returns true.
    pub fn from_fn(f: impl Fn(&Req) -> bool + Send + Sync + 'static) -> Self {
        Self { check: Arc::new(f) }
    }

    /// Retries every request (for calls that are all reads).
    pub fn always() -> Self {
        Self::from_fn(|_| true)
    }

    /// Retries nothing.
    pub fn never() -> Self {
        Self::from_fn(|_| false)
    }

    /// Whether `req` may be sent again.
    pub fn allows(&self, req: &Req) -> bool {
        (self.check)(req)
    }
}

impl<Req: Idempotency> RetryPredicate<Req> {
    /// Retries idempotent requests and requests with an idempotency key.
    pub fn idempotent() -> Self {
        Self::from_fn(|req: &Req| req.is_idempotent() || req.idempotency_key().is_some())
    }
}

impl<Req> Clone for RetryPredicate<Req> {
    fn clone(&self) -> Self {
        Self { check: self.check.clone() }
    }
}

impl<Req> fmt::Debug for RetryPredicate<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RetryPredicate")
    }
}
