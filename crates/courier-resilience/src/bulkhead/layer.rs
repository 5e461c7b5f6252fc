use tower::Layer;

use super::{Bulkhead, BulkheadService};

/// Applies [`BulkheadService`]; every service it wraps shares the bulkhead's slots.
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    bulkhead: Bulkhead,
}

impl BulkheadLayer {
    /// Limits services with `bulkhead`.
    pub fn new(bulkhead: Bulkhead) -> Self {
        Self { bulkhead }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;
    fn layer(&self, inner: S) -> BulkheadService<S> {
        BulkheadService::new(inner, self.bulkhead.clone())
    }
}
