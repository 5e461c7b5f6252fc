//! `courier demo`: a small shop on one engine. Orders publishes `OrderPlaced`; Shipping and Email, each its own bus,
//! consume it; about 1% of orders are poison and end in the dead-letter queues. Ends with a summary.

mod email;
mod ledger;
mod load;
mod order;
mod shipping;
mod summary;
mod tracker;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use courier::{Bus, Retry};
use tokio::time::Instant;
use uuid::Uuid;

use self::ledger::{Ledger, Stats};
use self::order::PlannedOrder;
use self::summary::{Latency, Summary};
use self::tracker::Tracker;
use crate::cli::DemoArgs;
use crate::{connect, output};

/// The Shipping service's name and queue.
pub(crate) const SHIPPING: &str = "shipping";
/// The Email service's name and queue.
pub(crate) const EMAIL: &str = "email";
/// The Orders service's name.
const ORDERS: &str = "orders";
/// Give up when nothing was settled for this long after the last publish.
const STALL: Duration = Duration::from_secs(30);

/// Runs the demo on the engine at `engine_url`, or on a fresh SQLite file if `None`.
pub(crate) async fn run(engine_url: Option<&str>, args: &DemoArgs) -> anyhow::Result<()> {
    let url = match engine_url {
        Some(url) => url.to_owned(),
        None => format!("sqlite://./data/demo-{}.db", chrono::Utc::now().format("%Y%m%d-%H%M%S-%3f")),
    };
    let note = if engine_url.is_some() {
        format!("Engine: {url}")
    } else {
        format!("Engine: {url} (a fresh SQLite file; pass --engine URL to use another)")
    };
    if args.json {
        eprintln!("{note}");
    } else {
        output::line(&note)?;
    }
    let engine = connect::any(&url).await?;

    let planned = Arc::new(order::plan(args.orders));
    let ids: HashSet<Uuid> = planned.iter().map(|p| p.order.order_id).collect();
    let tracker = Arc::new(Tracker::new(&ids));
    let stats = Arc::new(Stats::default());
    let shipments = Arc::new(Ledger::default());
    let emails = Arc::new(Ledger::default());
    // Quick retries so the demo ends in seconds; poison orders are permanent failures and skip them.
    let retry = Retry::immediate(2).then_backoff(3, Duration::from_millis(100));
    let shipping = Bus::builder(SHIPPING)
        .engine_instance(engine.clone())
        .consume(shipping::ship(shipments.clone(), stats.clone()))
        .retry(retry.clone())
        .observer(tracker.clone())
        .start()
        .await?;
    let email = Bus::builder(EMAIL)
        .engine_instance(engine.clone())
        .consume(email::send_receipt(emails.clone(), stats.clone()))
        .retry(retry)
        .observer(tracker.clone())
        .start()
        .await?;
    let orders = Bus::builder(ORDERS).engine_instance(engine).start().await?;

    if !args.json {
        let pace = if args.rate == 0 { "as fast as possible".to_owned() } else { format!("{} a second", args.rate) };
        output::line(format!("Placing {} orders with {} publishers, {pace}...", args.orders, args.publishers))?;
    }
    let progress = output::progress(args.orders, "orders handled", !args.json);
    let result = drive(&orders, planned.clone(), args, &tracker, &progress).await;
    progress.finish_and_clear();
    for bus in [&orders, &shipping, &email] {
        bus.shutdown().await;
    }
    let elapsed = result?;

    let done = tracker.progress();
    let summary = Summary {
        hint: format!("courier --engine {url} dlq list --group"),
        engine: url,
        orders: args.orders,
        publishers: args.publishers,
        rate: args.rate,
        duplicates_published: planned.iter().filter(|p| p.duplicate).count() as u64,
        shipments: shipments.count_of(&ids),
        shipments_by_carrier: shipments.tally(&ids, |s| s.carrier.to_owned()),
        emails: emails.count_of(&ids),
        email_recipients: emails.tally(&ids, |e| e.to.clone()).len() as u64,
        duplicates_absorbed: shipments.duplicates() + emails.duplicates(),
        transient_failures_retried: stats.transient_failures(),
        dead_lettered: done.dead_orders,
        dead_lettered_messages: done.dead_messages,
        latency_ms: Latency::of_sorted_micros(&stats.sorted_latencies()),
        elapsed_secs: elapsed.as_secs_f64(),
        throughput_orders_per_sec: summary::throughput(args.orders, elapsed),
    };
    if args.json { output::json(&summary) } else { output::emit(&format!("\n{}", summary.render())) }
}

/// Publishes the orders and waits until every delivery of them was handled or dead-lettered; returns how long
/// that took.
async fn drive(
    bus: &Bus,
    planned: Arc<Vec<PlannedOrder>>,
    args: &DemoArgs,
    tracker: &Tracker,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Duration> {
    // Each publish (the duplicates twice) reaches both consumers.
    let copies = planned.iter().map(|p| if p.duplicate { 2 } else { 1 }).sum::<u64>();
    let expected = 2 * copies;
    let start = Instant::now();
    let load = load::run(bus.clone(), planned, args.rate, args.publishers);
    tokio::pin!(load);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let (mut loaded, mut seen, mut last_change) = (false, 0, Instant::now());
    loop {
        let now = tracker.progress();
        progress.set_position(now.completed);
        if loaded && now.deliveries >= expected {
            return Ok(start.elapsed());
        }
        if now.deliveries != seen {
            (seen, last_change) = (now.deliveries, Instant::now());
        } else if loaded && last_change.elapsed() > STALL {
            bail!(
                "the demo stalled: {} of {expected} deliveries settled and none for {STALL:?}; is another process \
                 consuming the 'shipping' or 'email' queue of this engine?",
                now.deliveries
            );
        }
        tokio::select! {
            done = &mut load, if !loaded => {
                done?;
                loaded = true;
            }
            _ = &mut ctrl_c => bail!("interrupted: {} of {} orders handled", now.completed, args.orders),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}
