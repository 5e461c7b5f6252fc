//! The demo's closing summary, as a table or JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::output::{Align, Table};

/// What a demo run did.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    /// The engine URL.
    pub(crate) engine: String,
    /// Orders placed (each published once, a few twice).
    pub(crate) orders: u64,
    /// Concurrent publishers.
    pub(crate) publishers: u32,
    /// The publish rate asked for, orders a second (0 = as fast as possible).
    pub(crate) rate: u64,
    /// Orders published a second time (simulated lost acknowledgements).
    pub(crate) duplicates_published: u64,
    /// Orders Shipping shipped.
    pub(crate) shipments: u64,
    /// Shipments per carrier.
    pub(crate) shipments_by_carrier: BTreeMap<String, u64>,
    /// Orders Email sent a receipt for.
    pub(crate) emails: u64,
    /// Distinct recipients of those emails.
    pub(crate) email_recipients: u64,
    /// Deliveries of an order a service had already handled, recognised and skipped.
    pub(crate) duplicates_absorbed: u64,
    /// Failures that a retry fixed.
    pub(crate) transient_failures_retried: u64,
    /// Orders with a message in a dead-letter queue.
    pub(crate) dead_lettered: u64,
    /// Messages dead-lettered (one per consuming service of a poison order).
    pub(crate) dead_lettered_messages: u64,
    /// Publish-to-handle latency, from the message's `time` attribute to its handling.
    pub(crate) latency_ms: Latency,
    /// From the first publish to the last settled delivery.
    pub(crate) elapsed_secs: f64,
    /// Orders a second over `elapsed_secs`.
    pub(crate) throughput_orders_per_sec: f64,
    /// Where to look next.
    pub(crate) hint: String,
}

/// Latency percentiles in milliseconds (0 when nothing was handled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Latency {
    /// Median.
    pub(crate) p50: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// Slowest.
    pub(crate) max: f64,
}

impl Latency {
    /// Percentiles of sorted microsecond samples (nearest rank).
    pub(crate) fn of_sorted_micros(sorted: &[u64]) -> Self {
        let rank = |p: f64| {
            let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
            sorted.get(i).map_or(0.0, |us| *us as f64 / 1000.0)
        };
        Self { p50: rank(0.50), p99: rank(0.99), max: rank(1.0) }
    }
}

/// Orders a second.
pub(crate) fn throughput(orders: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { orders as f64 / secs } else { 0.0 }
}

impl Summary {
    /// The summary as a table, then the hint.
    pub(crate) fn render(&self) -> String {
        let pace = if self.rate == 0 { "as fast as possible".to_owned() } else { format!("{}/s", self.rate) };
        let carriers: Vec<String> = self.shipments_by_carrier.iter().map(|(c, n)| format!("{n} {c}")).collect();
        let rows = [
            ("Orders placed", format!("{} ({} publishers, {pace})", self.orders, self.publishers)),
            ("Published twice", format!("{} (publisher retries after a lost ack)", self.duplicates_published)),
            (
                "Shipments",
                format!("{} ({})", self.shipments, if carriers.is_empty() { "-".into() } else { carriers.join(", ") }),
            ),
            ("Emails", format!("{} (to {} customers)", self.emails, self.email_recipients)),
            ("Duplicates absorbed", self.duplicates_absorbed.to_string()),
            ("Transient failures retried", self.transient_failures_retried.to_string()),
            ("Dead-lettered", format!("{} orders ({} messages)", self.dead_lettered, self.dead_lettered_messages)),
            ("Latency p50", format!("{:.1} ms", self.latency_ms.p50)),
            ("Latency p99", format!("{:.1} ms", self.latency_ms.p99)),
            ("Latency max", format!("{:.1} ms", self.latency_ms.max)),
            ("Elapsed", format!("{:.2} s", self.elapsed_secs)),
            ("Throughput", format!("{:.0} orders/s", self.throughput_orders_per_sec)),
        ];
        let mut table = Table::new(&[("", Align::Left), ("", Align::Left)]);
        for (name, value) in rows {
            table.row(vec![name.to_owned(), value]);
        }
        // The header row of this two-column table is blank: drop it.
        let text = table.render();
        let body = text.split_once('\n').map_or(text.as_str(), |(_, rest)| rest);
        format!("{body}\nSee the poison orders grouped by failure: {}\n", self.hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let samples: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(Latency::of_sorted_micros(&samples), Latency { p50: 50.0, p99: 99.0, max: 100.0 });
        assert_eq!(Latency::of_sorted_micros(&[]), Latency::default());
        assert_eq!(Latency::of_sorted_micros(&[1500]), Latency { p50: 1.5, p99: 1.5, max: 1.5 });
    }
}
