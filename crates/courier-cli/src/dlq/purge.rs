//! `courier dlq purge`: delete dead letters, after confirmation.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::bail;
use courier::Engine;
use serde::Serialize;

use crate::cli::PurgeArgs;
use crate::output;

/// Deletes the selected dead letters. Without `--yes` it asks on a terminal and refuses otherwise.
pub(crate) async fn run(engine: &Engine, args: &PurgeArgs) -> anyhow::Result<()> {
    let filter = super::filter(&args.selection, args.queue.as_deref());
    let mut not_found = Vec::new();
    if !args.yes || !filter.entry_ids.is_empty() {
        let matching = engine.admin.dead_letters(&filter).await?;
        not_found = super::missing_ids(&filter, &matching);
        if matching.is_empty() {
            return finish(0, not_found, args.json);
        }
        if !args.yes {
            if !std::io::stdin().is_terminal() {
                bail!(
                    "refusing to purge {} dead letter(s) without confirmation: stdin is not a terminal; pass --yes",
                    matching.len()
                );
            }
            let question = format!("Delete {} dead letter(s) for good? [y/N] ", matching.len());
            if !tokio::task::spawn_blocking(move || confirm(&question)).await?? {
                bail!("nothing purged: not confirmed");
            }
        }
    }
    let purged = engine.admin.purge_dead_letters(&filter).await?;
    finish(purged, not_found, args.json)
}

#[derive(Debug, Serialize)]
struct Report {
    purged: u64,
    not_found: Vec<String>,
}

fn finish(purged: u64, not_found: Vec<String>, json: bool) -> anyhow::Result<()> {
    if json {
        output::json(&Report { purged, not_found: not_found.clone() })?;
    } else {
        output::line(format!("Purged {purged} dead letter(s)."))?;
    }
    if !not_found.is_empty() {
        bail!("no dead letter with id: {}", not_found.join(", "));
    }
    Ok(())
}

/// Asks on stderr, reads a line from stdin: only `y` or `yes` confirms.
fn confirm(question: &str) -> anyhow::Result<bool> {
    eprint!("{question}");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}
