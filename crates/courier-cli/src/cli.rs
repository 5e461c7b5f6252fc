//! The command line, as clap parses it. Every command and flag has a doc comment: it is the `--help` text.

use clap::{Args, Parser, Subcommand};

/// The engine used when neither `--engine` nor `COURIER_ENGINE` is given (except by `demo`).
pub(crate) const DEFAULT_ENGINE: &str = "sqlite://./data/courier.db";

/// Courier: inspect queues, repair dead letters and run the demo shop.
///
/// Set RUST_LOG (e.g. RUST_LOG=courier=debug) to see the engine's and the bus's logs on stderr.
#[derive(Debug, Parser)]
#[command(name = "courier", version, propagate_version = true)]
pub(crate) struct Cli {
    /// Engine URL: sqlite://./data/courier.db, sqlite:///abs/path.db or memory:// [default:
    /// sqlite://./data/courier.db; for `demo`, a fresh SQLite file]
    #[arg(long, global = true, env = "COURIER_ENGINE", value_name = "URL")]
    pub(crate) engine: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// List every queue with its ready, in-flight, delayed and dead-lettered messages.
    Queues(QueuesArgs),
    /// Inspect, replay and purge dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The main job: run the reference shop as a sync chain and as hybrid under the same load and faults, and
    /// compare (a table, and an HTML report with charts).
    Demo(ShopDemoArgs),
    /// Run one service of the reference shop in this process (the others reached by URL).
    #[command(subcommand)]
    Shop(ShopCommand),
    /// The bus on its own: Orders publishes OrderPlaced, Shipping and Email consume it; about 1% of orders are
    /// poison and end in the dead-letter queues (which `dlq` then repairs); ends with a summary.
    BusDemo(DemoArgs),
    /// List saga instances and show one with its history, from a service's saga store.
    #[command(subcommand)]
    Saga(SagaCommand),
    /// Measure publish-to-handle throughput and latency on an engine (default: a fresh SQLite file).
    Bench(BenchArgs),
}

/// `courier bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Messages for the throughput run.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub(crate) messages: u64,
    /// Concurrent publishers (publishes in flight) for the throughput run.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(crate) publishers: u32,
    /// Body size in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 256)]
    pub(crate) payload: usize,
    /// Offered rate for the latency run, messages per second; 0 skips it.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    pub(crate) rate: u64,
    /// Length of the latency run in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub(crate) seconds: f64,
    /// Also run the throughput scenario on the engine's transport alone, without the bus (what the bus costs).
    #[arg(long)]
    pub(crate) alone: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `courier saga ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum SagaCommand {
    /// List saga instances, most recently changed first.
    List(SagaListArgs),
    /// Show one instance: its state and every transition with the message that caused it.
    Show(SagaShowArgs),
}

/// `courier saga list`.
#[derive(Debug, Args)]
pub(crate) struct SagaListArgs {
    /// The service database holding the sagas: sqlite://./data/orders.db or postgres://user@host/db?schema=courier.
    #[arg(long, value_name = "URL", env = "COURIER_SAGA_STORE")]
    pub(crate) store: String,
    /// Only instances of this saga.
    #[arg(long, value_name = "NAME")]
    pub(crate) saga: Option<String>,
    /// Show at most this many instances; 0 = no limit.
    #[arg(long, default_value_t = 100)]
    pub(crate) limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `courier saga show`.
#[derive(Debug, Args)]
pub(crate) struct SagaShowArgs {
    /// The saga's name.
    pub(crate) saga: String,
    /// The instance's correlation id.
    pub(crate) id: String,
    /// The service database holding the sagas: sqlite://./data/orders.db or postgres://user@host/db?schema=courier.
    #[arg(long, value_name = "URL", env = "COURIER_SAGA_STORE")]
    pub(crate) store: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `courier queues`.
#[derive(Debug, Args)]
pub(crate) struct QueuesArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `courier dlq ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List dead letters, one per line, or grouped by failure fingerprint with --group.
    List(ListArgs),
    /// Show one dead letter: every header and its body.
    Show(ShowArgs),
    /// Return dead letters to the queue they failed on, ready now, with their attempts reset.
    Replay(ReplayArgs),
    /// Delete dead letters for good.
    Purge(PurgeArgs),
}

/// `courier dlq list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only dead letters from this queue.
    #[arg(long, value_name = "QUEUE")]
    pub(crate) queue: Option<String>,
    /// Group by failure fingerprint: count, queues, handler, reason, a sample error, first and last failure.
    #[arg(long)]
    pub(crate) group: bool,
    /// Show at most this many dead letters (oldest first), or groups with --group (largest first); 0 = no limit.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub(crate) limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `courier dlq show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The dead-letter entry id (the ID column of `courier dlq list`).
    pub(crate) id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Which dead letters a replay or purge concerns: ids, one failure group, or all (narrowed by `--queue`).
