//! The W3C trace context of the work being done: set by the server's [`TraceContextLayer`] for each request's
//! handler, read by the client, which sends a child of it as `traceparent` (or a new root when there is none).
//!
//! It lives in a tokio task-local: visible to everything polled inside the request's future, not to tasks it
//! spawns (wrap those in [`scope`] with [`current`]).
//!
//! ```
//! use courier_core::TraceParent;
//! use courier_http::trace;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let root = TraceParent::new_root();
//! let seen = trace::scope(root, async { trace::current() }).await;
//! assert_eq!(seen, Some(root));
//! assert_eq!(trace::current(), None);
//! # }
//! ```
//!
//! [`TraceContextLayer`]: crate::server::TraceContextLayer

use std::future::Future;

pub use courier_core::TraceParent;

/// The `traceparent` header name.
pub const TRACEPARENT: &str = "traceparent";

tokio::task_local! {
    static CURRENT: TraceParent;
}

/// The trace context of the current request, if a [`scope`] (or the server's trace layer) set one.
pub fn current() -> Option<TraceParent> {
    CURRENT.try_with(|t| *t).ok()
}

/// Runs `future` with `trace` as the current trace context.
pub async fn scope<F: Future>(trace: TraceParent, future: F) -> F::Output {
    CURRENT.scope(trace, future).await
}

/// Runs `f` synchronously with `trace` as the current trace context.
pub fn sync_scope<R>(trace: TraceParent, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(trace, f)
}

/// The `traceparent` to send on an outgoing call: a child of `explicit`, else of the current context, else a new
/// root.
pub fn outgoing(explicit: Option<TraceParent>) -> TraceParent {
    explicit.or_else(current).map_or_else(TraceParent::new_root, |p| p.child())
}
