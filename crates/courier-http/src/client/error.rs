//! [`HttpError`]: the one error of the client, with a kind that answers questions.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use courier_resilience::{CallError, ErrorKind, ResilienceError};
use http::{HeaderMap, StatusCode};

use crate::problem::Problem;

/// What went wrong with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HttpErrorKind {
    /// The call's deadline or an attempt's timeout passed (or the transport timed out).
    Timeout,
    /// The circuit breaker is open: the call was not made.
    CircuitOpen,
    /// The bulkhead was full: the call was not made.
    BulkheadFull,
    /// The client's rate limit was reached: the call was not made.
    RateLimited,
    /// Every endpoint is ejected: the call was not made.
    NoHealthyEndpoint,
    /// No connection could be made (refused, unreachable, DNS).
    Connect,
    /// The connection failed during the call (reset, closed before the response).
    Transport,
    /// The server answered 5xx.
    Server,
    /// The server answered 4xx (its RFC 9457 problem, if it sent one, is in [`HttpError::problem`]).
    Client,
    /// The response body was not the JSON expected.
    Decode,
    /// The request or the client was badly built (invalid URL, path, header, body that cannot be serialized).
    Config,
}

/// The error of an [`HttpClient`](super::HttpClient) call.
///
/// ```
/// use courier_http::client::{HttpError, HttpErrorKind};
/// use http::StatusCode;
///
/// let err = HttpError::from_status(StatusCode::SERVICE_UNAVAILABLE, &http::HeaderMap::new(), b"".as_slice().into());
/// assert_eq!(err.kind(), HttpErrorKind::Server);
/// assert!(err.is_retryable() && err.is_server_error());
/// assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
/// ```
pub struct HttpError {
    kind: HttpErrorKind,
    message: String,
    status: Option<StatusCode>,
    problem: Option<Box<Problem>>,
    body: Bytes,
    retry_after: Option<Duration>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl HttpError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: HttpErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            status: None,
            problem: None,
            body: Bytes::new(),
            retry_after: None,
            source: None,
        }
    }

    /// Keeps `source` as the cause.
    pub fn with_source(mut self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The error for an error status: `Server` for 5xx, `Client` for 4xx (with the problem body parsed),
    /// `Retry-After` (in seconds) kept.
    pub fn from_status(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Self {
        let kind = if status.is_server_error() { HttpErrorKind::Server } else { HttpErrorKind::Client };
        let problem = Problem::from_json(&body).map(Box::new);
        let retry_after = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let what = match &problem {
            Some(p) => p.to_string(),
            None => status.to_string(),
        };
        let message = match kind {
            HttpErrorKind::Server => format!("upstream failed with {what}; retryable if the call is idempotent"),
            _ => format!("request refused with {what}; fix the request before sending it again"),
        };
        Self { kind, message, status: Some(status), problem, body, retry_after, source: None }
    }

    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        let (kind, msg) = if e.is_timeout() {
            (HttpErrorKind::Timeout, "the HTTP request timed out")
        } else if e.is_connect() {
            (HttpErrorKind::Connect, "could not connect to the server; is it running and reachable?")
        } else if e.is_builder() {
            (HttpErrorKind::Config, "the request could not be built")
        } else {
            (HttpErrorKind::Transport, "the connection failed before a response arrived")
        };
        Self::new(kind, msg).with_source(e)
    }

    pub(crate) fn from_resilience(e: ResilienceError<HttpError>) -> Self {
        let layer = e.layer().map(|l| format!(" '{l}'")).unwrap_or_default();
        let retry_after = e.retry_after();
        let (kind, message) = match e.kind() {
            ErrorKind::Service => {
                return e.into_inner().unwrap_or_else(|| Self::new(HttpErrorKind::Transport, "call failed"));
            }
            ErrorKind::DeadlineExceeded => (HttpErrorKind::Timeout, "the call's deadline passed".to_owned()),
            ErrorKind::AttemptTimeout => (HttpErrorKind::Timeout, "the attempt timed out".to_owned()),
            ErrorKind::CircuitOpen => {
                (HttpErrorKind::CircuitOpen, format!("circuit breaker{layer} is open: failing fast"))
            }
            ErrorKind::BulkheadFull => {
                (HttpErrorKind::BulkheadFull, format!("bulkhead{layer} is full: too many calls in flight"))
            }
            ErrorKind::RateLimited => (HttpErrorKind::RateLimited, format!("rate limit{layer} reached")),
            ErrorKind::NoHealthyEndpoint => {
                (HttpErrorKind::NoHealthyEndpoint, "every endpoint is ejected as unhealthy".to_owned())
            }
            _ => (HttpErrorKind::Transport, e.to_string()),
        };
        let mut out = Self::new(kind, message);
        out.retry_after = retry_after;
        out
    }

    /// What went wrong.
    pub fn kind(&self) -> HttpErrorKind {
        self.kind
    }

    /// The response status, for `Server` and `Client` errors.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The RFC 9457 problem the server sent, if its error body was one.
    pub fn problem(&self) -> Option<&Problem> {
        self.problem.as_deref()
    }

    /// The error response's body (empty for errors without a response).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// A timeout (deadline, attempt or transport).
    pub fn is_timeout(&self) -> bool {
        self.kind == HttpErrorKind::Timeout
    }

    /// The circuit breaker refused the call.
    pub fn is_circuit_open(&self) -> bool {
        self.kind == HttpErrorKind::CircuitOpen
    }

    /// A layer refused the call without making it (open breaker, full bulkhead, rate limit, no endpoint).
    pub fn is_rejected(&self) -> bool {
        matches!(
            self.kind,
            HttpErrorKind::CircuitOpen
                | HttpErrorKind::BulkheadFull
                | HttpErrorKind::RateLimited
                | HttpErrorKind::NoHealthyEndpoint
        )
    }

    /// No connection could be made.
    pub fn is_connect(&self) -> bool {
        self.kind == HttpErrorKind::Connect
    }

    /// The server answered 5xx.
    pub fn is_server_error(&self) -> bool {
        self.kind == HttpErrorKind::Server
    }

    /// The server answered 4xx.
    pub fn is_client_error(&self) -> bool {
        self.kind == HttpErrorKind::Client
    }

    /// Whether sending the call again may succeed: timeouts, connection failures, 5xx (but 501), 408 and 429.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            HttpErrorKind::Timeout | HttpErrorKind::Connect | HttpErrorKind::Transport => true,
            HttpErrorKind::BulkheadFull | HttpErrorKind::RateLimited => true,
            HttpErrorKind::Server => self.status != Some(StatusCode::NOT_IMPLEMENTED),
            HttpErrorKind::Client => {
                matches!(self.status, Some(StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS))
            }
            _ => false,
        }
    }

    /// How long the server (its `Retry-After`) or a layer (an open breaker) says to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Debug for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("status", &self.status)
            .field("problem", &self.problem)
            .field("retry_after", &self.retry_after)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl CallError for HttpError {
    fn is_retryable(&self) -> bool {
        HttpError::is_retryable(self)
    }
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}
