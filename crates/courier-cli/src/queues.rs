//! `courier queues`: every queue with its depth.

use courier::{Engine, QueueStats};

use crate::cli::QueuesArgs;
use crate::output::{self, Align, Table};

/// Prints every queue of the engine as a table or, with `--json`, a JSON array.
pub(crate) async fn run(engine: &Engine, url: &str, args: &QueuesArgs) -> anyhow::Result<()> {
    let queues = engine.admin.queues().await?;
    if args.json {
        return output::json(&queues);
    }
    if queues.is_empty() {
        return output::line(format!("No queues yet on {url}."));
    }
    output::emit(&render(&queues))
}

fn render(queues: &[QueueStats]) -> String {
    let mut table = Table::new(&[
        ("QUEUE", Align::Left),
        ("READY", Align::Right),
        ("IN FLIGHT", Align::Right),
        ("DELAYED", Align::Right),
        ("DEAD-LETTERED", Align::Right),
    ]);
    let mut total = QueueStats { name: "total".to_owned(), ..QueueStats::default() };
    for q in queues {
        table.row(vec![
            q.name.clone(),
            q.ready.to_string(),
            q.in_flight.to_string(),
            q.delayed.to_string(),
            q.dead_lettered.to_string(),
        ]);
        total.ready += q.ready;
        total.in_flight += q.in_flight;
        total.delayed += q.delayed;
        total.dead_lettered += q.dead_lettered;
    }
    if queues.len() > 1 {
        table.row(vec![
            format!("({} queues)", queues.len()),
            total.ready.to_string(),
            total.in_flight.to_string(),
            total.delayed.to_string(),
            total.dead_lettered.to_string(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_follow_the_queues() {
        let q = |name: &str, ready| QueueStats { name: name.into(), ready, dead_lettered: 1, ..Default::default() };
        let text = render(&[q("email", 2), q("shipping", 3)]);
        let last = text.lines().last().unwrap();
        assert!(last.starts_with("(2 queues)") && last.contains(" 5 ") && last.ends_with(" 2"), "{text}");
    }
}