#[derive(Debug, Clone, Args)]
#[group(id = "selection", required = true, multiple = false)]
pub(crate) struct Selection {
    /// Dead-letter entry ids (the ID column of `courier dlq list`).
    #[arg(value_name = "ID")]
    pub(crate) ids: Vec<String>,
    /// Every dead letter with this failure fingerprint (the FINGERPRINT column of `courier dlq list --group`).
    #[arg(long, value_name = "FINGERPRINT")]
    pub(crate) group: Option<String>,
    /// Every dead letter (of --queue, if given).
    #[arg(long)]
    pub(crate) all: bool,
}

/// `courier dlq replay`.
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// Which dead letters.
    #[command(flatten)]
    pub(crate) selection: Selection,
    /// Only dead letters from this queue.
    #[arg(long, value_name = "QUEUE")]
    pub(crate) queue: Option<String>,
    /// Replay at most N messages per second, to spare a recovering service [default: unlimited].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) rate: Option<u32>,
    /// Print what would be replayed (count per queue and type) and change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `courier dlq purge`.
#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// Which dead letters.
    #[command(flatten)]
    pub(crate) selection: Selection,
    /// Only dead letters from this queue.
    #[arg(long, value_name = "QUEUE")]
    pub(crate) queue: Option<String>,
    /// Delete without asking (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `courier demo`.
#[derive(Debug, Args)]
pub(crate) struct ShopDemoArgs {
    /// Seconds of load per mode.
    #[arg(long, value_name = "SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) duration: u64,
    /// Orders placed a second.
    #[arg(long, value_name = "N", default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub(crate) rate: u32,
    /// When shipping is down, as fractions of the run (`FROM..TO`), or `none`.
    #[arg(long, value_name = "FROM..TO", default_value = "0.25..0.55")]
    pub(crate) shipping_down: String,
    /// When the card processor is slow, as fractions of the run (`FROM..TO`), or `none`.
    #[arg(long, value_name = "FROM..TO", default_value = "0.65..0.80")]
    pub(crate) payments_slow: String,
    /// The card processor's latency while slow, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1500)]
    pub(crate) payments_latency_ms: u64,
    /// Which modes to run: `both`, `hybrid` or `sync`.
    #[arg(long, value_name = "MODES", default_value = "both")]
    pub(crate) modes: String,
    /// The services' databases: a directory (a SQLite file per service in a subdirectory per mode; default
    /// ./data/demo-<time>), or a postgres://USER@HOST/DB URL (a schema per service and mode).
    #[arg(long, value_name = "DIR|URL")]
    pub(crate) db: Option<String>,
    /// Where to write the HTML report [default: ./data/courier-demo-<time>.html].
    #[arg(long, value_name = "FILE")]
    pub(crate) report: Option<std::path::PathBuf>,
    /// Print the results as JSON (no progress bar).
    #[arg(long)]
    pub(crate) json: bool,
}

/// `courier shop ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum ShopCommand {
    /// Run one service: edge, orders, inventory, payments, shipping or email.
    Run(ShopRunArgs),
}

/// `courier shop run`.
#[derive(Debug, Args)]
pub(crate) struct ShopRunArgs {
    /// The service: edge, orders, inventory, payments, shipping or email.
    pub(crate) service: String,
    /// Where the service keeps its database: a directory or sqlite://DIR (a SQLite file per service), or a
    /// postgres://USER@HOST/DB URL (a schema per service, `shop_<service>`).
    #[arg(long, value_name = "DIR|URL", default_value = "./data/shop")]
    pub(crate) db: String,
    /// `hybrid` or `sync`.
    #[arg(long, default_value = "hybrid")]
    pub(crate) mode: String,
    /// The host the services are on (each at its default port: edge 8080, orders 8081, inventory 8082,
    /// payments 8083, shipping 8084, email 8085; inventory gRPC 9082).
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
}

/// `courier bus-demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How many orders to place, up to 10 million (about 1% are poison and end in the dead-letter queue).
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub(crate) orders: u64,
    /// Orders per second across all publishers; 0 = as fast as possible.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) rate: u64,
    /// Concurrent publishers in the Orders service.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) publishers: u32,
    /// Print the summary as JSON (no progress bar).
    #[arg(long)]
    pub(crate) json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_selection_is_required_and_exclusive() {
        assert!(Cli::try_parse_from(["courier", "dlq", "replay"]).is_err());
        assert!(Cli::try_parse_from(["courier", "dlq", "replay", "1", "--all"]).is_err());
        assert!(Cli::try_parse_from(["courier", "dlq", "purge", "--group", "ab", "--all"]).is_err());
        assert!(Cli::try_parse_from(["courier", "dlq", "replay", "1", "2", "--rate", "50"]).is_ok());
        assert!(Cli::try_parse_from(["courier", "dlq", "replay", "--all", "--rate", "0"]).is_err());
    }
}
