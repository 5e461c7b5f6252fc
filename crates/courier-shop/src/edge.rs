//! The edge (API gateway): the only service clients talk to. Validates input (every bad request gets a
//! problem+json 4xx naming the field, never a panic), checks stock synchronously with inventory over gRPC (the
//! answer is needed now: an order for something sold out is refused at once), prices the order, and hands it to
//! orders over HTTP.
//!
//! HTTP: `POST /orders` (`{email, card, lines: [{sku, quantity}]}`), `GET /orders/{id}`, `GET /products`.
//!
//! A client that may retry sends `Idempotency-Key` with `POST /orders`: a repeat gets the first answer again
//! (with `idempotent-replayed: true`) instead of placing a second order; keys are kept in the edge's database
//! (SQLite or PostgreSQL) for a day.

use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use courier::prelude::*;
use courier_grpc::client::{CircuitBreakerConfig as GrpcBreaker, ResilientChannel, RetryPolicy as GrpcRetry};
use courier_grpc::example::{GET_STOCK, InventoryClient, StockRequest};
use courier_http::client::{CircuitBreakerConfig, HttpClient, RetryPolicy};
use courier_http::server::idempotency::IdempotencyLayer;
use courier_http::{HttpError, Problem};
use http::StatusCode;

use crate::Addresses;
use crate::inventory::Product;
use crate::messages::Line;
use crate::orders::{NewOrder, OrderStatus};
use crate::store::Place;

/// What a client sends to place an order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlaceOrder {
    /// The customer's email address.
    pub email: String,
    /// The card number (digits only).
    pub card: String,
    /// What to buy.
    pub lines: Vec<Line>,
}

#[derive(Debug, Clone)]
pub(crate) struct Edge {
    inventory: HttpClient,
    stock: InventoryClient<ResilientChannel>,
    orders: HttpClient,
    keys: IdempotencyLayer,
}

impl Edge {
    pub(crate) async fn new(place: &Place, addresses: &Addresses) -> anyhow::Result<Self> {
        let inventory = HttpClient::builder(&addresses.inventory)
            .name("inventory")
            .deadline(Duration::from_millis(800))
            .attempt_timeout(Duration::from_millis(300))
            .retry(RetryPolicy::budgeted())
            .circuit_breaker(CircuitBreakerConfig::failure_rate(0.5))
            .build()?;
        // Placing is not retried here: the edge answers the client, who may retry with the same request.
        let orders = HttpClient::builder(&addresses.orders).name("orders").deadline(Duration::from_secs(5)).build()?;
        // The stock check at checkout: gRPC, idempotent, so retried and guarded by its own breaker.
        let channel = ResilientChannel::builder(&addresses.inventory_grpc)
            .name("inventory-grpc")
            .deadline(Duration::from_millis(800))
            .attempt_timeout(Duration::from_millis(300))
            .retry(GrpcRetry::budgeted())
            .idempotent([GET_STOCK])
            .circuit_breaker(GrpcBreaker::failure_rate(0.5))
            .build()
            .map_err(|s| anyhow::anyhow!("the inventory gRPC channel: {}", s.message()))?;
        let keys = IdempotencyLayer::new(place.idempotency_keys().await?).ttl(Duration::from_secs(24 * 3600));
        Ok(Self { inventory, stock: InventoryClient::new(channel), orders, keys })
    }

    pub(crate) fn router(&self) -> Router {
        Router::new()
            .route("/orders", post(place))
            .layer(self.keys.clone())
            .route("/orders/{order_id}", get(show))
            .route("/products", get(products))
            .with_state(self.clone())
    }
}

fn validate(order: &PlaceOrder) -> Result<(), Problem> {
    let email = order.email.trim();
    if email.len() > 254 || !email.contains('@') || email.starts_with('@') || email.ends_with('@') {
        return Err(Problem::unprocessable(format!("email: {:?} is not an email address", order.email)));
    }
    if !(12..=19).contains(&order.card.len()) || !order.card.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Problem::unprocessable("card: give 12 to 19 digits, without spaces"));
    }
    if order.lines.is_empty() || order.lines.len() > 20 {
        return Err(Problem::unprocessable("lines: give 1 to 20 lines"));
    }
    for (i, line) in order.lines.iter().enumerate() {
        if !(1..=100).contains(&line.quantity) {
            return Err(Problem::unprocessable(format!("lines[{i}].quantity: give 1 to 100, not {}", line.quantity)));
        }
        if line.sku.is_empty() || line.sku.len() > 64 {
            return Err(Problem::unprocessable(format!("lines[{i}].sku: give a product's sku")));
        }
    }
    Ok(())
}

/// Passes an upstream failure on: its problem if it sent one, else a 502/504 saying which service failed.
fn upstream(service: &str, e: HttpError) -> Problem {
    if let Some(problem) = e.problem() {
        return problem.clone();
    }
    let status = if e.is_timeout() { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::BAD_GATEWAY };
    Problem::new(status).with_title(format!("{service} failed")).with_detail(e.to_string())
}

async fn place(
    State(edge): State<Edge>,
    body: Result<Json<PlaceOrder>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<OrderStatus>), Problem> {
    let Json(order) = body.map_err(|e| Problem::bad_request(format!("the body is not a valid order: {e}")))?;
    validate(&order)?;
    let mut total_cents = 0u64;
    for line in &order.lines {
        let product = match edge.stock.clone().get_stock(StockRequest { sku: line.sku.clone() }).await {
            Ok(stock) => stock.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => {
                return Err(Problem::unprocessable(format!("lines: no product '{}'", line.sku)));
            }
            Err(status) => {
                let code = if status.code() == tonic::Code::DeadlineExceeded {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                return Err(Problem::new(code).with_title("inventory failed").with_detail(format!(
                    "stock check: {}: {}",
                    status.code(),
                    status.message()
                )));
            }
        };
        if product.available < u64::from(line.quantity) {
            return Err(Problem::conflict(format!(
                "out of stock: '{}' has {} left, {} wanted",
                line.sku, product.available, line.quantity
            )));
        }
        total_cents += product.price_cents * u64::from(line.quantity);
    }
    let new = NewOrder {
        order_id: Uuid::now_v7(),
        email: order.email.trim().to_owned(),
        lines: order.lines,
        total_cents,
        card: order.card,
    };
    let response = edge.orders.post("/orders").json(&new).send().await.map_err(|e| upstream("orders", e))?;
    let status = response.status();
    let placed: OrderStatus = response.json().map_err(|e| upstream("orders", e))?;
    Ok((status, Json(placed)))
}

async fn show(State(edge): State<Edge>, UrlPath(order_id): UrlPath<Uuid>) -> Result<Json<OrderStatus>, Problem> {
    let status =
        edge.orders.get(&format!("/orders/{order_id}")).send_json().await.map_err(|e| upstream("orders", e))?;
    Ok(Json(status))
}

async fn products(State(edge): State<Edge>) -> Result<Json<Vec<Product>>, Problem> {
    edge.inventory.get("/products").send_json().await.map(Json).map_err(|e| upstream("inventory", e))
}
