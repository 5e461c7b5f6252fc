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
use courier::postgres::sqlx;
use courier::prelude::*;
use courier::{BusBuilder, HandlerError};
use courier_http::Problem;
use rusqlite::{OptionalExtension, params};

use crate::messages::{Line, ReleaseStock, ReserveStock, StockRejected, StockReserved};
use crate::store::{self, End, Place, ServiceDb};
use crate::{Stats, catalog};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS products (sku TEXT PRIMARY KEY, name TEXT NOT NULL, price_cents BIGINT NOT NULL,
    available BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (order_id TEXT PRIMARY KEY, lines TEXT NOT NULL, reserved_at BIGINT NOT NULL);
";
const SEED: &str = "INSERT INTO products (sku, name, price_cents, available) VALUES ($1, $2, $3, $4)
    ON CONFLICT (sku) DO NOTHING";
const PRODUCTS: &str = "SELECT sku, name, price_cents, available FROM products ORDER BY sku";
const PRODUCT: &str = "SELECT sku, name, price_cents, available FROM products WHERE sku = $1";
/// Holds an order's reservation; no row for a repeat.
const HOLD: &str = "INSERT INTO reservations (order_id, lines, reserved_at) VALUES ($1, $2, $3)
    ON CONFLICT (order_id) DO NOTHING";
/// Takes units if there are enough: no row otherwise (so concurrent reservations never oversell).
const TAKE: &str = "UPDATE products SET available = available - $1 WHERE sku = $2 AND available >= $1";
const AVAILABLE: &str = "SELECT available FROM products WHERE sku = $1";
/// Ends an order's reservation, returning what it held (nothing for a repeat).
const UNHOLD: &str = "DELETE FROM reservations WHERE order_id = $1 RETURNING lines";
const PUT_BACK: &str = "UPDATE products SET available = available + $1 WHERE sku = $2";

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
    pub(crate) async fn open(place: &Place, stats: Arc<Stats>) -> anyhow::Result<Self> {
        let db = ServiceDb::open(place, SCHEMA).await?;
        match &db {
            ServiceDb::Sqlite(db) => {
                store::sqlite_transaction(db, |tx| {
                    for (sku, name, price, available) in catalog::PRODUCTS {
                        tx.execute(SEED, params![sku, name, price as i64, available as i64])?;
                    }
                    Ok(End::Commit(()))
                })
                .await?
            }
            ServiceDb::Postgres(db) => {
                let mut tx = db.pool().begin().await?;
                for (sku, name, price, available) in catalog::PRODUCTS {
                    let query = sqlx::query(SEED).bind(sku).bind(name).bind(price as i64).bind(available as i64);
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(Self { db, stats })
    }

    pub(crate) async fn products(&self) -> anyhow::Result<Vec<Product>> {
        let rows: Vec<ProductRow> = match &self.db {
            ServiceDb::Sqlite(db) => {
                db.with_conn(|conn| conn.prepare(PRODUCTS)?.query_map([], product_row)?.collect()).await?
            }
            ServiceDb::Postgres(db) => sqlx::query_as(PRODUCTS).fetch_all(db.pool()).await?,
        };
        Ok(rows.into_iter().map(product).collect())
    }

    async fn product(&self, sku: String) -> anyhow::Result<Option<Product>> {
        let row: Option<ProductRow> = match &self.db {
            ServiceDb::Sqlite(db) => {
                db.with_conn(move |conn| conn.query_row(PRODUCT, [sku], product_row).optional()).await?
            }
            ServiceDb::Postgres(db) => sqlx::query_as(PRODUCT).bind(sku).fetch_optional(db.pool()).await?,
        };
        Ok(row.map(product))
    }

    /// Holds `lines` for `order_id`, all or nothing; a repeat for the same order changes nothing. Units are taken
    /// by a conditional update, in SKU order, so concurrent reservations neither oversell nor deadlock.
    pub(crate) async fn reserve(&self, order_id: Uuid, mut lines: Vec<Line>) -> anyhow::Result<Reservation> {
        lines.sort_by(|a, b| a.sku.cmp(&b.sku));
        let (id, json, now) =
            (order_id.to_string(), serde_json::to_string(&lines)?, chrono::Utc::now().timestamp_millis());
        let outcome = match &self.db {
            ServiceDb::Sqlite(db) => {
                store::sqlite_transaction(db, move |tx| {
                    if tx.execute(HOLD, params![id, json, now])? == 0 {
                        return Ok(End::Commit(Reservation::Reserved { repeat: true }));
                    }
                    for line in &lines {
                        if tx.execute(TAKE, params![i64::from(line.quantity), line.sku])? == 0 {
                            let available = tx.query_row(AVAILABLE, [&line.sku], |r| r.get(0)).optional()?;
                            return Ok(End::Rollback(shortfall(line, available)));
                        }
                    }
                    Ok(End::Commit(Reservation::Reserved { repeat: false }))
                })
                .await?
            }
            ServiceDb::Postgres(db) => reserve_pg(db.pool(), id, json, now, &lines).await?,
        };
        if outcome == (Reservation::Reserved { repeat: true }) {
            self.stats.duplicate();
        }
        Ok(outcome)
    }

    /// Gives back what was held for `order_id`, if anything (a repeat changes nothing).
    pub(crate) async fn release(&self, order_id: Uuid) -> anyhow::Result<bool> {
        let id = order_id.to_string();
        match &self.db {
            ServiceDb::Sqlite(db) => {
                store::sqlite_transaction(db, move |tx| {
                    let held: Option<String> = tx.query_row(UNHOLD, [&id], |r| r.get(0)).optional()?;
                    let Some(held) = held else { return Ok(End::Commit(false)) };
                    for line in serde_json::from_str::<Vec<Line>>(&held).unwrap_or_default() {
                        tx.execute(PUT_BACK, params![i64::from(line.quantity), line.sku])?;
                    }
                    Ok(End::Commit(true))
                })
                .await
            }
            ServiceDb::Postgres(db) => {
                let mut tx = db.pool().begin().await?;
                let held: Option<String> = sqlx::query_scalar(UNHOLD).bind(id).fetch_optional(&mut *tx).await?;
                let Some(held) = held else { return Ok(false) };
                for line in serde_json::from_str::<Vec<Line>>(&held).unwrap_or_default() {
                    sqlx::query(PUT_BACK).bind(i64::from(line.quantity)).bind(line.sku).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(true)
            }
        }
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

/// [`Inventory::reserve`] on PostgreSQL: the same steps as on SQLite, in one transaction.
async fn reserve_pg(
    pool: &sqlx::PgPool,
    id: String,
    json: String,
    now: i64,
    lines: &[Line],
) -> sqlx::Result<Reservation> {
    let mut tx = pool.begin().await?;
    if sqlx::query(HOLD).bind(id).bind(json).bind(now).execute(&mut *tx).await?.rows_affected() == 0 {
        return Ok(Reservation::Reserved { repeat: true });
    }
    for line in lines {
        let take = sqlx::query(TAKE).bind(i64::from(line.quantity)).bind(&line.sku);
        if take.execute(&mut *tx).await?.rows_affected() == 0 {
            let available = sqlx::query_scalar(AVAILABLE).bind(&line.sku).fetch_optional(&mut *tx).await?;
            tx.rollback().await?;
            return Ok(shortfall(line, available));
        }
    }
    tx.commit().await?;
    Ok(Reservation::Reserved { repeat: false })
}

/// `sku, name, price_cents, available` as both stores read it.
type ProductRow = (String, String, i64, i64);

fn product_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ProductRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn product((sku, name, price_cents, available): ProductRow) -> Product {
    Product { sku, name, price_cents: price_cents.max(0) as u64, available: available.max(0) as u64 }
}

/// Why `line` cannot be held, given what its product has (`None`: no such product).
fn shortfall(line: &Line, available: Option<i64>) -> Reservation {
    let reason = match available {
        None => format!("unknown product '{}'", line.sku),
        Some(n) => format!("out of stock: '{}' has {}, {} wanted", line.sku, n.max(0), line.quantity),
    };
    Reservation::Rejected { reason }
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
