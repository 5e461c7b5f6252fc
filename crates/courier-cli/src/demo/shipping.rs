//! The Shipping service: books a shipment for every order placed.

use std::sync::Arc;

use courier::Handler;
use courier::prelude::*;

use super::ledger::{Ledger, Stats};
use super::order::OrderPlaced;

/// A booked shipment.
#[derive(Debug, Clone)]
pub(crate) struct Shipment {
    /// Who delivers it.
    pub(crate) carrier: &'static str,
}

/// The handler: rejects poison orders for good (they go to the dead-letter queue), ships the rest once each.
pub(crate) fn ship(ledger: Arc<Ledger<Shipment>>, stats: Arc<Stats>) -> impl Handler<OrderPlaced> {
    move |order: OrderPlaced, ctx: Context| {
        let (ledger, stats) = (ledger.clone(), stats.clone());
        async move {
            if order.is_poison() {
                return Err(HandlerError::permanent(format!(
                    "order {} has a zero total; refusing to ship it",
                    order.order_id
                )));
            }
            let carrier = if order.total_cents > 10_000 { "express" } else { "standard" };
            ledger.record(order.order_id, Shipment { carrier });
            stats.handled(&ctx);
            Ok(())
        }
    }
}
