use std::time::Duration;

use tower::Layer;

use super::{AttemptTimeout, Deadline};

/// Applies [`Deadline`]: a total time limit for the whole call, visible to the layers below.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    total: Duration,
}

impl DeadlineLayer {
    /// Every call must finish within `total`, retries and backoff included.
    pub fn new(total: Duration) -> Self {
        Self { total }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline::new(inner, self.total)
    }
}

/// Applies [`AttemptTimeout`]: a time limit for each attempt.
#[derive(Debug, Clone, Copy)]
pub struct AttemptTimeoutLayer {
    timeout: Duration,
}

impl AttemptTimeoutLayer {
    /// Every attempt must finish within `timeout` (and before the call's deadline).
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for AttemptTimeoutLayer {
    type Service = AttemptTimeout<S>;
    fn layer(&self, inner: S) -> AttemptTimeout<S> {
        AttemptTimeout::new(inner, self.timeout)
    }
}
