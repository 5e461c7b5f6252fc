//! Waking consumers in other processes: a publish is announced by `NOTIFY` at once after a quiet spell, and the
//! publishes that follow within `notify_interval` are announced together at its end, so a busy publisher sends one
//! notification per interval instead of one per batch, and no message is left unannounced.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_core::{Envelope, Json, Message, SubscriptionOptions, Transport};
use courier_postgres::sqlx::postgres::PgListener;
use courier_postgres::{PostgresOptions, PostgresTransport};
use courier_testkit::services::POSTGRES;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Note {
    n: u32,
}

impl Message for Note {
    const NAME: &'static str = "courier.postgres.test.wake.v1";
    type Codec = Json;
}

async fn connect(schema: &str, options: PostgresOptions) -> PostgresTransport {
    let options = options.schema(schema).application_name("courier_wake").max_connections(4);
    PostgresTransport::connect(&POSTGRES.url(), options).await.expect("connect to PostgreSQL")
}

/// Two transports on `schema` standing for two processes: a publisher notifying at most every `interval`, and a
/// consumer whose only way to learn of a message in time is a notification (its safety-net recheck is a minute
/// away).
async fn two_processes(schema: &str, interval: Duration) -> (PostgresTransport, PostgresTransport) {
    let publisher = connect(schema, PostgresOptions { notify_interval: interval, ..PostgresOptions::default() }).await;
    let consumer =
        connect(schema, PostgresOptions { recheck_interval: Duration::from_secs(60), ..PostgresOptions::default() })
            .await;
    (publisher, consumer)
}

/// Takes and acks the messages of `queue` on `consumer` in a task of its own, telling when each arrived; the
/// consumer has found the queue empty and waits when this returns.
async fn consume(
    consumer: &PostgresTransport,
    queue: &str,
) -> (tokio::task::JoinHandle<()>, tokio::sync::mpsc::UnboundedReceiver<Instant>) {
    let mut subscription = consumer.subscribe(queue, SubscriptionOptions::default()).await.unwrap();
    let (received_tx, received) = tokio::sync::mpsc::unbounded_channel();
    let consuming = tokio::spawn(async move {
        loop {
            for delivery in subscription.next_batch(100).await.unwrap() {
                delivery.ack().await.unwrap();
                let _ = received_tx.send(Instant::now());
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    (consuming, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_is_woken_at_once_then_once_per_interval() {
    if !POSTGRES.require() {
        return;
    }
    const INTERVAL: Duration = Duration::from_secs(3);
    const BURST: u32 = 40;
    let schema = common::unique("courier_wake");
    let _guard = common::SchemaGuard(schema.clone());
    let (publisher, consumer) = two_processes(&schema, INTERVAL).await;
    let queue = "wake";

    let mut listener = PgListener::connect(&POSTGRES.url()).await.unwrap();
    listener.listen(&format!("{schema}_wake")).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let counting = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Ok(n) = listener.recv().await {
                seen.lock().unwrap().push((Instant::now(), n.payload().to_owned()));
            }
        }
    });

    let (consuming, mut received) = consume(&consumer, queue).await;

    let start = Instant::now();
    let send = |n| publisher.send(queue, Envelope::for_message("test", &Note { n }).unwrap().into_raw(), None);
    send(0).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(2), received.recv()).await;
    assert!(first.is_ok(), "the first publish after a quiet spell must wake the other process at once");
    // Let the consumer find the queue empty again and wait: now only the notification at the end of the interval
    // can tell it of the burst.
    tokio::time::sleep(Duration::from_millis(300)).await;

    for n in 1..=BURST {
        send(n).await.unwrap();
    }
    for n in 1..=BURST {
        let got = tokio::time::timeout(INTERVAL + Duration::from_secs(5), received.recv()).await;
        assert!(got.is_ok(), "message {n} of the burst never woke the other process: its notification was lost");
    }
    consuming.abort();
    // The notification at the end of the interval goes out whether or not the consumer still needed it (it may
    // have taken the burst while busy); count until well after it, anything more would be a notification too
    // many.
    let counted_until = start + INTERVAL + Duration::from_secs(1);
    tokio::time::sleep_until(counted_until.max(Instant::now() + Duration::from_millis(500)).into()).await;
    let elapsed = start.elapsed();
    counting.abort();

    let notifications = seen.lock().unwrap().clone();
    assert!(notifications.iter().all(|(_, queue)| queue == "wake"), "{notifications:?}");
    let allowed = 2 + (elapsed.as_secs_f64() / INTERVAL.as_secs_f64()).ceil() as usize;
    assert!(
        (2..=allowed).contains(&notifications.len()),
        "{} publishes in {elapsed:?} sent {} notifications; with a {INTERVAL:?} interval expected 2..={allowed}",
        BURST + 1,
        notifications.len()
    );
    for pair in notifications.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        // Measured where they arrive, so a stall of a loaded machine shortens a gap; no spacing would put them
        // milliseconds apart.
        assert!(gap >= INTERVAL - Duration::from_secs(1), "notifications only {gap:?} apart");
    }
}

/// A publisher dropped while its last publishes wait for the end of the interval still announces them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_transport_announces_what_it_held_back() {
    if !POSTGRES.require() {
        return;
    }
    let schema = common::unique("courier_wake");
    let _guard = common::SchemaGuard(schema.clone());
    let (publisher, consumer) = two_processes(&schema, Duration::from_secs(30)).await;
    let queue = "dropped";
    let (consuming, mut received) = consume(&consumer, queue).await;
    let send = |n| publisher.send(queue, Envelope::for_message("test", &Note { n }).unwrap().into_raw(), None);
    // The first publish is announced at once and opens the interval.
    send(0).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), received.recv()).await;
    assert!(first.is_ok(), "the first publish must wake the other process");
    // The consumer waits again; this publish waits for the end of the interval, half a minute away, and the
    // transport is dropped first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(1).await.unwrap();
    drop(publisher);
    let second = tokio::time::timeout(Duration::from_secs(10), received.recv()).await;
    consuming.abort();
    assert!(second.is_ok(), "a dropped transport must announce the publishes it held back");
}
