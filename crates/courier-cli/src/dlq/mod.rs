//! `courier dlq`: list, show, replay and purge dead letters through the engine's [`Admin`](courier::Admin) view.

mod group;
mod list;
mod purge;
mod replay;
mod show;

use courier::{DeadLetter, DeadLetterFilter, Engine};
use serde::Serialize;

use crate::cli::{DlqCommand, Selection};
use crate::output;

/// Runs one `courier dlq` command against `engine` (reached at `url`).
pub(crate) async fn run(engine: &Engine, url: &str, command: &DlqCommand) -> anyhow::Result<()> {
    let hint = Hint::new(url);
    match command {
        DlqCommand::List(args) => list::run(engine, &hint, args).await,
        DlqCommand::Show(args) => show::run(engine, args).await,
        DlqCommand::Replay(args) => replay::run(engine, &hint, args).await,
        DlqCommand::Purge(args) => purge::run(engine, args).await,
    }
}

/// The filter a selection (ids, a fingerprint or all) and an optional queue describe.
pub(crate) fn filter(selection: &Selection, queue: Option<&str>) -> DeadLetterFilter {
    let mut entry_ids = selection.ids.clone();
    entry_ids.sort();
    entry_ids.dedup();
    DeadLetterFilter { queue: queue.map(str::to_owned), fingerprint: selection.group.clone(), entry_ids, limit: None }
}

/// Ids asked for by name that are not among `found`, so a mistyped id is reported instead of silently skipped.
pub(crate) fn missing_ids(filter: &DeadLetterFilter, found: &[DeadLetter]) -> Vec<String> {
    filter.entry_ids.iter().filter(|id| !found.iter().any(|d| &d.entry_id == *id)).cloned().collect()
}

/// Builds follow-up commands to suggest, naming the engine unless it is the default one.
#[derive(Debug)]
pub(crate) struct Hint {
    prefix: String,
}

impl Hint {
    /// Hints for the engine at `url`.
    pub(crate) fn new(url: &str) -> Self {
        let prefix =
            if url == crate::cli::DEFAULT_ENGINE { "courier".to_owned() } else { format!("courier --engine {url}") };
        Self { prefix }
    }

    /// `courier [--engine URL] <rest>`.
    pub(crate) fn command(&self, rest: &str) -> String {
        format!("{} {rest}", self.prefix)
    }
}

/// One dead letter as JSON output shows it.
#[derive(Debug, Serialize)]
pub(crate) struct EntryView {
    entry_id: String,
    queue: String,
    message_id: String,
    message_type: String,
    reason: String,
    error_kind: String,
    handler: String,
    attempts: u32,
    fingerprint: String,
    error: String,
    dead_lettered_at: String,
    first_failure: String,
    last_failure: String,
}

impl EntryView {
    /// The view of `dl`; failure times fall back to when it was dead-lettered.
    pub(crate) fn new(dl: &DeadLetter) -> Self {
        Self {
            entry_id: dl.entry_id.clone(),
            queue: dl.queue.clone(),
            message_id: dl.message.id().unwrap_or_default().to_owned(),
            message_type: dl.message_type().to_owned(),
            reason: dl.reason().to_owned(),
            error_kind: dl.message.header(courier::dead_letter_attr::ERROR_KIND).unwrap_or_default().to_owned(),
            handler: dl.handler().to_owned(),
            attempts: dl.attempts(),
            fingerprint: dl.fingerprint().to_owned(),
            error: dl.error().to_owned(),
            dead_lettered_at: output::timestamp(dl.dead_lettered_at),
            first_failure: output::timestamp(dl.first_failure().unwrap_or(dl.dead_lettered_at)),
            last_failure: output::timestamp(dl.last_failure().unwrap_or(dl.dead_lettered_at)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use courier::{RawMessage, attr, dead_letter_attr as dl};

    /// A dead letter as the bus writes one.
    pub(crate) fn dead_letter(id: &str, queue: &str, fingerprint: &str, at: DateTime<Utc>) -> DeadLetter {
        let mut message = RawMessage::default();
        for (k, v) in [
            (attr::ID, format!("msg-{id}")),
            (attr::TYPE, "shop.order.placed.v1".to_owned()),
            (dl::REASON, "handler-failed".to_owned()),
            (dl::ERROR, format!("order {id} has a zero total")),
            (dl::HANDLER, format!("{queue}::handle")),
            (dl::ATTEMPTS, "1".to_owned()),
            (dl::FINGERPRINT, fingerprint.to_owned()),
        ] {
            message.headers.insert(k.to_owned(), v);
        }
        DeadLetter { entry_id: id.to_owned(), queue: queue.to_owned(), dead_lettered_at: at, message }
    }

    #[test]
    fn selections_become_filters() {
        let sel = Selection { ids: vec!["2".into(), "1".into(), "2".into()], group: None, all: false };
        let f = filter(&sel, Some("shipping"));
        assert_eq!(f.entry_ids, ["1", "2"]);
        assert_eq!(f.queue.as_deref(), Some("shipping"));
        let found = [dead_letter("1", "shipping", "f", Utc::now())];
        assert_eq!(missing_ids(&f, &found), ["2"]);
    }

    #[test]
    fn hints_name_a_non_default_engine() {
        assert_eq!(Hint::new(crate::cli::DEFAULT_ENGINE).command("dlq list"), "courier dlq list");
        assert_eq!(Hint::new("memory://").command("dlq list"), "courier --engine memory:// dlq list");
    }
}
