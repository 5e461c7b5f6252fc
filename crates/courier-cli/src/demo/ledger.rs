//! What the demo's services remember: one record per order, and how many duplicates they absorbed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use courier::Context;
use uuid::Uuid;

/// A service's records keyed by order id. Recording an order twice keeps the first record and counts a duplicate:
/// an idempotent consumer, so at-least-once delivery has exactly-once effects.
#[derive(Debug)]
pub(crate) struct Ledger<T> {
    records: Mutex<HashMap<Uuid, T>>,
    duplicates: AtomicU64,
}

impl<T> Default for Ledger<T> {
    fn default() -> Self {
        Self { records: Mutex::new(HashMap::new()), duplicates: AtomicU64::new(0) }
    }
}

impl<T> Ledger<T> {
    /// Records `value` for `order` unless it is already there; returns whether it was new.
    pub(crate) fn record(&self, order: Uuid, value: T) -> bool {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.contains_key(&order) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        records.insert(order, value);
        true
    }

    /// How many of `orders` have a record.
    pub(crate) fn count_of(&self, orders: &HashSet<Uuid>) -> u64 {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.keys().filter(|id| orders.contains(id)).count() as u64
    }

    /// The records of `orders`, counted by `key` (e.g. shipments per carrier).
    pub(crate) fn tally(&self, orders: &HashSet<Uuid>, key: impl Fn(&T) -> String) -> BTreeMap<String, u64> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let mut counts = BTreeMap::new();
        for (_, value) in records.iter().filter(|(id, _)| orders.contains(id)) {
            *counts.entry(key(value)).or_default() += 1;
        }
        counts
    }

    /// How many duplicates were absorbed.
    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
}

/// Measurements shared by the services: publish-to-handle latencies and transient failures.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    latencies_us: Mutex<Vec<u64>>,
    transient_failures: AtomicU64,
}

impl Stats {
    /// Records the time from the message's `time` attribute (when it was published) to now.
    pub(crate) fn handled(&self, ctx: &Context) {
        let micros = (Utc::now() - ctx.envelope().time).num_microseconds().unwrap_or(0).max(0) as u64;
        self.latencies_us.lock().unwrap_or_else(|p| p.into_inner()).push(micros);
    }

    /// Counts a failure that a retry will fix.
    pub(crate) fn transient_failure(&self) {
        self.transient_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Transient failures so far.
    pub(crate) fn transient_failures(&self) -> u64 {
        self.transient_failures.load(Ordering::Relaxed)
    }

    /// The latencies so far, in microseconds, sorted.
    pub(crate) fn sorted_latencies(&self) -> Vec<u64> {
        let mut all = self.latencies_us.lock().unwrap_or_else(|p| p.into_inner()).clone();
        all.sort_unstable();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_absorbed() {
        let ledger = Ledger::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(ledger.record(a, 1));
        assert!(!ledger.record(a, 2));
        assert!(ledger.record(b, 3));
        assert_eq!(ledger.duplicates(), 1);
        assert_eq!(ledger.count_of(&HashSet::from([a])), 1);
        assert_eq!(ledger.tally(&HashSet::from([a, b]), |v| (v % 2).to_string()), BTreeMap::from([("1".into(), 2)]));
    }
}
