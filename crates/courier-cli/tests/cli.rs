//! Runs the built `courier` binary: help texts, engine errors, `queues`, `bus-demo`, and the dead-letter workflow
//! across invocations on a SQLite file (`bus-demo` seeds the dead-letter queues, `dlq` inspects, replays and purges).

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Runs `courier args...` in `dir`, with no engine from the environment and stdin closed (not a terminal).
fn courier(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(args)
        .current_dir(dir)
        .env_remove("COURIER_ENGINE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("the courier binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command that must succeed and returns its stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = courier(dir, args);
    assert!(out.status.success(), "courier {args:?} failed: {}\n{}", text(&out.stderr), text(&out.stdout));
    text(&out.stdout)
}

/// Runs a command that must succeed and print JSON.
fn json(dir: &Path, args: &[&str]) -> Value {
    let stdout = ok(dir, args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("courier {args:?} printed invalid JSON ({e}):\n{stdout}"))
}

fn n(value: &Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or_else(|| panic!("'{key}' is not a number in {value}"))
}

#[test]
fn every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--help"][..],
        &["queues", "--help"],
        &["dlq", "--help"],
        &["dlq", "list", "--help"],
        &["dlq", "show", "--help"],
        &["dlq", "replay", "--help"],
        &["dlq", "purge", "--help"],
        &["bus-demo", "--help"],
        &["saga", "--help"],
        &["saga", "list", "--help"],
        &["saga", "show", "--help"],
        &["bench", "--help"],
    ] {
        let stdout = ok(dir.path(), args);
        assert!(stdout.contains("Usage: courier"), "{args:?}:\n{stdout}");
    }
    assert!(ok(dir.path(), &["dlq", "replay", "--help"]).contains("--dry-run"));
    assert!(ok(dir.path(), &["--help"]).contains("COURIER_ENGINE"));
}

#[test]
fn queues_json_on_a_memory_engine_is_an_array() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(json(dir.path(), &["--engine", "memory://", "queues", "--json"]), Value::Array(vec![]));
}

