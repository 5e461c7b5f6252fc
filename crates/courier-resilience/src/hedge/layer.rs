use std::sync::{Arc, Mutex};

use tower::Layer;

use super::latency::Latencies;
use super::{Hedge, HedgeDelay};
use crate::retry::RetryPredicate;

/// Applies [`Hedge`]. Services made by one layer share its latency record.
pub struct HedgeLayer<Req> {
    delay: HedgeDelay,
    predicate: RetryPredicate<Req>,
    latencies: Arc<Mutex<Latencies>>,
}

impl<Req> HedgeLayer<Req> {
    /// Hedges the requests `predicate` allows, after `delay`.
    pub fn new(delay: HedgeDelay, predicate: RetryPredicate<Req>) -> Self {
        Self { delay, predicate, latencies: Arc::new(Mutex::new(Latencies::new())) }
    }
}

impl<Req> Clone for HedgeLayer<Req> {
    fn clone(&self) -> Self {
        Self { delay: self.delay, predicate: self.predicate.clone(), latencies: self.latencies.clone() }
    }
}

impl<Req> std::fmt::Debug for HedgeLayer<Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeLayer").field("delay", &self.delay).finish()
    }
}

impl<S, Req> Layer<S> for HedgeLayer<Req> {
    type Service = Hedge<S, Req>;
    fn layer(&self, inner: S) -> Hedge<S, Req> {
        Hedge { inner, delay: self.delay, predicate: self.predicate.clone(), latencies: self.latencies.clone() }
    }
}
