//! The load generator: the Orders service's publishers, sharing the planned orders and one rate limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use courier::Bus;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::order::PlannedOrder;

/// Publishes every planned order through `bus` with `publishers` concurrent tasks, at most `rate` orders a second
/// in total (0 = as fast as possible). Returns when all are published or the first publish fails (the other
/// publishers are then stopped).
pub(crate) async fn run(bus: Bus, orders: Arc<Vec<PlannedOrder>>, rate: u64, publishers: u32) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let interval = (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..publishers {
        let (bus, orders, next) = (bus.clone(), orders.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(planned) = orders.get(i) else { return Ok::<_, anyhow::Error>(()) };
                if let Some(interval) = interval {
                    // Order i goes out no earlier than i / rate seconds in, whichever publisher takes it.
                    tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
                }
                let copies = if planned.duplicate { 2 } else { 1 };
                for _ in 0..copies {
                    bus.publish(planned.order.clone())
                        .await
                        .with_context(|| format!("publishing order {} failed", planned.order.order_id))?;
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a publisher task failed")??;
    }
    Ok(())
}
