//! The `courier` command: inspect queues, repair dead letters, run the demo shop. `courier --help` lists it all.

mod bench;
mod cli;
mod connect;
mod demo;
mod dlq;
mod output;
mod queues;
mod saga;
mod shop;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, DEFAULT_ENGINE};

/// Courier allocates small objects on one thread and frees them on another (a message is built by a publisher
/// and dropped by a consumer task): glibc's allocator serialises that on its arena locks, which measured about
/// half of the client's CPU time per message on 2 cores. mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let url = cli.engine.as_deref().unwrap_or(DEFAULT_ENGINE);
    match &cli.command {
        Command::Queues(args) => queues::run(&connect::existing(url).await?, url, args).await,
        Command::Dlq(command) => dlq::run(&connect::existing(url).await?, url, command).await,
        Command::Demo(args) => shop::demo(cli.engine.as_deref(), args).await,
        Command::Shop(command) => shop::run(cli.engine.as_deref(), command).await,
        Command::BusDemo(args) => demo::run(cli.engine.as_deref(), args).await,
        Command::Saga(command) => saga::run(command).await,
        Command::Bench(args) => bench::run(cli.engine.as_deref(), args).await,
    }
}

/// The error and its causes, each cause once: Courier's errors already print their source, so a cause whose text
/// is already shown is skipped.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

/// Logs to stderr, errors only unless `RUST_LOG` says otherwise (the demo dead-letters on purpose).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
