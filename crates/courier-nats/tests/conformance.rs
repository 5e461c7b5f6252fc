//! The transport conformance suite against NATS JetStream (skipped with one line when the server is not running,
//! failed under `CI=true`). Each case works in a namespace of its own, deleted when the case ends.

mod support;

use courier_testkit::conformance::{cases, run_case};
use courier_testkit::services::NATS;

courier_testkit::conformance_tests!(support::engine, requires = NATS);

#[test]
fn exactly_once_at_scale_8_consumers_10k_messages() {
    if !NATS.require() {
        return;
    }
    run_case(support::engine, |engine| cases::exactly_once_at_scale(engine, 8, 10_000));
}
