//! What a message carries: a large body, and correlation, causation and trace context across handlers.

use courier_bus::{Context, HandlerError};
use courier_core::{Engine, Envelope, TraceParent};

use crate::TestHarness;
use crate::conformance::messages::{Blob, TraceContinued, TraceStarted};
use crate::conformance::support::{Seen, assert_drained, cleanup, ok, record, run_id, unique};

/// The size of the large payload: 1 MiB.
const ONE_MIB: usize = 1 << 20;

/// 1 MiB of text exercising JSON escapes and multi-byte characters, different on every run.
fn large_text(seed: u64) -> String {
    const ALPHABET: &[char] = &['a', 'Z', '0', ' ', '"', '\\', '\n', '\t', '/', 'é', '✓', '😀', '{', '}'];
    let mut state = seed | 1;
    let mut text = String::with_capacity(ONE_MIB + 4);
    while text.len() < ONE_MIB {
        // xorshift64: cheap, deterministic for a seed, good enough to vary the bytes.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.push(ALPHABET[(state % ALPHABET.len() as u64) as usize]);
    }
    text
}

/// A message with a 1 MiB body (text with JSON escapes and multi-byte characters) arrives intact.
pub async fn large_payload_round_trips(engine: Engine) {
    let run = run_id();
    let harness = TestHarness::with_engine(engine.clone());
    let queue = unique("large");
    let seen = Seen::new();
    let handler = record(&run, &seen, |b: &Blob, _| b.data.clone());
    ok("starting the consumer", harness.bus(queue.clone(), |b| b.consume(handler)).await);
    let data = large_text(uuid::Uuid::new_v4().as_u64_pair().0);
    ok("sending 1 MiB", harness.send(&queue, Blob { run: run.clone(), data: data.clone() }).await);
    let received = seen.wait_for(1, "1 MiB message").await.remove(0);
    if received != data {
        let at = received.bytes().zip(data.bytes()).position(|(a, b)| a != b).unwrap_or(received.len().min(data.len()));
        panic!(
            "the 1 MiB body changed in transit: sent {} bytes, got {}, first difference at byte {at}",
            data.len(),
            received.len()
        );
    }
    harness.shutdown().await;
    assert_drained(&engine, &queue).await;
    cleanup(&engine, &[&queue]).await;
}

/// An event published by a handler with `ctx.publish` carries the conversation's correlation id, the handled
/// message's id as causation id, and a `traceparent` in the same trace (a new span), to the next handler.
pub async fn trace_context_propagates(engine: Engine) {
    let run = run_id();
    let harness = TestHarness::with_engine(engine.clone());
    let (first, second) = (unique("trace-first"), unique("trace-second"));
    let started: std::sync::Arc<Seen<Envelope>> = Seen::new();
    let relay = {
        let (started, run) = (started.clone(), run.clone());
        move |event: TraceStarted, ctx: Context| {
            let (started, run) = (started.clone(), run.clone());
            async move {
                if event.run == run {
                    started.push(ctx.envelope().clone());
                    ctx.publish(TraceContinued { run }).await?;
                }
                Ok::<(), HandlerError>(())
            }
        }
    };
    ok("starting the relay", harness.bus(first.clone(), |b| b.consume(relay)).await);
    let continued = Seen::new();
    let handler = record(&run, &continued, |_: &TraceContinued, ctx| (ctx.envelope().clone(), ctx.trace()));
    ok("starting the last handler", harness.bus(second.clone(), |b| b.consume(handler)).await);
    let origin = ok("starting the origin", harness.bus(unique("trace-origin"), |b| b).await);

    let root = TraceParent::new_root();
    let mut envelope = ok("encoding", Envelope::for_message(origin.service(), &TraceStarted { run: run.clone() }));
    envelope.correlation_id = Some(format!("order-{run}"));
    envelope.traceparent = Some(root.to_string());
    ok("publishing", origin.publish_envelope(envelope, None).await);

    let a = started.wait_for(1, "first event").await.remove(0);
    let (b, b_trace) = continued.wait_for(1, "event published by the first handler").await.remove(0);
    assert_eq!(a.correlation_id.as_deref(), Some(format!("order-{run}").as_str()), "correlation id in transit");
    assert_eq!(b.correlation_id, a.correlation_id, "the correlation id should flow to the next message");
    assert_eq!(b.causation_id.as_deref(), Some(a.id.as_str()), "the causation id should be the handled message's id");
    let a_parent = a.traceparent.as_deref().and_then(TraceParent::parse);
    assert_eq!(a_parent, Some(root), "the traceparent should arrive as sent");
    let b_parent = b.traceparent.as_deref().and_then(TraceParent::parse);
    let Some(b_parent) = b_parent else { panic!("the published event has no valid traceparent: {:?}", b.traceparent) };
    assert_eq!(b_parent.trace_id_hex(), root.trace_id_hex(), "the next message should be in the same trace");
    assert_ne!(b_parent.span_id, root.span_id, "the next message should have its own parent span");
    assert_eq!(b_trace.trace_id, root.trace_id, "the next handler's context should be in the same trace");
    harness.shutdown().await;
    assert_drained(&engine, &first).await;
    assert_drained(&engine, &second).await;
    cleanup(&engine, &[&first, &second]).await;
}
