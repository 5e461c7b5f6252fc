//! Request/response over the bus.

use std::time::Duration;

use courier_bus::{Context, HandlerError};
use courier_core::{Engine, ErrorKind, Message};

use crate::TestHarness;
use crate::conformance::WAIT;
use crate::conformance::messages::{Add, Explode, Sum};
use crate::conformance::support::{assert_drained, cleanup, dead_letters, ok, unique, within};

async fn add(request: Add, ctx: Context) -> Result<(), HandlerError> {
    ctx.reply(Sum { value: request.a + request.b }).await?;
    Ok(())
}

async fn explode(request: Explode, _ctx: Context) -> Result<(), HandlerError> {
    Err(HandlerError::permanent(request.why))
}

/// `bus.request(endpoint, Add)` returns the `Sum` the handler sent with `ctx.reply`; concurrent requests from one
/// bus each get their own reply.
pub async fn request_response(engine: Engine) {
    let harness = TestHarness::with_engine(engine.clone());
    let endpoint = unique("rpc");
    ok("starting the responder", harness.bus(endpoint.clone(), |b| b.consume(add)).await);
    let client = ok("starting the client", harness.bus(unique("client"), |b| b.request_timeout(WAIT)).await);

    let sum = ok("request", within("a request", client.request(&endpoint, Add { a: 2, b: 3 })).await);
    assert_eq!(sum, Sum { value: 5 });
    let requests = (0..8).map(|i| client.request(&endpoint, Add { a: i, b: 100 }));
    let sums = within("concurrent requests", futures::future::join_all(requests)).await;
    for (i, sum) in sums.into_iter().enumerate() {
        let sum = ok("concurrent request", sum);
        assert_eq!(sum, Sum { value: i as i64 + 100 }, "request {i} got another request's reply");
    }
    harness.shutdown().await;
    assert_drained(&engine, &endpoint).await;
    cleanup(&engine, &[&endpoint]).await;
}

/// A request whose handler fails permanently returns an error carrying the handler's error as soon as the
/// message is dead-lettered, not after the request timeout.
pub async fn request_to_failing_handler_fails_fast(engine: Engine) {
    let harness = TestHarness::with_engine(engine.clone());
    let endpoint = unique("rpc-fail");
    ok("starting the responder", harness.bus(endpoint.clone(), |b| b.consume(explode)).await);
    let client = ok("starting the client", harness.bus(unique("client"), |b| b).await);

    // Far longer than the suite's waits: the error must come from the fault reply, not the timeout.
    let timeout = Duration::from_secs(600);
    let request = client.request_with_timeout(&endpoint, Explode { why: "price list missing".into() }, timeout);
    let error =
        match within("a request whose handler fails (it should get a fault reply once the handler gives up)", request)
            .await
        {
            Ok(sum) => panic!("a request whose handler fails should fail, got {sum:?}"),
            Err(e) => e,
        };
    assert_ne!(error.kind(), ErrorKind::Timeout, "the requester should be told, not time out: {error}");
    assert!(error.to_string().contains("price list missing"), "the error should carry the handler's: {error}");
    let dead = dead_letters(&engine, &endpoint, 1).await;
    assert_eq!(dead[0].reason(), "handler-failed");
    assert_eq!(dead[0].message_type(), Explode::NAME);
    harness.shutdown().await;
    cleanup(&engine, &[&endpoint]).await;
}

/// A request to an endpoint nobody consumes fails with a timeout error that names the endpoint and the request.
pub async fn request_without_consumer_times_out(engine: Engine) {
    let harness = TestHarness::with_engine(engine.clone());
    let endpoint = unique("rpc-nobody");
    ok("declaring the endpoint", engine.transport.declare_queue(&endpoint).await);
    let client = ok("starting the client", harness.bus(unique("client"), |b| b).await);

    let request = client.request_with_timeout(&endpoint, Add { a: 1, b: 1 }, Duration::from_millis(300));
    let error = match within("a request nobody answers", request).await {
        Ok(sum) => panic!("nobody consumes '{endpoint}', yet the request got {sum:?}"),
        Err(e) => e,
    };
    assert_eq!(error.kind(), ErrorKind::Timeout, "expected a timeout, got: {error}");
    let text = error.to_string();
    assert!(text.contains(&endpoint) && text.contains(Add::NAME), "the error should name endpoint and type: {text}");
    harness.shutdown().await;
    cleanup(&engine, &[&endpoint]).await;
}
