//! The deadline of the call being made, propagated to every layer below the [`DeadlineLayer`] through a tokio
//! task-local (it is set while the call's future is polled, so it is visible to everything that runs inside that
//! future, but not to tasks it spawns).
//!
//! Layers read it with [`current`] or [`remaining`]: the retry layer does not start an attempt or a backoff that
//! cannot finish in time, and the per-attempt timeout never waits past it. A transport can read it too, to send
//! the remaining time to the server (the `grpc-timeout` header, for instance).
//!
//! [`DeadlineLayer`]: crate::timeout::DeadlineLayer

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Option<Instant>;
}

/// The deadline of the call being made, if a deadline layer (or [`scope`]) set one.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok().flatten()
}

/// The time left until the current deadline (zero once it passed), if there is one.
pub fn remaining() -> Option<Duration> {
    current().map(|d| d.saturating_duration_since(Instant::now()))
}

/// The earlier of `deadline` and the current one: a nested deadline can shorten a call, never lengthen it.
pub fn earliest(deadline: Instant) -> Instant {
    current().map_or(deadline, |outer| outer.min(deadline))
}

/// Runs `future` with `deadline` (or the current one, if earlier) visible to [`current`].
///
/// ```
/// use std::time::Duration;
/// use courier_resilience::deadline;
/// use tokio::time::Instant;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let at = Instant::now() + Duration::from_secs(2);
/// let seen = deadline::scope(at, async { deadline::current() }).await;
/// assert_eq!(seen, Some(at));
/// # }
/// ```
pub async fn scope<F: Future>(deadline: Instant, future: F) -> F::Output {
    DEADLINE.scope(Some(earliest(deadline)), future).await
}

/// Runs `future` with `deadline` (or the current one, if earlier) visible, or with the current one unchanged when
/// `deadline` is `None`: one future type either way, so a caller with an optional deadline awaits one future.
pub(crate) fn scope_optional<F: Future>(deadline: Option<Instant>, future: F) -> impl Future<Output = F::Output> {
    let deadline = match deadline {
        Some(at) => Some(earliest(at)),
        None => current(),
    };
    DEADLINE.scope(deadline, future)
}

/// Runs `f` synchronously with the deadline visible (for a service's `call`, which may read it).
#[cfg_attr(not(feature = "timeout"), allow(dead_code))]
pub(crate) fn sync_scope<R>(deadline: Instant, f: impl FnOnce() -> R) -> R {
    DEADLINE.sync_scope(Some(earliest(deadline)), f)
}
