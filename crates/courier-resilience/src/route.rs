//! Which endpoints the attempts of one call already went to, so the balancer can send a hedge or a retry to
//! another one. Set by the hedge and retry layers through a task-local, read by the balancer.

use std::sync::{Arc, Mutex};

tokio::task_local! {
    static TRIED: Arc<Mutex<Vec<(u64, usize)>>>;
}

/// The endpoints tried by this call, shared by all its attempts.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tried(Arc<Mutex<Vec<(u64, usize)>>>);

impl Tried {
    /// Runs `future` with this record visible to the balancer.
    #[cfg_attr(not(any(feature = "hedge", feature = "retry")), allow(dead_code))]
    pub(crate) async fn scope<F: std::future::Future>(&self, future: F) -> F::Output {
        TRIED.scope(self.0.clone(), future).await
    }

    /// Runs `f` (a service's `call`, where the balancer picks its endpoint) with this record visible.
    #[cfg_attr(not(feature = "pipeline"), allow(dead_code))]
    pub(crate) fn sync_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        TRIED.sync_scope(self.0.clone(), f)
    }
}

/// The endpoints of balancer `balancer` this call already tried (empty outside a hedge or retry).
#[cfg_attr(not(feature = "balance"), allow(dead_code))]
pub(crate) fn tried(balancer: u64) -> Vec<usize> {
    TRIED
        .try_with(|t| {
            t.lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(b, _)| *b == balancer)
                .map(|(_, i)| *i)
                .collect()
        })
        .unwrap_or_default()
}

/// Records that this call sent an attempt to endpoint `index` of balancer `balancer`.
#[cfg_attr(not(feature = "balance"), allow(dead_code))]
pub(crate) fn record(balancer: u64, index: usize) {
    let _ = TRIED.try_with(|t| t.lock().unwrap_or_else(|p| p.into_inner()).push((balancer, index)));
}
