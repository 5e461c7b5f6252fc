//! `courier demo` (the shop, sync chain vs hybrid, with a report) and `courier shop run <service>`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use courier_shop::demo::{DemoConfig, Progress};
use courier_shop::{Addresses, Databases, Mode, Service, Shop, ShopConfig};

use crate::cli::{ShopCommand, ShopDemoArgs, ShopRunArgs};
use crate::output;

/// Parses `FROM..TO` (fractions of the run) or `none`.
fn window(text: &str, flag: &str) -> anyhow::Result<Option<(f64, f64)>> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let parsed =
        text.split_once("..").and_then(|(a, b)| Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?)));
    match parsed {
        Some((from, to)) if (0.0..=1.0).contains(&from) && (0.0..=1.0).contains(&to) && from < to => {
            Ok(Some((from, to)))
        }
        _ => bail!("--{flag} {text:?}: write FROM..TO with 0 <= FROM < TO <= 1 (fractions of the run), or none"),
    }
}

fn modes(text: &str) -> anyhow::Result<Vec<Mode>> {
    Ok(match text {
        "both" => vec![Mode::SyncChain, Mode::Hybrid],
        "hybrid" => vec![Mode::Hybrid],
        "sync" => vec![Mode::SyncChain],
        other => bail!("--modes {other:?}: write both, hybrid or sync"),
    })
}

fn mode(text: &str) -> anyhow::Result<Mode> {
    Ok(match text {
        "hybrid" => Mode::Hybrid,
        "sync" => Mode::SyncChain,
        other => bail!("--mode {other:?}: write hybrid or sync"),
    })
}

/// `courier demo`.
pub(crate) async fn demo(engine_url: Option<&str>, args: &ShopDemoArgs) -> anyhow::Result<()> {
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
    let mut data_dir = PathBuf::from(format!("./data/demo-{stamp}"));
    let mut database_url = None;
    match args.db.as_deref().map(Databases::parse).transpose()? {
        Some(Databases::Sqlite(dir)) => data_dir = dir,
        Some(Databases::Postgres(url)) => database_url = Some(url),
        None => {}
    }
    let mut config = DemoConfig::new(&data_dir);
    config.engine_url = engine_url.map(str::to_owned);
    config.database_url = database_url.clone();
    config.duration = Duration::from_secs(args.duration);
    config.rate = args.rate;
    config.shipping_down = window(&args.shipping_down, "shipping-down")?;
    config.payments_slow = window(&args.payments_slow, "payments-slow")?;
    config.payments_latency = Duration::from_millis(args.payments_latency_ms);
    config.modes = modes(&args.modes)?;
    let report_path = args.report.clone().unwrap_or_else(|| PathBuf::from(format!("./data/courier-demo-{stamp}.html")));

    if !args.json {
        output::line(format!(
            "The reference shop, {} orders/s for {} s per mode ({}), bus: {}; data: {}",
            args.rate,
            args.duration,
            config.modes.iter().map(ToString::to_string).collect::<Vec<_>>().join(" then "),
            engine_url.unwrap_or("a fresh SQLite file per mode"),
            match database_url {
                Some(url) => Databases::Postgres(url).to_string(),
                None => format!("{} (a subdirectory per mode)", data_dir.display()),
            }
        ))?;
    }
    let bar = output::progress(0, "", !args.json);
    let show = |p: Progress| {
        let (label, done, total) = match p {
            Progress::Loading { mode, done, total } => (format!("{mode}: orders placed"), done, total),
            Progress::Draining { mode, done, total } => (format!("{mode}: accepted orders ended"), done, total),
        };
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(label);
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = courier_shop::demo::run(&config, &show).await;
    bar.finish_and_clear();
    let report = report?;
    if let Some(parent) = report_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&report_path, report.html()).with_context(|| format!("writing {}", report_path.display()))?;
    if args.json {
        return output::json(&report);
    }
    output::emit(&format!("\n{}\nReport with charts: {}\n", report.table(), report_path.display()))
}

/// `courier shop ...`.
pub(crate) async fn run(engine_url: Option<&str>, command: &ShopCommand) -> anyhow::Result<()> {
    match command {
        ShopCommand::Run(args) => run_service(engine_url, args).await,
    }
}

async fn run_service(engine_url: Option<&str>, args: &ShopRunArgs) -> anyhow::Result<()> {
    let service = Service::from_name(&args.service)?;
    let db = Databases::parse(&args.db).with_context(|| format!("--db {:?}", args.db))?;
    let mode = mode(&args.mode)?;
    let engine = match (engine_url, &db) {
        (Some(url), _) => url.to_owned(),
        (None, Databases::Sqlite(dir)) => format!("sqlite://{}", dir.join("bus.db").display()),
        (None, Databases::Postgres(url)) => url.clone(),
    };
    let addresses = Addresses::defaults(&args.host);
    let listen = format!("{}:{}", args.host, service.default_port());
    let listener =
        tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let config = ShopConfig::new(db.clone(), &engine, mode);
    let grpc = if service == Service::Inventory {
        let listen = format!("{}:{}", args.host, courier_shop::INVENTORY_GRPC_PORT);
        Some(tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?)
    } else {
        None
    };
    let shop = Shop::start_services(config, addresses, vec![(service, listener)], grpc).await?;
    output::line(format!(
        "{} listening on http://{listen} (bus: {engine}; data: {db}); Ctrl-C stops it",
        service.name()
    ))?;
    shop.run_until(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
