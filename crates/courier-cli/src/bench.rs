//! `courier bench`: publish-to-handle throughput and latency on any engine URL, with a progress bar.

use std::io::IsTerminal;

use courier_bench::{Figures, bus_latency_at_rate, bus_throughput, transport_throughput};

use crate::cli::BenchArgs;
use crate::output::{emit, json, line, progress};

pub(crate) async fn run(engine_url: Option<&str>, args: &BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = match engine_url {
        Some(url) => url.to_owned(),
        None => format!("sqlite://{}", dir.path().join("bench.db").display()),
    };
    let engine = crate::connect::any(&url).await?;
    if !args.json {
        line(format!("Engine: {url}; {}-byte messages", args.payload))?;
    }
    let bar = progress(args.messages, "messages", !args.json && std::io::stderr().is_terminal());
    let b = bar.clone();
    let scenario = format!("throughput, {} publishers", args.publishers);
    let throughput =
        bus_throughput(&scenario, &engine, args.messages, args.publishers as usize, args.payload, move |n| {
            b.set_position(n)
        })
        .await?;
    bar.finish_and_clear();
    let mut rows = vec![throughput];
    if args.alone {
        if !args.json {
            line("Transport alone, no bus...")?;
        }
        let scenario = format!("transport alone, {} publishers", args.publishers);
        rows.push(
            transport_throughput(&scenario, &engine, args.messages, args.publishers as usize, args.payload).await?,
        );
    }
    if args.rate > 0 {
        if !args.json {
            line(format!("Latency run: {} msg/s for {} s...", args.rate, args.seconds))?;
        }
        let scenario = format!("latency @ {}/s", args.rate);
        rows.push(bus_latency_at_rate(&scenario, &engine, args.rate, args.seconds, args.payload).await?);
    }
    if args.json {
        return json(&serde_json::json!({ "engine": url, "payload_bytes": args.payload, "rows": rows }));
    }
    let mut table = String::from(Figures::header());
    for r in &rows {
        table.push('\n');
        table.push_str(&r.row());
    }
    table.push('\n');
    emit(&table)
}
