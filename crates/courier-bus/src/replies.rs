//! The reply-queue consumer behind [`Bus::request`](crate::Bus::request).

use std::sync::Weak;

use courier_core::{Envelope, Subscription};
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Inner};

pub(crate) async fn run(bus: Weak<Inner>, mut subscription: Box<dyn Subscription>, shutdown: CancellationToken) {
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return,
            batch = subscription.next_batch(256) => batch,
        };
        let Some(inner) = bus.upgrade() else { return };
        let bus = Bus { inner };
        match batch {
            Ok(batch) => {
                for mut delivery in batch {
                    match Envelope::from_raw(delivery.take_message()) {
                        Ok(reply) => bus.deliver_reply(reply),
                        Err(e) => tracing::warn!(error = %e, "undecodable reply discarded from the reply queue"),
                    }
                    if let Err(e) = delivery.ack().await {
                        tracing::debug!(error = %e, "could not ack a reply");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reply queue failed; retrying in 1 s");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
