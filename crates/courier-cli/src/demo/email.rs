//! The Email service: sends a receipt for every order placed, through a mail server that sometimes times out.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use courier::Handler;
use courier::prelude::*;

use super::ledger::{Ledger, Stats};
use super::order::OrderPlaced;

/// A sent receipt.
#[derive(Debug, Clone)]
pub(crate) struct Email {
    /// The recipient.
    pub(crate) to: String,
}

/// The handler: rejects poison orders for good; about 2.5% of sends time out once (a transient failure the retry
/// policy absorbs); every order gets one receipt however often it is delivered.
pub(crate) fn send_receipt(ledger: Arc<Ledger<Email>>, stats: Arc<Stats>) -> impl Handler<OrderPlaced> {
    let flaked = Arc::new(Mutex::new(HashSet::new()));
    move |order: OrderPlaced, ctx: Context| {
        let (ledger, stats, flaked) = (ledger.clone(), stats.clone(), flaked.clone());
        async move {
            if order.is_poison() {
                return Err(HandlerError::permanent(format!(
                    "cannot render the receipt for order {}: total_cents is 0",
                    order.order_id
                )));
            }
            let flaky = order.order_id.as_u128().is_multiple_of(40);
            if flaky && flaked.lock().unwrap_or_else(|p| p.into_inner()).insert(order.order_id) {
                stats.transient_failure();
                return Err(HandlerError::transient("SMTP timeout after 30 s talking to mail-2.internal"));
            }
            ledger.record(order.order_id, Email { to: format!("{}@example.com", order.customer) });
            stats.handled(&ctx);
            Ok(())
        }
    }
}
