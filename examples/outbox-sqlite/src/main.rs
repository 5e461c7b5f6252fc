//! The dual-write bug and its fix. Run: `cargo run -p outbox-sqlite`
//!
//! An Orders service must save an order and publish `OrderPlaced`. Doing it as two writes ("save, then publish")
//! loses the message when the process dies between them: the order exists, nobody ships it. With the outbox the
//! message is a row committed in the same transaction as the order, and the relay publishes it, after a restart if
//! need be. The consumer's inbox makes the redelivery that a crash can cause harmless.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use courier::prelude::*;
use courier::sqlite::{SqliteInbox, SqliteOptions, SqliteOutbox, SqliteTransport};
use courier::{Bus, OutboxRelay};

#[derive(Debug, Serialize, Deserialize, Message)]
#[message(name = "example.order.placed.v1")]
struct OrderPlaced {
    order_id: i64,
}

/// Stands for the process dying between the two writes (power cut, OOM kill, deploy).
fn crash_here() -> bool {
    true
}

#[tokio::main]
async fn main() -> courier::Result<()> {
    let dir = tempfile::tempdir().map_err(|e| courier::Error::engine("no temp dir").with_source(e))?;
    let engine = SqliteTransport::open(dir.path().join("courier.db"), SqliteOptions::default()).await?.into_engine();

    // Shipping: an idempotent consumer, counting the orders it ships.
    let shipped = Arc::new(AtomicUsize::new(0));
    let inbox = SqliteInbox::open(dir.path().join("shipping.db")).await?;
    let (s, i) = (shipped.clone(), inbox.clone());
    let shipping = Bus::builder("shipping")
        .engine_instance(engine.clone())
        .consume(move |order: OrderPlaced, ctx: Context| {
            let (s, i) = (s.clone(), i.clone());
            async move {
                if i.once(&ctx, |_tx| Ok::<_, String>(())).await?.is_some() {
                    s.fetch_add(1, Ordering::SeqCst);
                    println!("  shipping order {}", order.order_id);
                }
                Ok(())
            }
        })
        .start()
        .await?;
    let orders_bus = Bus::builder("orders").engine_instance(engine.clone()).start().await?;
    let orders = SqliteOutbox::open(dir.path().join("orders.db"), "orders").await?;
    orders.transaction(|tx| tx.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY)")).await?;

    println!("1. The dual write: save the order, then publish. The process dies in between.");
    orders.transaction(|tx| tx.execute("INSERT INTO orders (id) VALUES (1)", [])).await?;
    if !crash_here() {
        orders_bus.publish(OrderPlaced { order_id: 1 }).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("   order 1 saved: yes; shipped: {} -> the message is lost for good\n", shipped.load(Ordering::SeqCst));

    println!("2. The outbox: the order and its message commit in one transaction. The process dies before publishing.");
    orders
        .transaction(|tx| {
            tx.execute("INSERT INTO orders (id) VALUES (2)", [])?;
            tx.publish(&OrderPlaced { order_id: 2 })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .await?;
    println!("   committed; nothing published yet. After the restart the relay starts:");
    let relay = OutboxRelay::new(orders.clone(), orders_bus.clone()).start();
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("   shipped: {} (order 2)\n", shipped.load(Ordering::SeqCst));

    println!("3. A relay that dies after publishing but before marking the row sent publishes it again after the");
    println!("   restart: the same message (same id) arrives twice. The inbox applies it once.");
    let message = courier::Envelope::for_message("orders", &OrderPlaced { order_id: 3 })?;
    orders_bus.publish_envelope(message.clone(), None).await?;
    orders_bus.publish_envelope(message, None).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("   order 3 delivered twice -> shipped orders in total: {} (2 and 3)", shipped.load(Ordering::SeqCst));

    relay.shutdown().await;
    shipping.shutdown().await;
    orders_bus.shutdown().await;
    Ok(())
}
