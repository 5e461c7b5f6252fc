//! The transport conformance suite against RabbitMQ (`COURIER_TEST_AMQP_URL`, default the local broker).
//!
//! Every case connects its own transport in the namespace `courier-conformance`; cases name their queues uniquely
//! and delete them, so concurrent runs share the broker safely. The at-scale case uses its own namespace and
//! deletes it.

use courier_core::Engine;
use courier_rabbitmq::{RabbitMqOptions, RabbitMqTransport};
use courier_testkit::conformance::{cases, run_case};
use courier_testkit::services::RABBITMQ;

fn options(namespace: &str) -> RabbitMqOptions {
    let mut options = RabbitMqOptions::from_url(&RABBITMQ.url()).expect("a valid COURIER_TEST_AMQP_URL");
    options.namespace = namespace.to_owned();
    options.connection_name = format!("courier-conformance-{}", std::process::id());
    options
}

async fn engine() -> Engine {
    RabbitMqTransport::connect(options("courier-conformance")).await.expect("connect to RabbitMQ").into_engine()
}

courier_testkit::conformance_tests!(engine, requires = courier_testkit::services::RABBITMQ);

#[test]
fn exactly_once_at_scale_8_consumers_10k_messages() {
    if !RABBITMQ.require() {
        return;
    }
    let namespace = format!("ct-scale-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let transport = std::sync::Arc::new(std::sync::Mutex::new(None::<RabbitMqTransport>));
    let keep = transport.clone();
    let factory = || async move {
        let t = RabbitMqTransport::connect(options(&namespace)).await.expect("connect to RabbitMQ");
        *keep.lock().unwrap() = Some(t.clone());
        t.into_engine()
    };
    run_case(factory, |engine| async move {
        cases::exactly_once_at_scale(engine, 8, 10_000).await;
        let t = transport.lock().unwrap().clone().expect("connected");
        t.delete_namespace().await.expect("delete the test namespace");
    });
}
