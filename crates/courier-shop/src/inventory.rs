//! Inventory: owns the stock. Answers the synchronous stock check at checkout over gRPC
//! (`courier.example.v1.Inventory/GetStock`: the edge needs the answer now), and holds or releases stock for
//! orders: by command on the bus in hybrid mode, over HTTP in the sync chain.
//!
//! HTTP: `GET /products`, `GET /stock/{sku}` (the same check), `POST /reservations` (`{order_id, lines}`: 200, or 409 when out of
//! stock), `DELETE /reservations/{order_id}`. Bus queue `inventory`: `ReserveStock`, `ReleaseStock`; publishes
//! `StockReserved` / `StockRejected`. A reservation is keyed by order, so a repeated command changes nothing.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use courier::prelude::*;
use courier::{BusBuilder, HandlerError};
use courier_http::Problem;
use rusqlite::{OptionalExtension, params};

use crate::messages::{Line, ReleaseStock, ReserveStock, StockRejected, StockReserved};
use crate::store::{self, ServiceDb};
use crate::{Stats, catalog};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS products (sku TEXT PRIMARY KEY, name TEXT NOT NULL, price_cents INTEGER NOT NULL,
    available INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (order_id TEXT PRIMARY KEY, lines TEXT NOT NULL, reserved_at INTEGER NOT NULL);
";

/// A product on sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Stock keeping unit.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Unit price.
    pub price_cents: u64,
    /// Units in stock and not held.
    pub available: u64,
}

/// The outcome of a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Reservation {
    /// Held (now or by an earlier identical request).
    Reserved {
        /// Whether it was already held (a repeat).
        repeat: bool,
    },
    /// Not enough stock.
    Rejected {
        /// Why.
        reason: String,
    },
}

/// The inventory service.
#[derive(Debug, Clone)]
pub(crate) struct Inventory {
    db: ServiceDb,
    stats: Arc<Stats>,
}

impl Inventory {
    pub(crate) async fn open(dir: &std::path::Path, stats: Arc<Stats>) -> anyhow::Result<Self> {
        let db = store::open(dir, "inventory", SCHEMA).await?;
        store::transaction(&db, |tx| {
            for (sku, name, price, available) in catalog::PRODUCTS {
                tx.execute(
                    "INSERT OR IGNORE INTO products (sku, name, price_cents, available) VALUES (?1, ?2, ?3, ?4)",
                    params![sku, name, price as i64, available as i64],
                )?;
            }
            Ok(())
        })
        .await?;
        Ok(Self { db, stats })
    }

    pub(crate) async fn products(&self) -> anyhow::Result<Vec<Product>> {
        Ok(self
            .db
            .with_conn(|conn| {
                let mut stmt = conn.prepare("SELECT sku, name, price_cents, available FROM products ORDER BY sku")?;
                stmt.query_map([], product_row)?.collect()
            })
            .await?)
    }

    async fn product(&self, sku: String) -> anyhow::Result<Option<Product>> {
        Ok(self
            .db
            .with_conn(move |conn| {
                conn.query_row("SELECT sku, name, price_cents, available FROM products WHERE sku = ?1", [sku], |r| {
                    product_row(r)
                })
                .optional()
            })
            .await?)
    }

    /// Holds `lines` for `order_id`, all or nothing; a repeat for the same order changes nothing.
    pub(crate) async fn reserve(&self, order_id: Uuid, lines: Vec<Line>) -> anyhow::Result<Reservation> {
        let outcome = store::transaction(&self.db, move |tx| {
            let id = order_id.to_string();
            let held: Option<String> = tx
                .query_row("SELECT order_id FROM reservations WHERE order_id = ?1", [&id], |r| r.get(0))
                .optional()?;
            if held.is_some() {
                return Ok(Reservation::Reserved { repeat: true });
            }
            for line in &lines {
                let available: Option<u64> = tx
                    .query_row("SELECT available FROM products WHERE sku = ?1", [&line.sku], |r| r.get::<_, i64>(0))
                    .optional()?
                    .map(|n| n.max(0) as u64);
                match available {
                    None => return Ok(Reservation::Rejected { reason: format!("unknown product '{}'", line.sku) }),
                    Some(n) if n < u64::from(line.quantity) => {
                        return Ok(Reservation::Rejected {
                            reason: format!("out of stock: '{}' has {n}, {} wanted", line.sku, line.quantity),
                        });
                    }
                    Some(_) => {}
                }
            }
            for line in &lines {
                tx.execute(
                    "UPDATE products SET available = available - ?1 WHERE sku = ?2",
                    params![line.quantity, line.sku],
                )?;
            }
            let json = serde_json::to_string(&lines).unwrap_or_default();
            tx.execute(
                "INSERT INTO reservations (order_id, lines, reserved_at) VALUES (?1, ?2, ?3)",
                params![id, json, chrono::Utc::now().timestamp_millis()],
            )?;
            Ok(Reservation::Reserved { repeat: false })
        })
        .await?;
        if outcome == (Reservation::Reserved { repeat: true }) {
            self.stats.duplicate();
        }
        Ok(outcome)
    }

