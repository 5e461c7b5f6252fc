//! `courier dlq replay`: return dead letters to their queue, optionally rate-limited, or show what would be.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use courier::{DeadLetter, Engine};
use futures::StreamExt;
use serde::Serialize;
use tokio::time::Instant;

use super::Hint;
use crate::cli::ReplayArgs;
use crate::output::{self, Align, Table, or_dash};

/// Replays at once at most this many (the engine groups concurrent writes).
const CONCURRENCY: usize = 16;
/// Above this many messages, a progress bar shows.
const PROGRESS_ABOVE: usize = 5;

/// Replays the selected dead letters (or, with `--dry-run`, says what it would replay).
pub(crate) async fn run(engine: &Engine, hint: &Hint, args: &ReplayArgs) -> anyhow::Result<()> {
    let filter = super::filter(&args.selection, args.queue.as_deref());
    let entries = engine.admin.dead_letters(&filter).await?;
    let not_found = super::missing_ids(&filter, &entries);
    if args.dry_run {
        return dry_run(&entries, not_found, args.json);
    }
    let progress = output::progress(entries.len() as u64, "replayed", !args.json && entries.len() > PROGRESS_ABOVE);
    let interval = args.rate.map(|n| Duration::from_secs(1) / n);
    let start = Instant::now();
    let mut report = Report { replayed: 0, failed: 0, not_found, failures: Vec::new() };
    report.failed = report.not_found.len() as u64;
    let admin = engine.admin.clone();
    let mut replays = futures::stream::iter(entries.iter().enumerate())
        .map(|(i, dl)| {
            let admin = admin.clone();
            async move {
                // Message i starts no earlier than i / rate seconds in: at most `rate` a second.
                if let Some(interval) = interval {
                    tokio::time::sleep_until(start + interval.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX)))
                        .await;
                }
                (dl, admin.replay_dead_letter(&dl.entry_id).await)
            }
        })
        .buffer_unordered(CONCURRENCY);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let interrupted = loop {
        let next = tokio::select! {
            next = replays.next() => next,
            _ = &mut ctrl_c => break true,
        };
        let Some((dl, result)) = next else { break false };
        match result {
            Ok(()) => report.replayed += 1,
            Err(e) => {
                report.failed += 1;
                report.failures.push(Failure { entry_id: dl.entry_id.clone(), error: e.to_string() });
            }
        }
        progress.inc(1);
    };
    progress.finish_and_clear();
    let elapsed = start.elapsed();
    if args.json {
        output::json(&report)?;
    } else {
        output::emit(&render(&report, elapsed, hint))?;
    }
    if interrupted {
        bail!("interrupted: replayed {} of {} before Ctrl-C", report.replayed, entries.len());
    }
    if report.failed > 0 {
        bail!("{} of {} dead letters could not be replayed", report.failed, report.failed + report.replayed);
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct Report {
    replayed: u64,
    failed: u64,
    not_found: Vec<String>,
    failures: Vec<Failure>,
}

#[derive(Debug, Serialize)]
struct Failure {
    entry_id: String,
    error: String,
}

fn render(report: &Report, elapsed: Duration, hint: &Hint) -> String {
    let mut text = format!(
        "Replayed {} dead letter(s) in {:.1}s; {} failed.\n",
        report.replayed,
        elapsed.as_secs_f64(),
        report.failed
    );
    if !report.not_found.is_empty() {
        text.push_str(&format!("No dead letter with id: {}\n", report.not_found.join(", ")));
    }
    for f in report.failures.iter().take(10) {
        text.push_str(&format!("  {}: {}\n", f.entry_id, output::truncate(&f.error, 100)));
    }
    if report.failures.len() > 10 {
        text.push_str(&format!("  ... and {} more (see --json)\n", report.failures.len() - 10));
    }
    if report.replayed > 0 {
        text.push_str(&format!("Watch them drain: {}\n", hint.command("queues")));
    }
    text
}

#[derive(Debug, Serialize)]
struct Plan {
    dry_run: bool,
    would_replay: usize,
    by_queue: Vec<PlanRow>,
    not_found: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
struct PlanRow {
    queue: String,
    message_type: String,
    count: u64,
}

fn plan(entries: &[DeadLetter], not_found: Vec<String>) -> Plan {
    let mut counts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for dl in entries {
        *counts.entry((&dl.queue, dl.message_type())).or_default() += 1;
    }
    let by_queue = counts
        .into_iter()
        .map(|((queue, message_type), count)| PlanRow { queue: queue.into(), message_type: message_type.into(), count })
        .collect();
    Plan { dry_run: true, would_replay: entries.len(), by_queue, not_found }
}

fn dry_run(entries: &[DeadLetter], not_found: Vec<String>, json: bool) -> anyhow::Result<()> {
    let plan = plan(entries, not_found);
    if json {
        return output::json(&plan);
    }
    let mut text = String::new();
    if !plan.by_queue.is_empty() {
        let mut table = Table::new(&[("QUEUE", Align::Left), ("TYPE", Align::Left), ("COUNT", Align::Right)]);
        for row in &plan.by_queue {
            table.row(vec![row.queue.clone(), or_dash(&row.message_type), row.count.to_string()]);
        }
        text.push_str(&table.render());
        text.push('\n');
    }
    if !plan.not_found.is_empty() {
        text.push_str(&format!("No dead letter with id: {}\n", plan.not_found.join(", ")));
    }
    text.push_str(&format!("Would replay {} dead letter(s). Dry run: nothing changed.\n", plan.would_replay));
    output::emit(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::tests::dead_letter;
    use chrono::Utc;

    #[test]
    fn plans_count_per_queue_and_type() {
        let now = Utc::now();
        let entries = [
            dead_letter("1", "shipping", "a", now),
            dead_letter("2", "email", "b", now),
            dead_letter("3", "email", "b", now),
        ];
        let p = plan(&entries, vec!["9".into()]);
        assert_eq!(p.would_replay, 3);
        let counts: Vec<_> = p.by_queue.iter().map(|r| (r.queue.as_str(), r.count)).collect();
        assert_eq!(counts, [("email", 2), ("shipping", 1)]);
        assert_eq!(p.not_found, ["9"]);
    }
}
