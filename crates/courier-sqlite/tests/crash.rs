//! Crash tests: real child processes killed with SIGKILL (`kill -9`) in the middle of their work.
//!
//! The child processes are this test binary re-run with `--ignored --exact <child test>` and an environment
//! variable saying what to do; run on their own those child tests do nothing.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_bus::{Bus, Context, HandlerError, Retry};
use courier_core::{Engine, Json, Message};
use courier_sqlite::{SqliteInbox, SqliteOptions, SqliteTransport};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Numbered {
    n: u64,
}

impl Message for Numbered {
    const NAME: &'static str = "crash.numbered.v1";
    type Codec = Json;
}

const CHILD_ENV: &str = "COURIER_CRASH_CHILD";

async fn engine(path: &Path) -> Engine {
    SqliteTransport::open(path, SqliteOptions::default()).await.expect("open the queue file").into_engine()
}

/// Starts this test binary as a child running `test`, with `vars` set; its stdout is piped.
fn spawn_child(test: &str, vars: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().expect("current test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["--ignored", "--exact", test, "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn child test process")
}

/// Reads `prefix <n>` lines from the child until `enough` have been seen, kills it with SIGKILL, then reads what it
/// had already written. Returns every number seen.
fn kill_after(mut child: Child, prefix: &str, enough: usize) -> Vec<u64> {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < enough {
        assert!(Instant::now() < deadline, "the child made too little progress: {} lines", seen.len());
        match lines.next() {
            Some(Ok(line)) => seen.extend(parse_line(&line, prefix)),
            _ => panic!("the child exited early after {} lines", seen.len()),
        }
    }
    child.kill().expect("SIGKILL the child"); // std's kill() sends SIGKILL on Unix
    let _ = child.wait();
    for line in lines.map_while(Result::ok) {
        seen.extend(parse_line(&line, prefix));
    }
    seen
}

fn parse_line(line: &str, prefix: &str) -> Option<u64> {
    line.strip_prefix(prefix)?.trim().parse().ok()
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_killed_mid_stream_loses_no_published_message() {
    let dir = temp_dir();
    let db = dir.path().join("courier.db");
    let queue = "crash-publish-consumer";
    let engine = engine(&db).await;
    engine.transport.bind(queue, Numbered::NAME).await.unwrap();

    let child = spawn_child("child_publisher", &[("COURIER_CRASH_DB", db.display().to_string())]);
    let published = tokio::task::spawn_blocking(move || kill_after(child, "published ", 3000)).await.unwrap();
    assert!(published.len() >= 3000);

    // Every publish that returned must be consumed after the crash.
    let consumed = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let seen = consumed.clone();
    let bus = Bus::builder(queue)
        .engine_instance(engine.clone())
        .consume(move |m: Numbered, _ctx: Context| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().insert(m.n);
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    let expected: HashSet<u64> = published.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = expected.difference(&consumed.lock().unwrap()).count();
        if missing == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{missing} acknowledged publishes were lost");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bus.shutdown().await;
}

/// Child: publishes numbered messages from 8 concurrent tasks forever, printing each number once its publish
/// returned.
#[test]
#[ignore = "child process of the crash tests"]
fn child_publisher() {
    let Ok(db) = std::env::var("COURIER_CRASH_DB") else {
        return;
    };
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let bus = Bus::builder("crash-publisher").engine_instance(engine(Path::new(&db)).await).start().await.unwrap();
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (bus, next) = (bus.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    bus.publish(Numbered { n }).await.unwrap();
                    println!("published {n}");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

const EFFECTS_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS effects (n INTEGER NOT NULL, message_id TEXT NOT NULL)";

async fn effects_inbox(path: &Path) -> SqliteInbox {
    let inbox = SqliteInbox::open(path).await.unwrap();
    inbox.with_conn(|c| c.execute_batch(EFFECTS_SCHEMA)).await.unwrap();
    inbox
}

/// The consumer used by the child and, after the crash, by the parent: applies the effect through the inbox and
/// then lingers before returning (so a kill often lands after the commit and before the ack).
async fn start_effect_consumer(
    engine: Engine,
    inbox: SqliteInbox,
    queue: &str,
    linger: Duration,
    print: bool,
    duplicates: Arc<AtomicU64>,
) -> Bus {
    Bus::builder(queue)
        .engine_instance(engine)
        .concurrency(8)
        .visibility_timeout(Duration::from_secs(1))
        .retry(Retry::immediate(3))
        .consume(move |m: Numbered, ctx: Context| {
            let (inbox, duplicates) = (inbox.clone(), duplicates.clone());
            async move {
                let n = m.n;
                let id = ctx.message_id().to_owned();
                let applied = inbox
                    .once(&ctx, move |tx| {
                        tx.execute("INSERT INTO effects (n, message_id) VALUES (?1, ?2)", (n as i64, id))
                    })
                    .await?;
                if applied.is_none() {
                    duplicates.fetch_add(1, Ordering::Relaxed);
                }
                if print {
                    println!("{} {n}", if applied.is_some() { "applied" } else { "duplicate" });
                }
                tokio::time::sleep(linger).await;
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_stream_applies_each_effect_exactly_once_with_the_inbox() {
    const N: u64 = 3000;
    let dir = temp_dir();
    let db = dir.path().join("courier.db");
    let effects_db: PathBuf = dir.path().join("effects.db");
    let queue = "crash-effects";
    let engine = engine(&db).await;
    let sender = Bus::builder("crash-sender").engine_instance(engine.clone()).start().await.unwrap();
    for n in 0..N {
        sender.send(queue, Numbered { n }).await.unwrap();
    }

    let vars =
        [("COURIER_CRASH_DB", db.display().to_string()), ("COURIER_CRASH_EFFECTS", effects_db.display().to_string())];
    let child = spawn_child("child_consumer", &vars);
    let applied_by_child = tokio::task::spawn_blocking(move || kill_after(child, "applied ", 800)).await.unwrap();
    assert!(applied_by_child.len() >= 800);

    // Restart: the messages the dead child held come back after the visibility timeout; the inbox absorbs the
    // ones whose effect had committed.
    let inbox = effects_inbox(&effects_db).await;
    let duplicates = Arc::new(AtomicU64::new(0));
    let bus =
        start_effect_consumer(engine.clone(), inbox.clone(), queue, Duration::ZERO, false, duplicates.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let count: i64 =
            inbox.with_conn(|c| c.query_row("SELECT COUNT(DISTINCT n) FROM effects", [], |r| r.get(0))).await.unwrap();
        if count as u64 == N {
            break;
        }
        assert!(Instant::now() < deadline, "only {count} of {N} effects applied after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let any straggling redelivery arrive, then check nothing was applied twice.
    let drained = Instant::now() + Duration::from_secs(30);
    while engine
        .admin
        .queues()
        .await
        .unwrap()
        .iter()
        .any(|q| q.name == queue && (q.ready + q.in_flight + q.delayed) > 0)
    {
        assert!(Instant::now() < drained, "the queue did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bus.shutdown().await;
    let per_n: BTreeMap<i64, i64> = inbox
        .with_conn(|c| {
            let mut s = c.prepare("SELECT n, COUNT(*) FROM effects GROUP BY n")?;
            let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
        .unwrap();
    assert_eq!(per_n.len() as u64, N, "every message has its effect");
    let twice: Vec<_> = per_n.iter().filter(|(_, c)| **c != 1).collect();
    assert!(twice.is_empty(), "effects applied more than once: {twice:?}");
    let dead = engine.admin.dead_letters(&Default::default()).await.unwrap();
    assert!(dead.is_empty(), "nothing should be dead-lettered: {dead:?}");
    // The kill landed after some effects committed and before their acks: those redeliveries were absorbed.
    let absorbed = duplicates.load(Ordering::Relaxed);
    println!("duplicates absorbed by the inbox after the crash: {absorbed}");
    assert!(absorbed > 0, "the crash should have left committed-but-unacknowledged messages to redeliver");
}

/// Child: consumes with the inbox, printing each applied effect, until killed.
#[test]
#[ignore = "child process of the crash tests"]
fn child_consumer() {
    let (Ok(db), Ok(effects)) = (std::env::var("COURIER_CRASH_DB"), std::env::var("COURIER_CRASH_EFFECTS")) else {
        return;
    };
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let inbox = effects_inbox(Path::new(&effects)).await;
        let engine = engine(Path::new(&db)).await;
        let linger = Duration::from_millis(5);
        let _bus = start_effect_consumer(engine, inbox, "crash-effects", linger, true, Arc::default()).await;
        std::future::pending::<()>().await;
    });
}

#[tokio::test]
async fn an_unusable_url_fails_at_start_naming_the_url() {
    use courier_core::EngineFactory;
    let dir = temp_dir();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"a file where a directory should be").unwrap();
    let url = format!("sqlite://{}/courier.db", blocker.display());
    let err = courier_sqlite::SqliteEngineFactory.connect(&url).await.unwrap_err();
    assert!(err.to_string().contains(&url), "{err}");
    assert!(err.to_string().contains("writable"), "says what to do: {err}");
    let err = courier_sqlite::SqliteEngineFactory.connect("sqlite://").await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
}
