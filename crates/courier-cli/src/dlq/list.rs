//! `courier dlq list [--group]`.

use chrono::Utc;
use courier::{DeadLetter, DeadLetterFilter, Engine};

use super::group::{FailureGroup, GroupView, groups, join};
use super::{EntryView, Hint};
use crate::cli::ListArgs;
use crate::output::{self, Align, Table, age, or_dash, truncate};

/// Lists dead letters, or their failure groups with `--group`.
pub(crate) async fn run(engine: &Engine, hint: &Hint, args: &ListArgs) -> anyhow::Result<()> {
    let limit = (args.limit > 0).then_some(args.limit as usize);
    let mut filter = DeadLetterFilter { queue: args.queue.clone(), ..DeadLetterFilter::default() };
    if args.group {
        // Grouping needs every entry; the limit applies to groups.
        let entries = engine.admin.dead_letters(&filter).await?;
        let mut groups = groups(&entries);
        let more = limit.is_some_and(|l| groups.len() > l);
        groups.truncate(limit.unwrap_or(usize::MAX));
        if args.json {
            return output::json(&groups.iter().map(GroupView::new).collect::<Vec<_>>());
        }
        return output::emit(&render_groups(&groups, more, hint));
    }
    // One more than asked for tells whether there are more.
    filter.limit = limit.map(|l| l.saturating_add(1));
    let mut entries = engine.admin.dead_letters(&filter).await?;
    let more = limit.is_some_and(|l| entries.len() > l);
    entries.truncate(limit.unwrap_or(usize::MAX));
    if args.json {
        return output::json(&entries.iter().map(EntryView::new).collect::<Vec<_>>());
    }
    output::emit(&render_entries(&entries, more, hint))
}

fn render_entries(entries: &[DeadLetter], more: bool, hint: &Hint) -> String {
    if entries.is_empty() {
        return "No dead letters.\n".to_owned();
    }
    let now = Utc::now();
    let mut table = Table::new(&[
        ("ID", Align::Right),
        ("QUEUE", Align::Left),
        ("TYPE", Align::Left),
        ("REASON", Align::Left),
        ("ATTEMPTS", Align::Right),
        ("AGE", Align::Right),
        ("FINGERPRINT", Align::Left),
        ("ERROR", Align::Left),
    ]);
    for dl in entries {
        table.row(vec![
            dl.entry_id.clone(),
            dl.queue.clone(),
            or_dash(dl.message_type()),
            or_dash(dl.reason()),
            dl.attempts().to_string(),
            age(dl.dead_lettered_at, now),
            or_dash(dl.fingerprint()),
            or_dash(&truncate(dl.error(), 60)),
        ]);
    }
    let mut text = table.render();
    if more {
        text.push_str(&format!("\nShowing the oldest {}; pass --limit 0 to see all.\n", entries.len()));
    }
    text.push_str(&format!(
        "\nInspect one: {}\nGroup them:  {}\n",
        hint.command("dlq show <ID>"),
        hint.command("dlq list --group")
    ));
    text
}

fn render_groups(groups: &[FailureGroup], more: bool, hint: &Hint) -> String {
    if groups.is_empty() {
        return "No dead letters.\n".to_owned();
    }
    let now = Utc::now();
    let mut table = Table::new(&[
        ("FINGERPRINT", Align::Left),
        ("COUNT", Align::Right),
        ("QUEUES", Align::Left),
        ("HANDLER", Align::Left),
        ("REASON", Align::Left),
        ("FIRST", Align::Right),
        ("LAST", Align::Right),
        ("SAMPLE ERROR", Align::Left),
    ]);
    for g in groups {
        table.row(vec![
            or_dash(&g.fingerprint),
            g.count.to_string(),
            truncate(&join(&g.queues), 30),
            or_dash(&truncate(&join(&g.handlers), 30)),
            or_dash(&join(&g.reasons)),
            format!("{} ago", age(g.first_failure, now)),
            format!("{} ago", age(g.last_failure, now)),
            or_dash(&truncate(&g.sample_error, 60)),
        ]);
    }
    let mut text = table.render();
    if more {
        text.push_str(&format!("\nShowing the {} largest groups; pass --limit 0 to see all.\n", groups.len()));
    }
    let example = groups.iter().map(|g| g.fingerprint.as_str()).find(|f| !f.is_empty()).unwrap_or("<FINGERPRINT>");
    text.push_str(&format!(
        "\nAfter fixing the cause, replay a group: {}\n",
        hint.command(&format!("dlq replay --group {example} --dry-run"))
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::tests::dead_letter;

    #[test]
    fn renders_entries_and_groups() {
        let hint = Hint::new("memory://");
        let entries = [dead_letter("7", "shipping", "abc", Utc::now())];
        let text = render_entries(&entries, true, &hint);
        assert!(text.contains("shop.order.placed.v1") && text.contains("order 7 has a zero total"), "{text}");
        assert!(text.contains("--limit 0"));
        let text = render_groups(&groups(&entries), false, &hint);
        assert!(text.contains("courier --engine memory:// dlq replay --group abc --dry-run"), "{text}");
        assert_eq!(render_groups(&[], false, &hint), "No dead letters.\n");
    }
}
