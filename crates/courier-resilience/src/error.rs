//! The one error type of this crate: [`ResilienceError`], with an [`ErrorKind`] that can be asked questions, and
//! the traits that let layers stack without nesting errors ([`CallError`], [`IntoResilienceError`]).

use std::convert::Infallible;
use std::fmt;
use std::time::Duration;

/// An error returned by the innermost service (the transport): tells the layers above whether the call is worth
/// retrying and whether the server asked for a pause (`Retry-After`).
///
/// Both methods have defaults, so for most error types the implementation is one line:
///
/// ```
/// use courier_resilience::CallError;
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("payments unavailable")]
/// struct PaymentsDown;
///
/// impl CallError for PaymentsDown {}
/// ```
pub trait CallError: std::error::Error + Send + Sync + 'static {
    /// Whether trying again may succeed (default: yes). Return `false` for errors that will not change (a 4xx).
    fn is_retryable(&self) -> bool {
        true
    }

    /// How long the server asked callers to wait before trying again (an HTTP `Retry-After` or a gRPC
    /// `RetryInfo`), if it said.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

impl CallError for std::io::Error {
    fn is_retryable(&self) -> bool {
        use std::io::ErrorKind as K;
        !matches!(self.kind(), K::InvalidInput | K::InvalidData | K::PermissionDenied | K::Unsupported)
    }
}

impl CallError for Infallible {}

/// What went wrong, as a question-friendly kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The service itself failed; the error is kept as the source.
    Service,
    /// The whole call's deadline passed.
    DeadlineExceeded,
    /// One attempt took longer than the per-attempt timeout.
    AttemptTimeout,
    /// The circuit breaker is open: the call was not made.
    CircuitOpen,
    /// The bulkhead was full (all slots busy and the wait queue full, or the wait too long): the call was not made.
    BulkheadFull,
    /// The rate limit was reached: the call was not made.
    RateLimited,
    /// Every endpoint behind the balancer is ejected or unhealthy: the call was not made.
    NoHealthyEndpoint,
}

impl ErrorKind {
    /// A stable lowercase name, for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::AttemptTimeout => "attempt_timeout",
            Self::CircuitOpen => "circuit_open",
            Self::BulkheadFull => "bulkhead_full",
            Self::RateLimited => "rate_limited",
            Self::NoHealthyEndpoint => "no_healthy_endpoint",
        }
    }
}

/// The error of every layer in this crate: either the inner service's own error `E` (kept as the source) or a
/// decision of a layer (a timeout, an open circuit, a rejection).
///
/// ```
/// use courier_resilience::{ErrorKind, ResilienceError};
///
/// let err: ResilienceError<std::io::Error> = ResilienceError::new(ErrorKind::CircuitOpen);
/// assert!(err.is_circuit_open() && err.is_rejected() && !err.is_retryable());
/// ```
pub struct ResilienceError<E> {
    kind: ErrorKind,
    inner: Option<E>,
    retry_after: Option<Duration>,
    layer: Option<String>,
}

impl<E> ResilienceError<E> {
    /// An error of a layer (not of the service).
    pub fn new(kind: ErrorKind) -> Self {
        Self { kind, inner: None, retry_after: None, layer: None }
    }

    /// Wraps the inner service's error.
    pub fn service(error: E) -> Self {
        Self { kind: ErrorKind::Service, inner: Some(error), retry_after: None, layer: None }
    }

    /// Adds a hint of when trying again makes sense.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Names the layer instance that decided (the circuit breaker's or the limiter's name).
    pub fn with_layer(mut self, name: impl Into<String>) -> Self {
        self.layer = Some(name.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The name of the layer instance that decided, if it has one.
    pub fn layer(&self) -> Option<&str> {
        self.layer.as_deref()
    }

    /// A deadline or a per-attempt timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ErrorKind::DeadlineExceeded | ErrorKind::AttemptTimeout)
    }

    /// The circuit breaker refused the call.
    pub fn is_circuit_open(&self) -> bool {
        self.kind == ErrorKind::CircuitOpen
    }

    /// A layer refused the call without making it (open circuit, full bulkhead, rate limit, no healthy endpoint).
    pub fn is_rejected(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::CircuitOpen | ErrorKind::BulkheadFull | ErrorKind::RateLimited | ErrorKind::NoHealthyEndpoint
        )
    }

