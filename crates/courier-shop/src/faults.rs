//! Faults the demo and the tests inject: the shipping service down for a while, the card processor slow or
//! failing. Shared by the services of one process; `courier shop run` sets them from flags.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use courier::ConsumerGate;
use tokio::sync::watch;

/// The faults in force now. A cheap `Clone` handle.
#[derive(Debug, Clone)]
pub struct Faults {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shipping_down: watch::Sender<bool>,
    payments_latency_ms: AtomicU64,
    payments_failure_per_mille: AtomicU64,
}

impl Default for Faults {
    fn default() -> Self {
        Self::none()
    }
}

impl Faults {
    /// No faults.
    pub fn none() -> Self {
        Self {
            inner: Arc::new(Inner {
                shipping_down: watch::Sender::new(false),
                payments_latency_ms: AtomicU64::new(0),
                payments_failure_per_mille: AtomicU64::new(0),
            }),
        }
    }

    /// Takes the shipping service down (`true`: its API answers 503 and its consumer stops taking messages) or
    /// brings it back.
    pub fn set_shipping_down(&self, down: bool) {
        self.inner.shipping_down.send_replace(down);
    }

    /// Whether shipping is down.
    pub fn shipping_down(&self) -> bool {
        *self.inner.shipping_down.borrow()
    }

    /// The card processor's added latency.
    pub fn set_payments_latency(&self, latency: Duration) {
        self.inner.payments_latency_ms.store(latency.as_millis() as u64, Ordering::Relaxed);
    }

    /// The card processor's added latency now.
    pub fn payments_latency(&self) -> Duration {
        Duration::from_millis(self.inner.payments_latency_ms.load(Ordering::Relaxed))
    }

    /// The share (0..=1) of charges the card processor fails with a 503.
    pub fn set_payments_failure_rate(&self, rate: f64) {
        let per_mille = (rate.clamp(0.0, 1.0) * 1000.0).round() as u64;
        self.inner.payments_failure_per_mille.store(per_mille, Ordering::Relaxed);
    }

    /// The share of charges failed now.
    pub fn payments_failure_rate(&self) -> f64 {
        self.inner.payments_failure_per_mille.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// A consumer gate that is closed while shipping is down: a stopped service takes no messages, which wait in
    /// its queue.
    pub(crate) fn shipping_gate(&self) -> Arc<dyn ConsumerGate> {
        Arc::new(ShippingUp(self.inner.shipping_down.subscribe()))
    }
}

#[derive(Debug)]
struct ShippingUp(watch::Receiver<bool>);

#[async_trait]
impl ConsumerGate for ShippingUp {
    async fn wait_open(&self) {
        let mut down = self.0.clone();
        // The sender lives as long as the Faults; if it is gone, nothing can close the gate any more.
        let _ = down.wait_for(|down| !*down).await;
    }
}
