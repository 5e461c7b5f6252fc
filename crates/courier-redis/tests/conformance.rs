//! The transport conformance suite against a real Redis (`services::REDIS`). Each case runs on its own key
//! prefix, whose keys are deleted when the case's engine is dropped.

mod common;

use courier_core::Engine;
use courier_testkit::conformance::{cases, run_case};
use courier_testkit::services;

async fn engine() -> Engine {
    common::engine("ct").await
}

courier_testkit::conformance_tests!(engine, requires = courier_testkit::services::REDIS);

#[test]
fn exactly_once_at_scale_8_consumers_10k_messages() {
    if !services::REDIS.require() {
        return;
    }
    run_case(engine, |engine| cases::exactly_once_at_scale(engine, 8, 10_000));
}
