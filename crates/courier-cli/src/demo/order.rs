//! The demo's one message, and the orders a run places: about 1% poison, a few published twice.

use courier::prelude::*;

/// Orders publishes this when a customer places an order; Shipping and Email consume it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(name = "shop.order.placed.v1")]
pub(crate) struct OrderPlaced {
    /// The order.
    pub(crate) order_id: Uuid,
    /// Who placed it.
    pub(crate) customer: String,
    /// Its total; 0 marks a poison order that every consumer rejects.
    pub(crate) total_cents: u64,
}

impl OrderPlaced {
    /// Whether consumers will reject it (and dead-letter it).
    pub(crate) fn is_poison(&self) -> bool {
        self.total_cents == 0
    }
}

/// One order of a run.
#[derive(Debug, Clone)]
pub(crate) struct PlannedOrder {
    /// What is published.
    pub(crate) order: OrderPlaced,
    /// Published a second time, as a publisher does when an acknowledgement is lost: consumers must absorb it.
    pub(crate) duplicate: bool,
}

const CUSTOMERS: [&str; 8] = ["ada", "grace", "linus", "barbara", "ken", "margaret", "dennis", "radia"];

/// The `n` orders of a run: order `i` is poison when `i % 100 == 99` (1%), published twice when `i % 200 == 13`.
pub(crate) fn plan(n: u64) -> Vec<PlannedOrder> {
    (0..n)
        .map(|i| {
            let total_cents = if i % 100 == 99 { 0 } else { 500 + (i * 7919) % 20_000 };
            let customer = CUSTOMERS[(i % CUSTOMERS.len() as u64) as usize];
            PlannedOrder {
                order: OrderPlaced { order_id: Uuid::now_v7(), customer: customer.to_owned(), total_cents },
                duplicate: i % 200 == 13,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_percent_poison_and_no_poison_duplicates() {
        let orders = plan(1000);
        assert_eq!(orders.iter().filter(|o| o.order.is_poison()).count(), 10);
        assert_eq!(orders.iter().filter(|o| o.duplicate).count(), 5);
        assert!(!orders.iter().any(|o| o.duplicate && o.order.is_poison()));
        let ids: std::collections::HashSet<_> = orders.iter().map(|o| o.order.order_id).collect();
        assert_eq!(ids.len(), 1000);
    }
}
