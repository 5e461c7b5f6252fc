//! The test harness, used as a service's tests would use it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use courier_bus::{Context, HandlerError, Outcome, Retry};
use courier_macros::Message;
use courier_testkit::{TestHarness, wait_until};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[message(name = "test.order.placed.v1", crate = "courier_core")]
struct OrderPlaced {
    order_id: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[message(name = "test.order.shipped.v1", crate = "courier_core")]
struct OrderShipped {
    order_id: u64,
}

async fn ship(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    if order.order_id == 0 {
        return Err(HandlerError::permanent("order 0 does not exist"));
    }
    ctx.publish(OrderShipped { order_id: order.order_id }).await?;
    Ok(())
}

#[tokio::test]
async fn records_published_and_consumed() {
    let harness = TestHarness::new();
    harness.bus("shipping", |b| b.consume(ship)).await.unwrap();
    harness.publish(OrderPlaced { order_id: 1 }).await.unwrap();
    harness.publish(OrderPlaced { order_id: 2 }).await.unwrap();

    let mut handled = harness.wait_consumed::<OrderPlaced>(2, WAIT).await.unwrap();
    handled.sort_by_key(|o| o.order_id);
    assert_eq!(handled, [OrderPlaced { order_id: 1 }, OrderPlaced { order_id: 2 }]);
    let mut shipped = harness.published::<OrderShipped>();
    shipped.sort_by_key(|o| o.order_id);
    assert_eq!(shipped, [OrderShipped { order_id: 1 }, OrderShipped { order_id: 2 }]);
    assert_eq!(harness.published::<OrderPlaced>().len(), 2);
    assert!(harness.faulted().is_empty());
    harness.shutdown().await;
}

#[tokio::test]
async fn dead_letters_are_reported_with_their_reason() {
    let harness = TestHarness::new();
    harness.bus("shipping", |b| b.consume(ship)).await.unwrap();
    harness.send("shipping", OrderPlaced { order_id: 0 }).await.unwrap();

    let dead = harness.wait_dead_lettered::<OrderPlaced>(1, WAIT).await.unwrap();
    assert_eq!(dead[0].message, Some(OrderPlaced { order_id: 0 }));
    assert_eq!(dead[0].reason, "handler-failed");
    assert_eq!(dead[0].error, "order 0 does not exist");
    assert_eq!(harness.faulted().len(), 1);
    assert_eq!(harness.dead_letters().await.unwrap().len(), 1);
    assert!(harness.consumed::<OrderPlaced>().is_empty());
    harness.shutdown().await;
}

#[tokio::test]
async fn a_timed_out_wait_says_what_was_expected_and_seen() {
    let harness = TestHarness::new();
    harness.bus("shipping", |b| b.consume(ship)).await.unwrap();
    harness.send("shipping", OrderPlaced { order_id: 0 }).await.unwrap();
    harness.wait_dead_lettered::<OrderPlaced>(1, WAIT).await.unwrap();

    let error = harness.wait_consumed::<OrderPlaced>(1, Duration::from_millis(50)).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("waiting for 1 handled 'test.order.placed.v1'"), "{text}");
    assert!(text.contains("1 published or sent, 0 handled"), "{text}");
    assert!(text.contains("1 dead-lettered"), "{text}");
    assert!(text.contains("order 0 does not exist"), "{text}");
    harness.shutdown().await;
}

#[tokio::test]
async fn waits_for_redeliveries_through_outcomes() {
    let harness = TestHarness::new();
    let failed_once = Arc::new(AtomicBool::new(false));
    let flaky = {
        let failed_once = failed_once.clone();
        move |_: OrderPlaced, _ctx: Context| {
            let first = !failed_once.swap(true, Ordering::SeqCst);
            async move { if first { Err(HandlerError::transient("flaky")) } else { Ok(()) } }
        }
    };
    let policy = Retry::none().then_backoff(1, Duration::from_millis(10));
    harness.bus("shipping", |b| b.consume(flaky).retry(policy)).await.unwrap();
    harness.send("shipping", OrderPlaced { order_id: 3 }).await.unwrap();

    let outcomes = harness
        .wait_outcomes(WAIT, "a redelivery then a success", |o| o.iter().any(|c| c.outcome == Outcome::Handled))
        .await
        .unwrap();
    assert!(matches!(&outcomes[0].outcome, Outcome::Redelivered { error, .. } if error == "flaky"));
    assert_eq!(outcomes[1].attempt, 2);
    harness.shutdown().await;
}

#[tokio::test]
async fn wait_until_polls_a_condition() {
    let flag = Arc::new(AtomicBool::new(false));
    let setter = flag.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        setter.store(true, Ordering::SeqCst);
    });
    wait_until(WAIT, || flag.load(Ordering::SeqCst)).await.unwrap();

    let error = wait_until(Duration::from_millis(20), || false).await.unwrap_err();
    assert_eq!(error.timeout, Duration::from_millis(20));
    assert!(error.to_string().starts_with("timed out after 20ms"), "{error}");
}
