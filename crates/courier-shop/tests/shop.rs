//! The shop end to end, over HTTP, on the embedded SQLite bus: every accepted order ends Completed or Cancelled
//! with its reason; each completed order has exactly one shipment and one confirmation email; and that still holds
//! when shipping is down for a while and comes back, and when the payments service times out.

use std::time::{Duration, Instant};

use courier_http::HttpError;
use courier_http::client::HttpClient;
use courier_shop::messages::Line;
use courier_shop::{
    DECLINED_CARD, Databases, Email, Faults, Mode, OrderStatus, PlaceOrder, Shipment, Shop, ShopConfig,
};
use uuid::Uuid;

const GOOD_CARD: &str = "4242424242424242";

struct Running {
    shop: Shop,
    faults: Faults,
    _dir: tempfile::TempDir,
    edge: HttpClient,
    shipping: HttpClient,
    email: HttpClient,
}

async fn start(mode: Mode) -> Running {
    let dir = tempfile::tempdir().expect("a temp dir");
    let engine = format!("sqlite://{}", dir.path().join("bus.db").display());
    let databases = Databases::Sqlite(dir.path().to_owned());
    start_on(mode, dir, databases, engine, "").await
}

/// The shop with its databases in `databases` and its bus on `engine`, its queues (and PostgreSQL schemas)
/// prefixed by `namespace`.
async fn start_on(
    mode: Mode,
    dir: tempfile::TempDir,
    databases: Databases,
    engine: String,
    namespace: &str,
) -> Running {
    let faults = Faults::none();
    let config = ShopConfig::new(databases, engine, mode).faults(faults.clone()).namespace(namespace);
    let shop = Shop::start(config).await.expect("the shop");
    let client = |url: &str| HttpClient::builder(url).deadline(Duration::from_secs(10)).build().expect("a client");
    let (edge, shipping, email) =
        (client(&shop.addresses().edge), client(&shop.addresses().shipping), client(&shop.addresses().email));
    Running { shop, faults, _dir: dir, edge, shipping, email }
}

fn order(sku: &str, card: &str) -> PlaceOrder {
    PlaceOrder {
        email: "ada@example.com".into(),
        card: card.into(),
        lines: vec![Line { sku: sku.into(), quantity: 1 }],
    }
}

impl Running {
    async fn place(&self, order: &PlaceOrder) -> Result<OrderStatus, HttpError> {
        self.edge.post("/orders").json(order).send_json().await
    }

    async fn status(&self, id: Uuid) -> OrderStatus {
        self.edge.get(&format!("/orders/{id}")).send_json().await.expect("the order's status")
    }

