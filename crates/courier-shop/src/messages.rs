//! The messages between the shop's services. Events are published (any number of subscribers); commands are sent
//! to one service's queue.

use courier::prelude::*;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The product.
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

/// Event (orders, through its outbox): an order was accepted and saved. Starts the fulfilment saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(name = "shop.order.placed.v1")]
pub struct OrderPlaced {
    /// The order.
    pub order_id: Uuid,
    /// The customer's email address.
    pub email: String,
    /// What was ordered.
    pub lines: Vec<Line>,
    /// The amount to charge.
    pub total_cents: u64,
    /// The card to charge.
    pub card: String,
}

/// Command (saga -> inventory): hold stock for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(name = "shop.inventory.reserve.v1")]
pub struct ReserveStock {
    /// The order.
    pub order_id: Uuid,
    /// What to hold.
    pub lines: Vec<Line>,
}

/// Command (saga -> inventory): give back what was held for an order (compensation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(name = "shop.inventory.release.v1")]
pub struct ReleaseStock {
    /// The order.
    pub order_id: Uuid,
}

/// Event (inventory): the stock for an order is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(name = "shop.inventory.reserved.v1")]
pub struct StockReserved {
    /// The order.
    pub order_id: Uuid,
}

/// Event (inventory): the stock for an order could not be held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(name = "shop.inventory.rejected.v1")]
pub struct StockRejected {
    /// The order.
    pub order_id: Uuid,
    /// Why, for the customer.
    pub reason: String,
}

/// Command (saga -> the orders service's payment worker): charge the order's card through the payments API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(name = "shop.payments.charge.v1")]
pub struct ChargePayment {
    /// The order (also the idempotency key of the charge).
    pub order_id: Uuid,
    /// The card.
    pub card: String,
    /// The amount.
    pub amount_cents: u64,
}

/// Event: the card was charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(name = "shop.payments.charged.v1")]
pub struct PaymentCharged {
    /// The order.
    pub order_id: Uuid,
    /// The payment service's charge id.
    pub charge_id: String,
}

/// Event: the card was declined (a business outcome, not a failure to retry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(name = "shop.payments.declined.v1")]
pub struct PaymentDeclined {
    /// The order.
    pub order_id: Uuid,
    /// Why.
    pub reason: String,
}

/// Event (saga): the order is paid for and may be shipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(name = "shop.order.confirmed.v1")]
pub struct OrderConfirmed {
    /// The order.
    pub order_id: Uuid,
    /// The customer's email address.
    pub email: String,
    /// What to ship.
    pub lines: Vec<Line>,
}

/// Event (shipping): the order left the warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(name = "shop.shipping.shipped.v1")]
pub struct OrderShipped {
    /// The order.
    pub order_id: Uuid,
    /// The customer's email address.
    pub email: String,
    /// The carrier's tracking number.
    pub tracking: String,
}
