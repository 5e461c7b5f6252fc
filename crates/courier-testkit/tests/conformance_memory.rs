//! The transport conformance suite against the in-memory engine.

use courier_bus::MemoryTransport;
use courier_testkit::conformance::{cases, run_case};

courier_testkit::conformance_tests!(|| async { MemoryTransport::new().into_engine() });

#[test]
fn exactly_once_at_scale_8_consumers_10k_messages() {
    run_case(async || MemoryTransport::new().into_engine(), |engine| cases::exactly_once_at_scale(engine, 8, 10_000));
}

/// The suite names everything uniquely, so cases may share one engine, as they do on a durable one. Two runs of
/// `fan_out` go one after the other: an event reaches every queue bound to its type, so one run's events land on
/// the other's queues too, after that run has stopped consuming and checked them drained (it failed 2 runs in
/// about 40 in CI that way).
#[test]
fn cases_share_one_engine() {
    let shared = MemoryTransport::new();
    run_case(
        || async move { shared.into_engine() },
        |engine| async move {
            let fan_out_twice = {
                let engine = engine.clone();
                async move {
                    cases::fan_out(engine.clone()).await;
                    cases::fan_out(engine).await;
                }
            };
            tokio::join!(
                fan_out_twice,
                cases::scheduled_publish(engine.clone()),
                cases::trace_context_propagates(engine.clone()),
                cases::undecodable_messages_are_dead_lettered(engine.clone()),
                cases::exactly_once_at_scale(engine, 3, 500),
            );
        },
    );
}