    /// Waits until every order ended; returns their statuses.
    async fn wait_final(&self, ids: &[Uuid]) -> Vec<OrderStatus> {
        let until = Instant::now() + Duration::from_secs(90);
        loop {
            let mut statuses = Vec::new();
            for id in ids {
                statuses.push(self.status(*id).await);
            }
            if statuses.iter().all(OrderStatus::is_final) {
                return statuses;
            }
            let open: Vec<_> = statuses.iter().filter(|s| !s.is_final()).collect();
            assert!(Instant::now() < until, "orders did not end within 90 s: {open:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Checks the end states: a completed order has one shipment and one email; a cancelled one has a reason,
    /// no shipment and no email.
    async fn check_outcomes(&self, statuses: &[OrderStatus]) {
        for status in statuses {
            let id = status.order_id;
            let shipment = self.shipping.get(&format!("/shipments/{id}")).send_json::<Shipment>().await;
            let emails: Vec<Email> = self.email.get(&format!("/emails/{id}")).send_json().await.expect("emails");
            match status.status.as_str() {
                "Completed" => {
                    assert_eq!(shipment.expect("a completed order has a shipment").order_id, id);
                    assert_eq!(emails.len(), 1, "exactly one confirmation email for {id}: {emails:?}");
                    assert!(emails[0].body.contains(&shipment_tracking(self, id).await));
                }
                "Cancelled" => {
                    assert!(status.reason.as_deref().is_some_and(|r| !r.is_empty()), "a reason: {status:?}");
                    assert!(shipment.is_err(), "a cancelled order is not shipped: {status:?}");
                    assert!(emails.is_empty(), "no shipping email for a cancelled order: {status:?}");
                }
                other => panic!("unexpected end state {other} for {id}"),
            }
        }
    }
}

async fn shipment_tracking(running: &Running, id: Uuid) -> String {
    running.shipping.get(&format!("/shipments/{id}")).send_json::<Shipment>().await.expect("a shipment").tracking
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hybrid_orders_end_completed_or_cancelled() {
    let shop = start(Mode::Hybrid).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let card = if i % 7 == 3 { DECLINED_CARD } else { GOOD_CARD };
        let placed = shop.place(&order(["rust-mug", "crab-socks", "async-book"][i % 3], card)).await.expect("accepted");
        assert_eq!(placed.status, "Placed", "the edge answers before fulfilment: {placed:?}");
        ids.push(placed.order_id);
    }
    let statuses = shop.wait_final(&ids).await;
    let cancelled: Vec<_> = statuses.iter().filter(|s| s.status == "Cancelled").collect();
    assert_eq!(cancelled.len(), 3, "the declined cards: {statuses:?}");
    assert!(cancelled.iter().all(|s| s.reason.as_deref().unwrap_or("").contains("declined")));
    shop.check_outcomes(&statuses).await;
    shop.shop.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hybrid_keeps_accepting_while_shipping_is_down_and_catches_up() {
    let shop = start(Mode::Hybrid).await;
    shop.faults.set_shipping_down(true);
    let mut ids = Vec::new();
    for _ in 0..15 {
        ids.push(
            shop.place(&order("ferris-plush", GOOD_CARD)).await.expect("accepted while shipping is down").order_id,
        );
    }
    // Everything up to the charge happens; nothing ships.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let mut paid = 0;
        for id in &ids {
            let status = shop.status(*id).await;
            assert_ne!(status.status, "Completed", "nothing ships while shipping is down");
            paid += usize::from(status.status == "Paid");
        }
        if paid == ids.len() {
            break;
        }
        assert!(Instant::now() < until, "orders did not get paid while shipping was down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shop.faults.set_shipping_down(false);
    let statuses = shop.wait_final(&ids).await;
    assert!(statuses.iter().all(|s| s.status == "Completed"), "all complete once shipping is back: {statuses:?}");
    shop.check_outcomes(&statuses).await;
    shop.shop.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hybrid_survives_payments_timing_out() {
    let shop = start(Mode::Hybrid).await;
    // Slower than the payment client's deadline (1.5 s): every charge times out.
    shop.faults.set_payments_latency(Duration::from_secs(3));
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(shop.place(&order("async-book", GOOD_CARD)).await.expect("accepted while payments time out").order_id);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    for id in &ids {
        let status = shop.status(*id).await;
        assert!(!status.is_final(), "no order can end while payments time out: {status:?}");
    }
    shop.faults.set_payments_latency(Duration::ZERO);
    let statuses = shop.wait_final(&ids).await;
    assert!(statuses.iter().all(|s| s.status == "Completed"), "all complete once payments recover: {statuses:?}");
    shop.check_outcomes(&statuses).await;
    shop.shop.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_chain_fails_the_client_while_shipping_is_down() {
    let shop = start(Mode::SyncChain).await;
    let done = shop.place(&order("rust-mug", GOOD_CARD)).await.expect("placed while all is up");
    assert_eq!(done.status, "Completed", "the sync chain answers when everything is done");
    shop.check_outcomes(&[done]).await;

    shop.faults.set_shipping_down(true);
    let failed = shop.place(&order("rust-mug", GOOD_CARD)).await.expect_err("the chain breaks at shipping");
    assert!(failed.is_server_error(), "a 5xx for the client: {failed:?}");
    assert!(failed.to_string().contains("shipping"), "the error names shipping: {failed}");
    shop.shop.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_problem_not_a_panic() {
    let shop = start(Mode::Hybrid).await;
    let bad = [
        (
            serde_json::json!({"email": "nope", "card": GOOD_CARD, "lines": [{"sku": "rust-mug", "quantity": 1}]}),
            422,
            "email",
        ),
        (
            serde_json::json!({"email": "a@b.c", "card": "12", "lines": [{"sku": "rust-mug", "quantity": 1}]}),
            422,
            "card",
        ),
        (serde_json::json!({"email": "a@b.c", "card": GOOD_CARD, "lines": []}), 422, "lines"),
        (
            serde_json::json!({"email": "a@b.c", "card": GOOD_CARD, "lines": [{"sku": "rust-mug", "quantity": 0}]}),
            422,
            "quantity",
        ),
        (
            serde_json::json!({"email": "a@b.c", "card": GOOD_CARD, "lines": [{"sku": "no-such", "quantity": 1}]}),
            422,
            "no-such",
        ),
        (
            serde_json::json!({"email": "a@b.c", "card": GOOD_CARD, "lines": [{"sku": "limited-poster", "quantity": 99}]}),
            409,
            "out of stock",
        ),
        (serde_json::json!({"email": 7}), 400, "body"),
    ];
    for (body, status, mentions) in bad {
        let error = shop.edge.post("/orders").json(&body).send().await.expect_err("refused");
        assert_eq!(error.status().map(|s| s.as_u16()), Some(status), "{body}: {error:?}");
        let problem = error.problem().expect("a problem+json body");
        let detail = problem.detail.clone().unwrap_or_default();
        assert!(detail.contains(mentions), "{body}: the problem should mention {mentions:?}: {detail}");
    }
    let error = shop.edge.post("/orders").header("content-type", "application/json").body("{not json").send().await;
    assert_eq!(error.expect_err("refused").status().map(|s| s.as_u16()), Some(400));
    shop.shop.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_request_with_the_same_key_places_one_order() {
    let shop = start(Mode::Hybrid).await;
    let key = Uuid::now_v7();
    let first = shop.edge.post("/orders").json(&order("rust-mug", GOOD_CARD)).idempotency_key(key).send().await;
    let first = first.expect("placed");
    let again = shop.edge.post("/orders").json(&order("rust-mug", GOOD_CARD)).idempotency_key(key).send().await;
    let again = again.expect("replayed");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let (first, again): (OrderStatus, OrderStatus) = (first.json().unwrap(), again.json().unwrap());
    assert_eq!(first.order_id, again.order_id, "the same order, not a second one");
    let statuses = shop.wait_final(&[first.order_id]).await;
    shop.check_outcomes(&statuses).await;
    shop.shop.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_checks_each_service_and_the_edge_dependencies() {
    let shop = start(Mode::Hybrid).await;
    let ready: serde_json::Value = shop.edge.get("/health/ready").send_json().await.expect("the edge is ready");
    assert_eq!(ready["ready"], true, "{ready}");
    let names: Vec<&str> = ready["checks"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["inventory", "orders"], "{ready}");
    let shipping: serde_json::Value = shop.shipping.get("/health/ready").send_json().await.expect("ready");
    assert_eq!(shipping["checks"][0]["name"], "database", "{shipping}");
    shop.shop.shutdown().await;
}

/// A namespace of this test run's own, so runs sharing a broker or a database never mix.
fn test_namespace() -> String {
    format!("shoptest{}", &Uuid::now_v7().simple().to_string()[20..])
}

/// The same hybrid flow with the bus on a real broker, in a namespace of its own that is deleted afterwards.
async fn hybrid_on(engine: String) {
    let namespace = test_namespace();
    let dir = tempfile::tempdir().unwrap();
    let databases = Databases::Sqlite(dir.path().to_owned());
    let shop = start_on(Mode::Hybrid, dir, databases, engine.clone(), &namespace).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let card = if i == 4 { DECLINED_CARD } else { GOOD_CARD };
        ids.push(shop.place(&order("crab-socks", card)).await.expect("accepted").order_id);
    }
    let statuses = shop.wait_final(&ids).await;
    assert_eq!(statuses.iter().filter(|s| s.status == "Completed").count(), 9, "{statuses:?}");
    shop.check_outcomes(&statuses).await;
    shop.shop.shutdown().await;
    let bus = courier::connect(&engine).await.expect("the broker");
    for queue in bus.admin.queues().await.expect("the queues") {
        if queue.name.starts_with(&namespace) {
            let _ = bus.transport.delete_queue(&queue.name).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hybrid_on_rabbitmq() {
    use courier_testkit::services::RABBITMQ;
    if RABBITMQ.require() {
        hybrid_on(RABBITMQ.url()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hybrid_on_nats() {
    use courier_testkit::services::NATS;
    if NATS.require() {
        hybrid_on(NATS.url()).await;
    }
}

/// Every service's database on PostgreSQL (a schema each) and the bus on PostgreSQL too: one server, no files.
/// The hybrid flow, with shipping down for a while; then the rows are read from the services' own schemas.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hybrid_with_every_database_on_postgres() {
    use courier::postgres::sqlx;
    use courier_testkit::services::POSTGRES;
    if !POSTGRES.require() {
        return;
    }
    let (namespace, url, dir) = (test_namespace(), POSTGRES.url(), tempfile::tempdir().unwrap());
    let databases = Databases::Postgres(url.clone());
    let engine = format!("{url}?schema={namespace}_bus");
    let shop = start_on(Mode::Hybrid, dir, databases.clone(), engine, &namespace).await;
    shop.faults.set_shipping_down(true);
    let mut ids = Vec::new();
    for i in 0..12 {
        let card = if i == 5 { DECLINED_CARD } else { GOOD_CARD };
        ids.push(shop.place(&order(["rust-mug", "crab-socks"][i % 2], card)).await.expect("accepted").order_id);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    shop.faults.set_shipping_down(false);
    let statuses = shop.wait_final(&ids).await;
    assert_eq!(statuses.iter().filter(|s| s.status == "Completed").count(), 11, "{statuses:?}");
    shop.check_outcomes(&statuses).await;
    assert!(
        std::fs::read_dir(shop._dir.path()).unwrap().next().is_none(),
        "no SQLite file is made when the databases are on PostgreSQL"
    );

    let pool = sqlx::PgPool::connect(&url).await.expect("PostgreSQL");
    let count = |table: &str| {
        let (pool, sql) = (pool.clone(), format!("SELECT count(*) FROM {namespace}_{table}"));
        async move { sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).fetch_one(&pool).await.expect("a count") }
    };
    assert_eq!(count("orders.orders").await, 12, "orders in the orders schema");
    assert_eq!(count("shipping.shipments").await, 11, "one shipment per completed order");
    assert_eq!(count("email.emails").await, 11, "one email per completed order");
    assert_eq!(count("payments.charges").await, 11, "one charge per paid order");
    assert_eq!(count("inventory.reservations").await, 11, "the declined order's stock was released");
    assert!(count("shipping.inbox").await >= 11, "shipping's inbox records what it handled");
    shop.shop.shutdown().await;
    pool.close().await;
    databases.drop_schemas(&namespace).await.expect("dropped");
    let bus_schema = format!("DROP SCHEMA IF EXISTS \"{namespace}_bus\" CASCADE");
    let pool = sqlx::PgPool::connect(&url).await.expect("PostgreSQL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(bus_schema)).execute(&pool).await.expect("the bus schema dropped");
}

/// The sync chain with its databases on PostgreSQL: a completed order, a declined card (stock released, the order
/// cancelled with its reason) and a failure while shipping is down (charge refunded, stock released).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_chain_with_every_database_on_postgres() {
    use courier::postgres::sqlx;
    use courier_testkit::services::POSTGRES;
    if !POSTGRES.require() {
        return;
    }
    let (namespace, url, dir) = (test_namespace(), POSTGRES.url(), tempfile::tempdir().unwrap());
    let engine = format!("sqlite://{}", dir.path().join("bus.db").display());
    let databases = Databases::Postgres(url.clone());
    let shop = start_on(Mode::SyncChain, dir, databases.clone(), engine, &namespace).await;
    let done = shop.place(&order("rust-mug", GOOD_CARD)).await.expect("placed");
    assert_eq!(done.status, "Completed");
    let declined = shop.place(&order("rust-mug", DECLINED_CARD)).await.expect("answered");
    assert_eq!(declined.status, "Cancelled");
    assert!(declined.reason.as_deref().unwrap_or("").contains("declined"), "{declined:?}");
    shop.check_outcomes(&[done.clone(), declined.clone()]).await;
    shop.faults.set_shipping_down(true);
    shop.place(&order("rust-mug", GOOD_CARD)).await.expect_err("the chain breaks at shipping");

    let pool = sqlx::PgPool::connect(&url).await.expect("PostgreSQL");
    let one = |sql: String| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).fetch_one(&pool).await.expect("a row") }
    };
    assert_eq!(one(format!("SELECT count(*) FROM {namespace}_orders.orders")).await, 2, "the failed one is not saved");
    assert_eq!(one(format!("SELECT count(*) FROM {namespace}_payments.charges WHERE refunded = 1")).await, 1);
    assert_eq!(one(format!("SELECT count(*) FROM {namespace}_inventory.reservations")).await, 1, "only the completed");
    shop.shop.shutdown().await;
    pool.close().await;
    databases.drop_schemas(&namespace).await.expect("dropped");
}
