//! The order-fulfilment saga (courier_testkit::sagas) on the embedded transport and the SQLite saga store:
//! reserve stock -> charge payment -> complete; on a declined card or a payment timeout, release the stock
//! (compensation) and cancel with a reason. And the saga-store conformance case: out-of-order and duplicated events
//! under competing consumers end in the same state as clean delivery.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_bus::{Bus, Context, HandlerError};
use courier_core::{Engine, SagaStore};
use courier_sqlite::{SqliteOptions, SqliteOutbox, SqliteSagaStore, SqliteTransport};
use courier_testkit::sagas::{
    ChargePayment, OrderPlaced, PaymentCharged, PaymentFailed, ReleaseStock, ReserveStock, StockReserved, World,
    out_of_order_and_duplicates_end_like_clean_delivery,
};

async fn sqlite_world(
    consumers: usize,
    payment_timeout: Duration,
) -> (Engine, World<SqliteSagaStore, tempfile::TempDir>) {
    let dir = tempfile::tempdir().unwrap();
    let engine =
        SqliteTransport::open(dir.path().join("courier.db"), SqliteOptions::default()).await.unwrap().into_engine();
    let outbox = SqliteOutbox::open(dir.path().join("orders.db"), "orders").await.unwrap();
    let store = SqliteSagaStore::open(&outbox).await.unwrap();
    let world = World::start(engine.clone(), store, outbox, dir, consumers, payment_timeout).await;
    (engine, world)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_complete_or_are_compensated_and_cancelled_with_a_reason() {
    let (engine, world) = sqlite_world(1, Duration::from_secs(2)).await;
    let released = Arc::new(Mutex::new(Vec::new()));
    let r = released.clone();
    let inventory = Bus::builder("saga-test-inventory")
        .engine_instance(engine.clone())
        .consume(|cmd: ReserveStock, ctx: Context| async move {
            ctx.publish(StockReserved { order: cmd.order }).await?;
            Ok::<(), HandlerError>(())
        })
        .consume(move |cmd: ReleaseStock, _ctx: Context| {
            let r = r.clone();
            async move {
                r.lock().unwrap().push(cmd.order);
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    // Payments: orders ending in 1 are declined; orders ending in 2 never get an answer (the saga times out).
    let payments = Bus::builder("saga-test-payments")
        .engine_instance(engine.clone())
        .consume(|cmd: ChargePayment, ctx: Context| async move {
            if cmd.order.ends_with('1') {
                ctx.publish(PaymentFailed { order: cmd.order, reason: "card declined".into() }).await?;
            } else if !cmd.order.ends_with('2') {
                ctx.publish(PaymentCharged { order: cmd.order }).await?;
            }
            Ok::<(), HandlerError>(())
        })
        .start()
        .await
        .unwrap();
    let client = world.client();
    for i in 0..30 {
        client.publish(OrderPlaced { order: format!("order-{i}") }).await.unwrap();
    }
    let done = world.wait_finished(30, Duration::from_secs(30)).await;
    for (id, state) in &done {
        let expected = if id.ends_with('1') {
            "Cancelled: card declined"
        } else if id.ends_with('2') {
            "Cancelled: payment timed out"
        } else {
            "Completed"
        };
        assert_eq!(state.outcome.as_deref(), Some(expected), "{id}");
        assert_eq!(state.released, expected != "Completed", "{id}: stock released only when cancelled");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while released.lock().unwrap().len() < 6 {
        assert!(Instant::now() < deadline, "compensation did not reach inventory: {:?}", released.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let history = world.store().history("order-fulfilment", "order-1").await.unwrap();
    let steps: Vec<_> = history.iter().map(|h| h.to_status.as_str()).collect();
    assert_eq!(steps, ["Reserving", "Charging", "Cancelled: card declined"], "{history:#?}");
    inventory.shutdown().await;
    payments.shutdown().await;
    world.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_duplicated_events_with_competing_consumers_end_like_clean_delivery() {
    out_of_order_and_duplicates_end_like_clean_delivery(|consumers| async move {
        sqlite_world(consumers, Duration::from_secs(3600)).await.1
    })
    .await;
}