#[test]
fn bad_engine_urls_fail_naming_the_url() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["nope://x", "no-scheme", "sqlite://", "sqlite://./missing.db", "sqlite://./x.db?color=red"] {
        let out = courier(dir.path(), &["--engine", url, "queues"]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{url} was accepted");
        assert!(stderr.contains(url), "the error for {url} does not name it: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Inspecting must not create the database it was asked to inspect.
    assert!(!dir.path().join("missing.db").exists());
}

#[test]
fn shop_and_demo_refuse_bad_settings_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for (args, says) in [
        (&["shop", "run", "warehouse"][..], "choose one of"),
        (&["shop", "run", "orders", "--db", "mysql://x/y"], "postgres://"),
        (&["demo", "--db", "redis://x"], "sqlite://DIR"),
        (&["shop", "run", "orders", "--mode", "async"], "hybrid or sync"),
        (&["demo", "--shipping-down", "0.7..0.2"], "FROM..TO"),
        (&["demo", "--modes", "all"], "both, hybrid or sync"),
    ] {
        let out = courier(dir.path(), args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} should say {says:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn bad_arguments_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["dlq", "replay"][..],
        &["dlq", "replay", "1", "--all"],
        &["dlq", "replay", "--all", "--rate", "0"],
        &["dlq", "purge", "--group"],
        &["bus-demo", "--orders", "-3"],
        &["bus-demo", "--publishers", "0"],
    ] {
        let out = courier(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
    }
}

#[test]
fn demo_summary_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let summary = json(dir.path(), &["--engine", "memory://", "bus-demo", "--orders", "200", "--json"]);
    let (orders, dead) = (n(&summary, "orders"), n(&summary, "dead_lettered"));
    assert_eq!(orders, 200);
    assert_eq!(dead, 2, "1% of orders are poison: {summary}");
    assert_eq!(n(&summary, "shipments"), orders - dead, "{summary}");
    assert_eq!(n(&summary, "emails"), orders - dead, "{summary}");
    assert_eq!(n(&summary, "dead_lettered_messages"), 2 * dead, "{summary}");
    assert_eq!(n(&summary, "duplicates_absorbed"), 2 * n(&summary, "duplicates_published"), "{summary}");
    assert!(summary["latency_ms"]["p50"].as_f64().is_some_and(|p| p >= 0.0), "{summary}");
    assert!(summary["hint"].as_str().unwrap().contains("courier --engine memory:// dlq list --group"));
}

#[test]
fn demo_with_no_orders_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let summary = json(dir.path(), &["--engine", "memory://", "bus-demo", "--orders", "0", "--json"]);
    assert_eq!(n(&summary, "shipments"), 0);
}

/// The whole dead-letter workflow across processes, on one SQLite file seeded by `bus-demo`.
#[test]
fn dead_letters_can_be_listed_shown_replayed_and_purged() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("data/courier.db").display());
    let run = |args: &[&str]| json(dir.path(), &[&["--engine", url.as_str()][..], args].concat());

    let summary = run(&["bus-demo", "--orders", "200", "--json"]);
    assert_eq!(n(&summary, "shipments"), n(&summary, "orders") - n(&summary, "dead_lettered"));
    assert_eq!(n(&summary, "dead_lettered"), 2);

    let queues = run(&["queues", "--json"]);
    let dead: u64 = queues.as_array().unwrap().iter().map(|q| n(q, "dead_lettered")).sum();
    assert_eq!(dead, 4, "{queues}");

    // Two failure groups, one per consuming service, two poison orders each.
    let groups = run(&["dlq", "list", "--group", "--json"]);
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 2, "{groups:?}");
    for g in groups {
        assert_eq!(n(g, "count"), 2, "{g}");
        assert_eq!(g["reason"], "handler-failed");
        assert!(!g["sample_error"].as_str().unwrap().is_empty());
    }
    let fingerprint = groups[0]["fingerprint"].as_str().unwrap().to_owned();
    let queue = groups[0]["queues"][0].as_str().unwrap().to_owned();

    // A dry run changes nothing.
    let plan = run(&["dlq", "replay", "--group", &fingerprint, "--dry-run", "--json"]);
    assert_eq!(n(&plan, "would_replay"), 2, "{plan}");
    assert_eq!(plan["by_queue"][0]["queue"], queue.as_str());
    assert_eq!(run(&["dlq", "list", "--json"]).as_array().unwrap().len(), 4);

    // Show one: its headers and its body as JSON.
    let entries = run(&["dlq", "list", "--queue", &queue, "--json"]);
    let id = entries[0]["entry_id"].as_str().unwrap().to_owned();
    let shown = run(&["dlq", "show", &id, "--json"]);
    assert_eq!(shown["headers"]["type"], "shop.order.placed.v1");
    assert_eq!(shown["body_encoding"], "json");
    assert_eq!(shown["body"]["total_cents"], 0);

    // Replay it: it leaves the dead-letter queue and waits, ready, in its queue.
    let report = run(&["dlq", "replay", &id, "--rate", "50", "--json"]);
    assert_eq!((n(&report, "replayed"), n(&report, "failed")), (1, 0), "{report}");
    let queues = run(&["queues", "--json"]);
    let q = queues.as_array().unwrap().iter().find(|q| q["name"] == queue.as_str()).unwrap();
    assert_eq!((n(q, "ready"), n(q, "dead_lettered")), (1, 1), "{queues}");

    // Unknown ids are reported, not skipped silently.
    let out = courier(dir.path(), &["--engine", &url, "dlq", "show", "999999"]);
    assert!(!out.status.success() && text(&out.stderr).contains("999999"));

    // Purging asks for --yes when nobody can answer a prompt.
    let out = courier(dir.path(), &["--engine", &url, "dlq", "purge", "--all"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--yes"), "{}", text(&out.stderr));
    assert_eq!(run(&["dlq", "list", "--json"]).as_array().unwrap().len(), 3);

    let purged = run(&["dlq", "purge", "--all", "--yes", "--json"]);
    assert_eq!(n(&purged, "purged"), 3, "{purged}");
    assert_eq!(run(&["dlq", "list", "--group", "--json"]), Value::Array(vec![]));

    // The human-readable forms work too.
    assert!(ok(dir.path(), &["--engine", &url, "queues"]).contains("QUEUE"));
    assert!(ok(dir.path(), &["--engine", &url, "dlq", "list"]).contains("No dead letters"));
}

#[test]
fn saga_instances_are_listed_and_shown_with_their_history() {
    use courier::SagaStore;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orders.db");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let outbox = courier::sqlite::SqliteOutbox::open(&db, "orders").await.unwrap();
        let store = courier::sqlite::SqliteSagaStore::open(&outbox).await.unwrap();
        let mut record = courier::SagaRecord {
            saga: "order-fulfilment".into(),
            id: "order-7".into(),
            state: r#"{"paid":false}"#.into(),
            status: "Charging".into(),
            finished: false,
            version: 1,
            updated_at: chrono::Utc::now(),
        };
        let step = |id: &str, to: &str| courier::SagaTransition {
            message_id: id.into(),
            message_type: "shop.stock.reserved.v1".into(),
            from_status: "New".into(),
            to_status: to.into(),
            at: chrono::Utc::now(),
        };
        assert_eq!(store.save(&record, 0, &step("m1", "Charging"), vec![]).await.unwrap(), courier::SaveOutcome::Saved);
        record.state = r#"{"paid":true}"#.into();
        record.status = "Completed".into();
        record.finished = true;
        record.version = 2;
        assert_eq!(
            store.save(&record, 1, &step("m2", "Completed"), vec![]).await.unwrap(),
            courier::SaveOutcome::Saved
        );
    });
    let store = format!("sqlite://{}", db.display());
    let list = json(dir.path(), &["saga", "list", "--store", &store, "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["status"], "Completed");
    let shown = json(dir.path(), &["saga", "show", "order-fulfilment", "order-7", "--store", &store, "--json"]);
    assert_eq!(shown["state"]["paid"], true);
    assert_eq!(shown["history"].as_array().unwrap().len(), 2);
    let text = ok(dir.path(), &["saga", "show", "order-fulfilment", "order-7", "--store", &store]);
    assert!(text.contains("Completed") && text.contains("m2"), "{text}");
    let missing = courier(dir.path(), &["saga", "list", "--store", "sqlite://./nope.db"]);
    assert!(!missing.status.success());
    assert!(text_of(&missing).contains("nope.db"));
}

fn text_of(output: &Output) -> String {
    text(&output.stderr)
}

#[test]
fn bench_reports_throughput_and_latency() {
    let dir = tempfile::tempdir().unwrap();
    let figures = json(dir.path(), &["bench", "--messages", "2000", "--rate", "500", "--seconds", "1", "--json"]);
    let rows = figures["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["messages"], 2000);
    assert!(rows[0]["per_second"].as_f64().unwrap() > 0.0);
    assert!(rows[1]["p99_us"].as_u64().unwrap() > 0);
    let memory = json(dir.path(), &["--engine", "memory://", "bench", "--messages", "500", "--rate", "0", "--json"]);
    assert_eq!(memory["rows"].as_array().unwrap().len(), 1);
    let alone = json(dir.path(), &["bench", "--messages", "500", "--rate", "0", "--alone", "--json"]);
    let rows = alone["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "--alone adds the transport-alone row: {rows:?}");
    assert_eq!(rows[1]["messages"], 500);
    assert!(rows[1]["scenario"].as_str().unwrap().contains("transport alone"));
    assert!(rows[1]["p99_us"].as_u64().unwrap() > 0);
}

/// Drops a PostgreSQL schema when dropped (also when the test fails), on a runtime of its own.
struct DropSchema(String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let statement = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.0);
        let dropped = std::thread::spawn(move || {
            use courier::postgres::sqlx::{self, Connection};
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let url = courier_testkit::services::POSTGRES.url();
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await.map(drop)
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test schema '{}'", self.0);
        }
    }
}

#[test]
fn saga_instances_are_listed_and_shown_from_postgres() {
    use courier::SagaStore;
    if !courier_testkit::services::POSTGRES.require() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("cli_saga_{}", uuid::Uuid::new_v4().simple());
    let _guard = DropSchema(schema.clone());
    let store = format!("{}?schema={schema}", courier_testkit::services::POSTGRES.url());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let outbox = courier::postgres::PgOutbox::connect(&store, "orders").await.unwrap();
        let sagas = courier::postgres::PgSagaStore::new(&outbox);
        let record = courier::SagaRecord {
            saga: "order-fulfilment".into(),
            id: "order-9".into(),
            state: r#"{"paid":true}"#.into(),
            status: "Completed".into(),
            finished: true,
            version: 1,
            updated_at: chrono::Utc::now(),
        };
        let step = courier::SagaTransition {
            message_id: "m9".into(),
            message_type: "shop.payment.charged.v1".into(),
            from_status: "Charging".into(),
            to_status: "Completed".into(),
            at: chrono::Utc::now(),
        };
        assert_eq!(sagas.save(&record, 0, &step, vec![]).await.unwrap(), courier::SaveOutcome::Saved);
    });
    drop(rt);
    let list = json(dir.path(), &["saga", "list", "--store", &store, "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], "order-9");
    let shown = json(dir.path(), &["saga", "show", "order-fulfilment", "order-9", "--store", &store, "--json"]);
    assert_eq!(shown["state"]["paid"], true);
    assert_eq!(shown["history"][0]["message_id"], "m9");
    let text = ok(dir.path(), &["saga", "list", "--store", &store]);
    assert!(text.contains("order-9") && text.contains("Completed"), "{text}");
    // A schema without saga tables is reported, and nothing is created.
    let other = format!("cli_saga_missing_{}", uuid::Uuid::new_v4().simple());
    let _other_guard = DropSchema(other.clone());
    let wrong = format!("{}?schema={other}", courier_testkit::services::POSTGRES.url());
    let missing = courier(dir.path(), &["saga", "list", "--store", &wrong]);
    assert!(!missing.status.success());
    assert!(text_of(&missing).contains(&other) && text_of(&missing).contains("schema"), "{}", text_of(&missing));
    let bad = courier(dir.path(), &["saga", "list", "--store", "postgres://localhost/x?schema=1bad"]);
    assert!(!bad.status.success());
    assert!(text_of(&bad).contains("1bad"), "{}", text_of(&bad));
}