    /// The inner service's error, if this is one.
    pub fn inner(&self) -> Option<&E> {
        self.inner.as_ref()
    }

    /// Takes the inner service's error, if this is one.
    pub fn into_inner(self) -> Option<E> {
        self.inner
    }
}

impl<E: CallError> ResilienceError<E> {
    /// Whether trying again may succeed: the service's own answer for its errors; yes for an attempt timeout, a
    /// full bulkhead and a rate limit; no for a passed deadline, an open circuit or no healthy endpoint.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            ErrorKind::Service => self.inner.as_ref().is_some_and(CallError::is_retryable),
            ErrorKind::AttemptTimeout | ErrorKind::BulkheadFull | ErrorKind::RateLimited => true,
            ErrorKind::DeadlineExceeded | ErrorKind::CircuitOpen | ErrorKind::NoHealthyEndpoint => false,
        }
    }

    /// When trying again makes sense, if known: the service's `Retry-After`, or the time until a token or until
    /// the circuit half-opens.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after.or_else(|| self.inner.as_ref().and_then(CallError::retry_after))
    }
}

impl<E: fmt::Debug> fmt::Debug for ResilienceError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResilienceError")
            .field("kind", &self.kind)
            .field("inner", &self.inner)
            .field("retry_after", &self.retry_after)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<E: fmt::Display> fmt::Display for ResilienceError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layer = self.layer.as_deref().map(|l| format!(" '{l}'")).unwrap_or_default();
        match (self.kind, &self.inner) {
            (ErrorKind::Service, Some(e)) => write!(f, "service call failed: {e}"),
            (ErrorKind::Service, None) => f.write_str("service call failed"),
            (ErrorKind::DeadlineExceeded, _) => {
                f.write_str("the call's deadline passed; raise the deadline or make the dependency faster")
            }
            (ErrorKind::AttemptTimeout, _) => f.write_str("an attempt timed out; it may be retried"),
            (ErrorKind::CircuitOpen, _) => {
                write!(f, "circuit breaker{layer} is open: failing fast until the dependency recovers")
            }
            (ErrorKind::BulkheadFull, _) => write!(f, "bulkhead{layer} is full: too many concurrent calls"),
            (ErrorKind::RateLimited, _) => write!(f, "rate limit{layer} reached: slow down"),
            (ErrorKind::NoHealthyEndpoint, _) => f.write_str("no healthy endpoint: every endpoint is ejected"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ResilienceError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.as_ref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// An error a layer's inner service may return: a transport's own [`CallError`] or the [`ResilienceError`] of a
/// layer below. Lets layers stack without nesting (`ResilienceError<ResilienceError<E>>` never happens).
pub trait IntoResilienceError: Send + 'static {
    /// The transport's error type.
    type Source: CallError;
    /// Converts into the common error.
    fn into_resilience(self) -> ResilienceError<Self::Source>;
}

impl<E: CallError> IntoResilienceError for E {
    type Source = E;
    fn into_resilience(self) -> ResilienceError<E> {
        ResilienceError::service(self)
    }
}

impl<E: CallError> IntoResilienceError for ResilienceError<E> {
    type Source = E;
    fn into_resilience(self) -> ResilienceError<E> {
        self
    }
}

/// The common error of a layer over a service `S` taking `Req`.
pub type ErrorOf<S, Req> = ResilienceError<<<S as tower::Service<Req>>::Error as IntoResilienceError>::Source>;

/// The boxed response future of the layers whose futures are `async` blocks.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_answer_questions() {
        let e = ResilienceError::service(std::io::Error::other("down"));
        assert!(e.is_retryable() && !e.is_rejected() && !e.is_timeout());
        assert!(std::error::Error::source(&e).is_some());
        let e: ResilienceError<std::io::Error> = ResilienceError::new(ErrorKind::AttemptTimeout);
        assert!(e.is_timeout() && e.is_retryable());
        let e: ResilienceError<std::io::Error> = ResilienceError::new(ErrorKind::DeadlineExceeded);
        assert!(e.is_timeout() && !e.is_retryable());
        let e: ResilienceError<std::io::Error> =
            ResilienceError::new(ErrorKind::RateLimited).with_retry_after(Duration::from_secs(1));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    }
}
