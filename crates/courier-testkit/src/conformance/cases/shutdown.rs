//! Graceful shutdown with work in flight.

use std::collections::BTreeSet;
use std::time::Duration;

use courier_bus::{Context, HandlerError};
use courier_core::Engine;
use tokio::sync::watch;

use crate::conformance::messages::Job;
use crate::conformance::support::{Seen, assert_drained, cleanup, ok, record, run_id, unique, within};
use crate::conformance::{VISIBILITY_TIMEOUT, WAIT};
use crate::{TestHarness, wait_until};

/// A handler is in flight when `shutdown` is called: it finishes (within the shutdown timeout) and its message is
/// acked; the messages not yet started are not lost: a new bus on the same queue handles them, and only them.
pub async fn shutdown_finishes_in_flight_work(engine: Engine) {
    const MESSAGES: u64 = 3;
    let run = run_id();
    let harness = TestHarness::with_engine(engine.clone());
    let queue = unique("shutdown");
    let (started, finished) = (Seen::new(), Seen::new());
    // The handler holds until the test opens the gate: a slow handler whose slowness the test controls.
    let (gate, gate_rx) = watch::channel(false);
    let slow = {
        let (started, finished, run) = (started.clone(), finished.clone(), run.clone());
        move |job: Job, _ctx: Context| {
            let (started, finished, run, mut gate) = (started.clone(), finished.clone(), run.clone(), gate_rx.clone());
            async move {
                if job.run != run {
                    return Ok(());
                }
                started.push(job.n);
                gate.wait_for(|open| *open).await.map_err(|_| HandlerError::transient("the test went away"))?;
                finished.push(job.n);
                Ok::<(), HandlerError>(())
            }
        }
    };
    let configure = |b: courier_bus::BusBuilder| {
        b.consume(slow).concurrency(1).shutdown_timeout(WAIT).visibility_timeout(VISIBILITY_TIMEOUT)
    };
    let first = ok("starting the first bus", harness.bus(queue.clone(), configure).await);
    for n in 0..MESSAGES {
        ok("sending", harness.send(&queue, Job { run: run.clone(), n }).await);
    }
    started.wait_for(1, "handler started").await;

    let stopping = tokio::spawn({
        let first = first.clone();
        async move { first.shutdown().await }
    });
    ok("waiting for shutdown to begin", wait_until(WAIT, || first.is_shut_down()).await);
    gate.send_replace(true);
    ok("shutdown", within("shutting down with a handler in flight", stopping).await);
    let (started, finished) = (started.snapshot(), finished.snapshot());
    assert_eq!(started.len(), 1, "with concurrency 1, one handler was in flight at shutdown: started {started:?}");
    assert_eq!(finished, started, "the in-flight handler should finish before shutdown returns");
    let acked: Vec<u64> = harness.consumed::<Job>().iter().map(|j| j.n).collect();
    assert_eq!(acked, finished, "the finished handler's message should be acked");

    let rest = Seen::new();
    let handler = record(&run, &rest, |j: &Job, _| j.n);
    // Same visibility timeout as the first bus: an engine may bring back messages that were on the wire to the
    // closing subscription by their lease (JetStream's ack_wait is per queue, and a new bus would reset it).
    let configure = |b: courier_bus::BusBuilder| b.consume(handler).visibility_timeout(VISIBILITY_TIMEOUT);
    ok("starting the second bus", harness.bus(queue.clone(), configure).await);
    let rest = rest.wait_for(MESSAGES as usize - 1, "messages not started before shutdown, on the next bus").await;
    harness.shutdown().await;
    let all: BTreeSet<u64> = finished.iter().chain(&rest).copied().collect();
    assert_eq!(all.len(), MESSAGES as usize, "no message lost or handled twice: first bus {finished:?}, next {rest:?}");
    assert_drained(&engine, &queue).await;
    cleanup(&engine, &[&queue]).await;
}

/// A handler still running when the shutdown timeout expires is cut off; its message is not acked but released,
/// and the next bus on the queue handles it.
pub async fn shutdown_timeout_releases_message(engine: Engine) {
    let run = run_id();
    let harness = TestHarness::with_engine(engine.clone());
    let queue = unique("shutdown-timeout");
    let started = Seen::new();
    let stuck = {
        let (started, run) = (started.clone(), run.clone());
        move |job: Job, _ctx: Context| {
            let (started, run) = (started.clone(), run.clone());
            async move {
                if job.run == run {
                    started.push(job.n);
                    tokio::time::sleep(Duration::from_secs(600)).await;
                }
                Ok::<(), HandlerError>(())
            }
        }
    };
    let configure = |b: courier_bus::BusBuilder| {
        b.consume(stuck).shutdown_timeout(Duration::from_millis(200)).visibility_timeout(VISIBILITY_TIMEOUT)
    };
    let first = ok("starting the first bus", harness.bus(queue.clone(), configure).await);
    ok("sending", harness.send(&queue, Job { run: run.clone(), n: 1 }).await);
    started.wait_for(1, "handler started").await;
    within("shutdown past its timeout", first.shutdown()).await;
    assert!(harness.consumed::<Job>().is_empty(), "a handler cut off by the shutdown timeout must not be acked");

    let next = Seen::new();
    let handler = record(&run, &next, |j: &Job, _| j.n);
    ok("starting the second bus", harness.bus(queue.clone(), |b| b.consume(handler)).await);
    let handled = next.wait_for(1, "the cut-off message, redelivered to the next bus").await;
    assert_eq!(handled, [1]);
    harness.shutdown().await;
    assert_drained(&engine, &queue).await;
    cleanup(&engine, &[&queue]).await;
}
