//! The saga-store conformance case: an order-fulfilment saga (reserve stock -> charge -> complete; on a declined
//! card or a payment timeout, release the stock and cancel with the reason) that every [`SagaStore`] runs the same
//! way. [`out_of_order_and_duplicates_end_like_clean_delivery`] drives it with the same events clean and then
//! shuffled, duplicated and spread over three competing consumers, and checks the business outcome is the same.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use courier_bus::{Bus, HandlerError, OutboxRelay, RelayHandle};
use courier_core::{Engine, Envelope, Json, Message, OutboxStore, SagaStore};
use courier_saga::{Actions, Saga, SagaState};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// The queue the saga consumes from.
pub const SAGA_QUEUE: &str = "saga-test-fulfilment";

macro_rules! message {
    ($ty:ident, $name:literal $(, $field:ident : $fty:ty)*) => {
        #[doc = concat!("`", $name, "`.")]
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub struct $ty {
            /// The order (the saga's correlation id).
            pub order: String,
            $(#[allow(missing_docs)] pub $field: $fty,)*
        }
        impl Message for $ty { const NAME: &'static str = $name; type Codec = Json; }
    };
}

message!(OrderPlaced, "saga-test.order.placed.v1");
message!(StockReserved, "saga-test.stock.reserved.v1");
message!(PaymentCharged, "saga-test.payment.charged.v1");
message!(PaymentFailed, "saga-test.payment.failed.v1", reason: String);
message!(PaymentTimedOut, "saga-test.payment.timed-out.v1");
message!(ReserveStock, "saga-test.stock.reserve.v1");
message!(ReleaseStock, "saga-test.stock.release.v1");
message!(ChargePayment, "saga-test.payment.charge.v1");
message!(OrderCompleted, "saga-test.order.completed.v1");
message!(OrderCancelled, "saga-test.order.cancelled.v1", reason: String);

/// The state is a set of facts, so the outcome does not depend on the order they arrive in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Fulfilment {
    pub placed: bool,
    pub reserved: bool,
    /// Bookkeeping: whether ChargePayment was sent (depends on arrival order, not a business fact).
    pub charge_requested: bool,
    pub paid: bool,
    pub failure: Option<String>,
    pub released: bool,
    pub outcome: Option<String>,
}

impl SagaState for Fulfilment {
    fn status(&self) -> String {
        match (&self.outcome, self.placed, self.reserved) {
            (Some(outcome), _, _) => outcome.clone(),
            (None, _, _) if self.failure.is_some() => "Cancelling".into(),
            (None, true, true) => "Charging".into(),
            (None, true, false) => "Reserving".into(),
            _ => "Waiting".into(),
        }
    }
    fn is_finished(&self) -> bool {
        self.outcome.is_some()
    }
}

fn advance(s: &mut Fulfilment, order: &str, a: &mut Actions<'_>) -> Result<(), HandlerError> {
    let order = order.to_owned();
    if let Some(reason) = s.failure.clone() {
        // Compensation: cancel once we know what to undo (the order and its reservation are both known).
        if s.placed && s.reserved {
            if !s.released {
                a.send("saga-test-inventory", &ReleaseStock { order: order.clone() })?;
                s.released = true;
            }
            a.publish(&OrderCancelled { order, reason: reason.clone() })?;
            s.outcome = Some(format!("Cancelled: {reason}"));
        }
        return Ok(());
    }
    if s.placed && s.reserved && s.paid {
        a.publish(&OrderCompleted { order })?;
        s.outcome = Some("Completed".into());
    } else if s.placed && s.reserved && !s.paid && !s.charge_requested {
        a.send("saga-test-payments", &ChargePayment { order })?;
        s.charge_requested = true;
    }
    Ok(())
}

/// The order-fulfilment saga on `store`: reserve stock, charge, complete; on a declined card or a payment timeout,
/// release the stock and cancel with the reason.
pub fn fulfilment(store: impl SagaStore, payment_timeout: Duration) -> Saga<Fulfilment> {
    Saga::<Fulfilment>::new("order-fulfilment", store)
        .on(
            |e: &OrderPlaced| e.order.clone(),
            move |s, e, a| {
                s.placed = true;
                a.send("saga-test-inventory", &ReserveStock { order: e.order.clone() })?;
                a.schedule(payment_timeout, &PaymentTimedOut { order: e.order.clone() })?;
                advance(s, &e.order, a)
            },
        )
        .on(
            |e: &StockReserved| e.order.clone(),
            |s, e, a| {
                s.reserved = true;
                advance(s, &e.order, a)
            },
        )
        .on(
            |e: &PaymentCharged| e.order.clone(),
            |s, e, a| {
                s.paid = true;
                advance(s, &e.order, a)
            },
        )
        .on(
            |e: &PaymentFailed| e.order.clone(),
            |s, e, a| {
                s.failure.get_or_insert(e.reason.clone());
                advance(s, &e.order, a)
            },
        )
        .on(
            |e: &PaymentTimedOut| e.order.clone(),
            |s, e, a| {
                if !s.paid {
                    s.failure.get_or_insert("payment timed out".into());
                }
                advance(s, &e.order, a)
            },
        )
}

/// A saga world: an engine, a saga store with its outbox relay, and `saga_consumers` competing saga consumers.
#[derive(Debug)]
pub struct World<S, G> {
    store: S,
    relay: RelayHandle,
    buses: Vec<Bus>,
    _guard: G,
}

impl<S: SagaStore + Clone, G> World<S, G> {
    /// Starts the relay and the consumers. `guard` is kept until the world is dropped (a temp dir, a schema).
    pub async fn start(
        engine: Engine,
        store: S,
        outbox: impl OutboxStore,
        guard: G,
        saga_consumers: usize,
        payment_timeout: Duration,
    ) -> Self {
        let relay_bus = Bus::builder("orders").engine_instance(engine.clone()).start().await.expect("relay bus");
        let relay = OutboxRelay::new(outbox, relay_bus.clone()).poll_interval(Duration::from_millis(20)).start();
        let mut buses = vec![relay_bus];
        for _ in 0..saga_consumers {
            let builder = Bus::builder(SAGA_QUEUE).engine_instance(engine.clone()).concurrency(4);
            buses.push(fulfilment(store.clone(), payment_timeout).attach(builder).start().await.expect("saga bus"));
        }
        Self { store, relay, buses, _guard: guard }
    }

    /// The bus that sends (and relays): a handler-less client of the engine.
    pub fn client(&self) -> &Bus {
        &self.buses[0]
    }

    /// The saga store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Stops the relay and the consumers.
    pub async fn shutdown(self) {
        self.relay.shutdown().await;
        for b in &self.buses {
            b.shutdown().await;
        }
    }

    /// Waits until at least `n` instances finished; returns their states by id.
    pub async fn wait_finished(&self, n: usize, within: Duration) -> BTreeMap<String, Fulfilment> {
        let deadline = Instant::now() + within;
        loop {
            let records = self.store.list(Some("order-fulfilment"), 10_000).await.expect("listing sagas");
            let done: BTreeMap<String, Fulfilment> = records
                .iter()
                .filter(|r| r.finished)
                .map(|r| (r.id.clone(), serde_json::from_str(&r.state).expect("saga state")))
                .collect();
            if done.len() >= n {
                return done;
            }
            assert!(Instant::now() < deadline, "only {} of {n} sagas finished: {records:#?}", done.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn drive(&self, deliveries: Vec<Envelope>) {
        for envelope in deliveries {
            self.client().send_envelope(SAGA_QUEUE, envelope, None).await.expect("sending an event");
        }
    }
}

/// The events of `n` orders: placed, reserved, then charged (or, for every third order, declined).
pub fn scripts(n: usize) -> Vec<Vec<Envelope>> {
    (0..n)
        .map(|i| {
            let order = format!("order-{i}");
            let envelope = |m: &dyn Fn() -> courier_core::Result<Envelope>| m().expect("envelope");
            let mut events = vec![
                envelope(&|| Envelope::for_message("test", &OrderPlaced { order: order.clone() })),
                envelope(&|| Envelope::for_message("test", &StockReserved { order: order.clone() })),
            ];
            events.push(if i % 3 == 0 {
                envelope(&|| {
                    Envelope::for_message(
                        "test",
                        &PaymentFailed { order: order.clone(), reason: "card declined".into() },
                    )
                })
            } else {
                envelope(&|| Envelope::for_message("test", &PaymentCharged { order: order.clone() }))
            });
            events
        })
        .collect()
}

/// The case: 40 orders' events delivered cleanly to one consumer, then the same events (same message ids)
/// shuffled, each sent two or three times, to three competing consumers. The business facts and outcome of every
/// instance must be the same, and each event applied once. `new_world(consumers)` makes a fresh world each time.
pub async fn out_of_order_and_duplicates_end_like_clean_delivery<S, G, F, Fut>(new_world: F)
where
    S: SagaStore + Clone,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = World<S, G>>,
{
    const N: usize = 40;
    let scripts = scripts(N);

    let clean = new_world(1).await;
    clean.drive(scripts.iter().flatten().cloned().collect()).await;
    let expected = clean.wait_finished(N, Duration::from_secs(30)).await;
    clean.shutdown().await;

    let messy = new_world(3).await;
    let mut deliveries: Vec<Envelope> = Vec::new();
    for (i, e) in scripts.iter().flatten().enumerate() {
        for _ in 0..(2 + i % 2) {
            deliveries.push(e.clone());
        }
    }
    deliveries.shuffle(&mut rand::rng());
    messy.drive(deliveries).await;
    let actual = messy.wait_finished(N, Duration::from_secs(60)).await;
    // Compare the business facts and the outcome; `charge_requested` only records which message arrived when.
    let facts = |m: &BTreeMap<String, Fulfilment>| -> BTreeMap<String, Fulfilment> {
        m.iter().map(|(k, v)| (k.clone(), Fulfilment { charge_requested: false, ..v.clone() })).collect()
    };
    assert_eq!(facts(&actual), facts(&expected));
    let history = messy.store.history("order-fulfilment", "order-0").await.expect("history");
    assert_eq!(history.len(), 3, "each event applied once: {history:#?}");
    messy.shutdown().await;
}
