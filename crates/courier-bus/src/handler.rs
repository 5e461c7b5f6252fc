//! Message handlers and the error they return.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use courier_core::{Envelope, Message};

use crate::Context;

/// A boxed, sendable future (what handlers and middleware return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whether a failure may go away on a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// May succeed later (a timeout, a dependency down): retried per the retry policy.
    Transient,
    /// Will never succeed (invalid data, a business rule): dead-lettered at once, without retries.
    Permanent,
    /// The message could not be decoded: dead-lettered at once.
    Undecodable,
}

impl FailureKind {
    /// The name written to the dead-letter headers.
    pub fn as_str(&self) -> &'static str {
        match self {
            FailureKind::Transient => "transient",
            FailureKind::Permanent => "permanent",
            FailureKind::Undecodable => "undecodable",
        }
    }
}

/// The error a handler returns. Any error converts into it with `?` (as a transient failure); use
/// [`HandlerError::permanent`] for failures no retry can fix.
///
/// Like `anyhow::Error`, it deliberately does not implement `std::error::Error`, so that every error type converts
/// into it.
pub struct HandlerError {
    kind: FailureKind,
    error: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl HandlerError {
    /// A failure that may go away on a retry.
    pub fn transient(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self { kind: FailureKind::Transient, error: error.into() }
    }

    /// A failure no retry can fix: the message goes straight to the dead-letter queue.
    pub fn permanent(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self { kind: FailureKind::Permanent, error: error.into() }
    }

    pub(crate) fn undecodable(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self { kind: FailureKind::Undecodable, error: error.into() }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// Whether retrying may help.
    pub fn is_transient(&self) -> bool {
        self.kind == FailureKind::Transient
    }

    /// The underlying error.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HandlerError({}: {:?})", self.kind.as_str(), self.error)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl<E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::transient(error)
    }
}

/// An async function that handles one message type: `async fn(M, Context) -> Result<(), HandlerError>`.
///
/// Implemented for every such function and closure; closures capture shared state by `Clone`.
pub trait Handler<M: Message>: Clone + Send + Sync + 'static {
    /// Handles one message.
    fn call(&self, message: M, ctx: Context) -> BoxFuture<'static, Result<(), HandlerError>>;
}

impl<M, F, Fut> Handler<M> for F
where
    M: Message,
    F: Fn(M, Context) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn call(&self, message: M, ctx: Context) -> BoxFuture<'static, Result<(), HandlerError>> {
        Box::pin((self)(message, ctx))
    }
}

/// A handler with its message type erased: decodes the body, then calls the typed handler.
pub(crate) trait ErasedHandler: Send + Sync + 'static {
    fn call(&self, ctx: &Context) -> BoxFuture<'static, Result<(), HandlerError>>;
}

pub(crate) struct Typed<M, H> {
    handler: H,
    _message: std::marker::PhantomData<fn() -> M>,
}

impl<M, H> Typed<M, H> {
    pub(crate) fn new(handler: H) -> Self {
        Self { handler, _message: std::marker::PhantomData }
    }
}

impl<M: Message, H: Handler<M>> ErasedHandler for Typed<M, H> {
    fn call(&self, ctx: &Context) -> BoxFuture<'static, Result<(), HandlerError>> {
        match decode::<M>(ctx.envelope()) {
            Ok(message) => self.handler.call(message, ctx.clone()),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}

fn decode<M: Message>(envelope: &Envelope) -> Result<M, HandlerError> {
    envelope.decode::<M>().map_err(HandlerError::undecodable)
}

/// A registered handler: its erased form and the name failures are grouped by.
#[derive(Clone)]
pub(crate) struct Registered {
    pub(crate) name: Arc<str>,
    pub(crate) handler: Arc<dyn ErasedHandler>,
    /// Metric handles for this handler's queue and message type, made once at start.
    pub(crate) metrics: Option<Arc<crate::middleware::HandlerMetrics>>,
}

/// A readable handler name from its Rust type name: `shop::shipping::ship` becomes `shipping::ship`.
pub(crate) fn handler_name<H>() -> String {
    let full = std::any::type_name::<H>();
    let trimmed = full.split('<').next().unwrap_or(full).replace("::{{closure}}", "");
    let parts: Vec<&str> = trimmed.split("::").collect();
    parts[parts.len().saturating_sub(2)..].join("::")
}
