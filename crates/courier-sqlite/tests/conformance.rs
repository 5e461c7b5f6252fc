//! The transport conformance suite against the embedded SQLite transport.
//!
//! Every case opens its own transport on one shared file, as separate processes would, so the cases also exercise
//! several writers on one database.

use std::path::PathBuf;
use std::sync::OnceLock;

use courier_core::Engine;
use courier_sqlite::{SqliteOptions, SqliteTransport};
use courier_testkit::conformance::{cases, run_case};

fn shared_file() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir")).path().join("conformance.db")
}

async fn engine() -> Engine {
    SqliteTransport::open(shared_file(), SqliteOptions::default()).await.expect("open the SQLite file").into_engine()
}

courier_testkit::conformance_tests!(engine);

#[test]
fn exactly_once_at_scale_8_consumers_10k_messages() {
    run_case(engine, |engine| cases::exactly_once_at_scale(engine, 8, 10_000));
}