    /// Gives back what was held for `order_id`, if anything (a repeat changes nothing).
    pub(crate) async fn release(&self, order_id: Uuid) -> anyhow::Result<bool> {
        store::transaction(&self.db, move |tx| {
            let id = order_id.to_string();
            let lines: Option<String> =
                tx.query_row("SELECT lines FROM reservations WHERE order_id = ?1", [&id], |r| r.get(0)).optional()?;
            let Some(lines) = lines else { return Ok(false) };
            let lines: Vec<Line> = serde_json::from_str(&lines).unwrap_or_default();
            for line in lines {
                tx.execute(
                    "UPDATE products SET available = available + ?1 WHERE sku = ?2",
                    params![line.quantity, line.sku],
                )?;
            }
            tx.execute("DELETE FROM reservations WHERE order_id = ?1", [&id])?;
            Ok(true)
        })
        .await
    }

    /// The HTTP API.
    pub(crate) fn router(&self) -> Router {
        Router::new()
            .route("/products", get(list_products))
            .route("/stock/{sku}", get(stock))
            .route("/reservations", post(reserve))
            .route("/reservations/{order_id}", delete(release))
            .with_state(self.clone())
    }

    /// The bus consumers (queue `inventory`).
    pub(crate) fn consumers(&self, builder: BusBuilder) -> BusBuilder {
        let (reserve, release) = (self.clone(), self.clone());
        builder
            .consume(move |command: ReserveStock, ctx: Context| {
                let inventory = reserve.clone();
                async move {
                    let order_id = command.order_id;
                    match inventory.reserve(order_id, command.lines).await.map_err(HandlerError::transient)? {
                        Reservation::Reserved { .. } => ctx.publish(StockReserved { order_id }).await?,
                        Reservation::Rejected { reason } => ctx.publish(StockRejected { order_id, reason }).await?,
                    }
                    Ok::<(), HandlerError>(())
                }
            })
            .consume(move |command: ReleaseStock, _ctx: Context| {
                let inventory = release.clone();
                async move {
                    inventory.release(command.order_id).await.map_err(HandlerError::transient)?;
                    Ok::<(), HandlerError>(())
                }
            })
    }
}

#[tonic::async_trait]
impl courier_grpc::example::Inventory for Inventory {
    async fn get_stock(
        &self,
        request: tonic::Request<courier_grpc::example::StockRequest>,
    ) -> Result<tonic::Response<courier_grpc::example::Stock>, tonic::Status> {
        let sku = request.into_inner().sku;
        if sku.is_empty() {
            return Err(tonic::Status::invalid_argument("sku: give a product's sku"));
        }
        let product = self.product(sku.clone()).await.map_err(|e| tonic::Status::internal(format!("{e}")))?;
        let product = product.ok_or_else(|| tonic::Status::not_found(format!("no product '{sku}'")))?;
        Ok(tonic::Response::new(courier_grpc::example::Stock {
            sku: product.sku,
            name: product.name,
            price_cents: product.price_cents,
            available: product.available,
        }))
    }
}

fn product_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Product> {
    let number = |i: usize| r.get::<_, i64>(i).map(|n| n.max(0) as u64);
    Ok(Product { sku: r.get(0)?, name: r.get(1)?, price_cents: number(2)?, available: number(3)? })
}

fn internal(e: anyhow::Error) -> Problem {
    Problem::internal(format!("inventory database: {e}"))
}

async fn list_products(State(inventory): State<Inventory>) -> Result<Json<Vec<Product>>, Problem> {
    inventory.products().await.map(Json).map_err(internal)
}

async fn stock(State(inventory): State<Inventory>, UrlPath(sku): UrlPath<String>) -> Result<Json<Product>, Problem> {
    match inventory.product(sku.clone()).await.map_err(internal)? {
        Some(product) => Ok(Json(product)),
        None => Err(Problem::not_found(format!("no product '{sku}'"))),
    }
}

/// `POST /reservations` body.
#[derive(Debug, Deserialize)]
struct ReserveBody {
    order_id: Uuid,
    lines: Vec<Line>,
}

async fn reserve(
    State(inventory): State<Inventory>,
    Json(body): Json<ReserveBody>,
) -> Result<Json<Reservation>, Problem> {
    match inventory.reserve(body.order_id, body.lines).await.map_err(internal)? {
        Reservation::Rejected { reason } => Err(Problem::conflict(reason)),
        reserved => Ok(Json(reserved)),
    }
}

async fn release(State(inventory): State<Inventory>, UrlPath(order_id): UrlPath<Uuid>) -> Result<Json<bool>, Problem> {
    inventory.release(order_id).await.map(Json).map_err(internal)
}
