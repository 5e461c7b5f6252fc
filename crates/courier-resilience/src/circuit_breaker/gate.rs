//! A breaker as a bus consumer gate: one policy for calls and consumers.

use courier_bus::ConsumerGate;

use super::{CircuitBreaker, CircuitState};

/// Consumers take messages while the breaker lets calls through (closed, half-open, forced closed) and wait
/// while it is open: messages stay in the queue instead of failing against a dependency known to be down and
/// burning their retries into the dead-letter queue. When the open duration passes the gate moves the breaker
/// to half-open itself, so consuming resumes (and the first messages become the trial calls) even if nothing
/// else calls through the breaker.
///
/// ```no_run
/// use std::sync::Arc;
/// use courier_bus::Bus;
/// use courier_resilience::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig};
///
/// # async fn run() -> courier_core::Result<()> {
/// let breaker = CircuitBreaker::new("payments", CircuitBreakerConfig::failure_rate(0.5));
/// let bus = Bus::builder("billing").engine_url("memory://").gate(Arc::new(breaker.clone())).start().await?;
/// # Ok(()) }
/// ```
#[async_trait::async_trait]
impl ConsumerGate for CircuitBreaker {
    async fn wait_open(&self) {
        let mut states = self.subscribe();
        loop {
            let state = *states.borrow_and_update();
            match state {
                CircuitState::Closed | CircuitState::HalfOpen | CircuitState::ForcedClosed => return,
                CircuitState::Open => match self.poll_open() {
                    None => continue,
                    Some(until) => tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        changed = states.changed() => if changed.is_err() { return },
                    },
                },
                CircuitState::ForcedOpen => {
                    if states.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
