//! Failure groups: dead letters with the same fingerprint failed the same way, so they are fixed (and replayed)
//! together.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use courier::DeadLetter;
use serde::Serialize;

use crate::output;

/// The dead letters sharing one failure fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FailureGroup {
    /// The fingerprint (empty if the entries carry none).
    pub(crate) fingerprint: String,
    /// How many dead letters.
    pub(crate) count: u64,
    /// The queues they failed on.
    pub(crate) queues: BTreeSet<String>,
    /// Their message types.
    pub(crate) message_types: BTreeSet<String>,
    /// The failing handler(s).
    pub(crate) handlers: BTreeSet<String>,
    /// Why they were dead-lettered.
    pub(crate) reasons: BTreeSet<String>,
    /// The error of the most recent one.
    pub(crate) sample_error: String,
    /// The earliest first failure.
    pub(crate) first_failure: DateTime<Utc>,
    /// The latest last failure.
    pub(crate) last_failure: DateTime<Utc>,
}

/// Groups dead letters by fingerprint, largest group first (then most recent failure first).
pub(crate) fn groups(entries: &[DeadLetter]) -> Vec<FailureGroup> {
    let mut by_fingerprint: BTreeMap<&str, FailureGroup> = BTreeMap::new();
    for dl in entries {
        let first = dl.first_failure().unwrap_or(dl.dead_lettered_at);
        let last = dl.last_failure().unwrap_or(dl.dead_lettered_at);
        let group = by_fingerprint.entry(dl.fingerprint()).or_insert_with(|| FailureGroup {
            fingerprint: dl.fingerprint().to_owned(),
            count: 0,
            queues: BTreeSet::new(),
            message_types: BTreeSet::new(),
            handlers: BTreeSet::new(),
            reasons: BTreeSet::new(),
            sample_error: String::new(),
            first_failure: first,
            last_failure: last,
        });
        group.count += 1;
        group.queues.insert(dl.queue.clone());
        insert_nonempty(&mut group.message_types, dl.message_type());
        insert_nonempty(&mut group.handlers, dl.handler());
        insert_nonempty(&mut group.reasons, dl.reason());
        group.first_failure = group.first_failure.min(first);
        if last >= group.last_failure || group.sample_error.is_empty() {
            group.last_failure = group.last_failure.max(last);
            group.sample_error = dl.error().to_owned();
        }
    }
    let mut groups: Vec<FailureGroup> = by_fingerprint.into_values().collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(b.last_failure.cmp(&a.last_failure)));
    groups
}

fn insert_nonempty(set: &mut BTreeSet<String>, value: &str) {
    if !value.is_empty() {
        set.insert(value.to_owned());
    }
}

/// A failure group as JSON output shows it.
#[derive(Debug, Serialize)]
pub(crate) struct GroupView {
    fingerprint: String,
    count: u64,
    queues: Vec<String>,
    message_types: Vec<String>,
    handler: String,
    reason: String,
    sample_error: String,
    first_failure: String,
    last_failure: String,
}

impl GroupView {
    /// The view of `g`.
    pub(crate) fn new(g: &FailureGroup) -> Self {
        Self {
            fingerprint: g.fingerprint.clone(),
            count: g.count,
            queues: g.queues.iter().cloned().collect(),
            message_types: g.message_types.iter().cloned().collect(),
            handler: join(&g.handlers),
            reason: join(&g.reasons),
            sample_error: g.sample_error.clone(),
            first_failure: output::timestamp(g.first_failure),
            last_failure: output::timestamp(g.last_failure),
        }
    }
}

/// The members of a set, comma separated.
pub(crate) fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::tests::dead_letter;

    #[test]
    fn groups_by_fingerprint_largest_first() {
        let t0 = Utc::now() - chrono::Duration::minutes(10);
        let entries = [
            dead_letter("1", "email", "bbb", t0),
            dead_letter("2", "shipping", "aaa", t0 + chrono::Duration::minutes(1)),
            dead_letter("3", "shipping", "aaa", t0 + chrono::Duration::minutes(2)),
            dead_letter("4", "shipping.v2", "aaa", t0 + chrono::Duration::minutes(3)),
        ];
        let groups = groups(&entries);
        assert_eq!(groups.len(), 2);
        let top = &groups[0];
        assert_eq!((top.fingerprint.as_str(), top.count), ("aaa", 3));
        assert_eq!(join(&top.queues), "shipping, shipping.v2");
        assert_eq!(top.first_failure, t0 + chrono::Duration::minutes(1));
        assert_eq!(top.last_failure, t0 + chrono::Duration::minutes(3));
        assert_eq!(top.sample_error, "order 4 has a zero total");
        assert_eq!(groups[1].count, 1);
    }
}
