//! The `courier.consume` span carries the message's W3C trace id when a subscriber records it (the trace context is
//! only made when something asks for it), and a handler's failure is logged with the message it failed on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_bus::{Bus, Context, HandlerError, MemoryTransport};
use courier_core::{Json, Message, TraceParent};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

#[derive(Debug, Serialize, Deserialize)]
struct Ping;

impl Message for Ping {
    const NAME: &'static str = "test.span.ping.v1";
    type Codec = Json;
}

/// Records the fields of every `courier.consume` span.
#[derive(Default)]
struct Spans {
    next: AtomicU64,
    fields: Mutex<HashMap<u64, HashMap<String, String>>>,
    /// The fields of every event at WARN.
    warnings: Mutex<Vec<HashMap<String, String>>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl Subscriber for Spans {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        if span.metadata().name() == "courier.consume" {
            let mut fields = HashMap::new();
            span.record(&mut Fields(&mut fields));
            self.fields.lock().unwrap().insert(id, fields);
        }
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some(fields) = self.fields.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut fields = HashMap::new();
            event.record(&mut Fields(&mut fields));
            self.warnings.lock().unwrap().push(fields);
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[tokio::test]
async fn the_consume_span_carries_the_trace_id_of_the_message() {
    let spans = Arc::new(Spans::default());
    let _guard = tracing::subscriber::set_default(spans.clone());
    let engine = MemoryTransport::new().into_engine();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let bus = Bus::builder("spans")
        .engine_instance(engine)
        .consume(move |_ping: Ping, ctx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(ctx.envelope().traceparent.clone());
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    bus.send("spans", Ping).await.unwrap();
    let sent = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap().unwrap();
    bus.shutdown().await;
    let trace_id = TraceParent::parse(&sent).unwrap().trace_id_hex();
    let fields = spans.fields.lock().unwrap();
    let span = fields.values().next().expect("a courier.consume span was recorded");
    assert_eq!(span.get("trace_id"), Some(&trace_id), "the span's fields: {span:?}");
    assert_eq!(span.get("span_id").map(String::len), Some(16), "the span's fields: {span:?}");
}

#[tokio::test]
async fn a_failed_handling_is_logged_with_the_message_it_failed_on() {
    let spans = Arc::new(Spans::default());
    let _guard = tracing::subscriber::set_default(spans.clone());
    let engine = MemoryTransport::new().into_engine();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let bus = Bus::builder("failing")
        .engine_instance(engine)
        .retry(courier_bus::Retry::none())
        .consume(move |_ping: Ping, ctx: Context| {
            let _ = tx.send((ctx.message_id().to_owned(), ctx.envelope().traceparent.clone()));
            async move { Err::<(), _>(HandlerError::permanent("the ping was refused")) }
        })
        .start()
        .await
        .unwrap();
    bus.send("failing", Ping).await.unwrap();
    let (id, traceparent) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    let trace_id = TraceParent::parse(&traceparent.expect("a traceparent")).unwrap().trace_id_hex();
    // Logged when the consumer settles the failed handling, just after the handler returns.
    let logged =
        || spans.warnings.lock().unwrap().iter().any(|w| w.get("message").is_some_and(|m| m == "handler failed"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !logged() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bus.shutdown().await;
    let warnings = spans.warnings.lock().unwrap();
    let failed = warnings
        .iter()
        .find(|w| w.get("message").map(String::as_str) == Some("handler failed"))
        .unwrap_or_else(|| panic!("no 'handler failed' warning among {warnings:?}"));
    // Strings recorded as values print with quotes, those recorded with `%` without.
    let field = |name: &str| failed.get(name).map(|v| v.trim_matches('"').to_owned());
    assert_eq!(field("queue").as_deref(), Some("failing"), "{failed:?}");
    assert_eq!(field("message.id"), Some(id), "{failed:?}");
    assert_eq!(field("message.type").as_deref(), Some(Ping::NAME), "{failed:?}");
    assert_eq!(field("error").as_deref(), Some("the ping was refused"), "{failed:?}");
    assert_eq!(field("attempt").as_deref(), Some("1"), "{failed:?}");
    assert_eq!(field("trace_id"), Some(trace_id), "{failed:?}");
}
