//! `courier saga list|show`: saga instances and their history, read from a service's saga store.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use chrono::Utc;
use courier::SagaStore;
use courier::postgres::PgSagaStore;
use courier::sqlite::{SqliteOutbox, SqliteSagaStore};

use crate::cli::{SagaCommand, SagaListArgs, SagaShowArgs};
use crate::output::{Align, Table, age, emit, json, line, timestamp};

/// Opens the saga store a URL names: the service's own database, not the engine's. `sqlite://path/to/service.db`,
/// or `postgres://user@host/db?schema=...` (the schema the service's `PgOutbox` uses, default `courier`).
async fn open(url: &str) -> anyhow::Result<Box<dyn SagaStore>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PgSagaStore::open_existing(url).await.with_context(|| "cannot read sagas from PostgreSQL")?;
        return Ok(Box::new(store));
    }
    let Some(rest) = url.strip_prefix("sqlite://") else {
        bail!(
            "saga store URL '{url}' is not supported: give the service database as sqlite://path/to/service.db or \
             postgres://user@host/database?schema=..."
        );
    };
    let path = PathBuf::from(rest.split_once('?').map_or(rest, |(p, _)| p));
    if path.as_os_str().is_empty() || !path.exists() {
        bail!("no service database at '{}' (saga store URL '{url}'): check the path", path.display());
    }
    let outbox = SqliteOutbox::open(&path, "courier-cli").await.with_context(|| format!("cannot open '{url}'"))?;
    let store = SqliteSagaStore::open(&outbox).await.with_context(|| format!("cannot read sagas from '{url}'"))?;
    Ok(Box::new(store))
}

pub(crate) async fn run(command: &SagaCommand) -> anyhow::Result<()> {
    match command {
        SagaCommand::List(args) => list(args).await,
        SagaCommand::Show(args) => show(args).await,
    }
}

async fn list(args: &SagaListArgs) -> anyhow::Result<()> {
    let store = open(&args.store).await?;
    let limit = if args.limit == 0 { usize::MAX } else { args.limit as usize };
    let records = store.list(args.saga.as_deref(), limit).await?;
    if args.json {
        return json(&records);
    }
    if records.is_empty() {
        return line("no saga instances");
    }
    let now = Utc::now();
    let mut table = Table::new(&[
        ("SAGA", Align::Left),
        ("ID", Align::Left),
        ("STATUS", Align::Left),
        ("FINISHED", Align::Left),
        ("VERSION", Align::Right),
        ("UPDATED", Align::Right),
    ]);
    for r in &records {
        table.row(vec![
            r.saga.clone(),
            r.id.clone(),
            r.status.clone(),
            if r.finished { "yes" } else { "no" }.into(),
            r.version.to_string(),
            age(r.updated_at, now),
        ]);
    }
    emit(&table.render())?;
    line(format!("{} instance(s); `courier saga show <saga> <id> --store {}` shows one", records.len(), args.store))
}

async fn show(args: &SagaShowArgs) -> anyhow::Result<()> {
    let store = open(&args.store).await?;
    let Some(record) = store.load(&args.saga, &args.id).await? else {
        bail!("no instance '{}' of saga '{}' in '{}'", args.id, args.saga, args.store);
    };
    let history = store.history(&args.saga, &args.id).await?;
    if args.json {
        let state: serde_json::Value = serde_json::from_str(&record.state).unwrap_or(serde_json::Value::Null);
        return json(&serde_json::json!({ "instance": record, "state": state, "history": history }));
    }
    line(format!("saga      {}", record.saga))?;
    line(format!("id        {}", record.id))?;
    line(format!("status    {}{}", record.status, if record.finished { " (finished)" } else { "" }))?;
    line(format!("version   {}", record.version))?;
    line(format!("updated   {}", timestamp(record.updated_at)))?;
    let state = serde_json::from_str::<serde_json::Value>(&record.state)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or(record.state.clone());
    line("state")?;
    emit(&format!("{state}\n"))?;
    let mut table = Table::new(&[
        ("AT", Align::Left),
        ("MESSAGE", Align::Left),
        ("FROM", Align::Left),
        ("TO", Align::Left),
        ("MESSAGE ID", Align::Left),
    ]);
    for h in &history {
        table.row(vec![
            timestamp(h.at),
            h.message_type.clone(),
            h.from_status.clone(),
            h.to_status.clone(),
            h.message_id.clone(),
        ]);
    }
    line("history")?;
    emit(&table.render())
}
