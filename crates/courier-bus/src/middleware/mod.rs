//! Consumer middleware: code that runs around every handler call, in a stack.
//!
//! The built-in stack, outermost first: [`Tracing`] (a span per message with its W3C trace id), [`Timing`]
//! (duration metrics), your own middleware in the order added, [`ImmediateRetry`], then [`Inbox`] dedupe when an
//! inbox store is configured, then the handler. Delayed redelivery and dead-lettering happen after the stack
//! returns, when the consumer settles the delivery (see [`Retry`](crate::Retry)).
//!
//! Writing one takes a struct and one method:
//!
//! ```
//! use courier_bus::{BoxFuture, Context, HandlerError, Middleware, Next};
//!
//! #[derive(Debug)]
//! struct RequireTenant;
//!
//! impl Middleware for RequireTenant {
//!     fn handle<'a>(&'a self, ctx: &'a Context, next: Next<'a>) -> BoxFuture<'a, Result<(), HandlerError>> {
//!         Box::pin(async move {
//!             if ctx.header("tenant").is_none() {
//!                 return Err(HandlerError::permanent("message has no 'tenant' header"));
//!             }
//!             next.run(ctx).await
//!         })
//!     }
//! }
//! ```

mod inbox;
mod retry;
mod timing;
mod tracing;

use std::sync::Arc;

pub use self::inbox::{Inbox, InboxStore, MemoryInboxStore};
pub use self::retry::ImmediateRetry;
pub use self::timing::{HandlerMetrics, Timing};
pub use self::tracing::Tracing;

use crate::handler::ErasedHandler;
use crate::{BoxFuture, Context, HandlerError};

/// Code that runs around a handler. Call `next.run(ctx)` to continue down the stack (or don't, to stop there).
pub trait Middleware: Send + Sync + std::fmt::Debug + 'static {
    /// Handles one message.
    fn handle<'a>(&'a self, ctx: &'a Context, next: Next<'a>) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// The rest of the stack below a middleware. `Copy`, so a middleware may run it more than once (retries).
#[derive(Clone, Copy)]
pub struct Next<'a> {
    rest: &'a [Arc<dyn Middleware>],
    handler: &'a dyn ErasedHandler,
}

impl std::fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next").field("remaining", &self.rest.len()).finish()
    }
}

impl<'a> Next<'a> {
    pub(crate) fn new(rest: &'a [Arc<dyn Middleware>], handler: &'a dyn ErasedHandler) -> Self {
        Self { rest, handler }
    }

    /// Runs the rest of the stack and the handler.
    pub fn run(self, ctx: &'a Context) -> BoxFuture<'a, Result<(), HandlerError>> {
        match self.rest.split_first() {
            Some((first, rest)) => first.handle(ctx, Next { rest, handler: self.handler }),
            None => self.handler.call(ctx),
        }
    }
}
