//! The transport conformance suite against PostgreSQL (`COURIER_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Each case runs on a schema of its own, dropped when it ends.
//! Skipped with one line when the server is unreachable, failed when `CI=true`.

mod common;

use courier_core::Engine;
use courier_testkit::conformance::{cases, run_case};
use courier_testkit::services::POSTGRES;

async fn engine() -> Engine {
    common::scoped_engine().await
}

courier_testkit::conformance_tests!(engine, requires = courier_testkit::services::POSTGRES);

#[test]
fn exactly_once_at_scale_8_consumers_10k_messages() {
    if !POSTGRES.require() {
        return;
    }
    run_case(engine, |engine| cases::exactly_once_at_scale(engine, 8, 10_000));
}
