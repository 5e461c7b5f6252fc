//! Payments: an HTTP service in front of a fake card processor whose latency and failure rate the [`Faults`]
//! set. `POST /charges` (`{order_id, card, amount_cents}`, with an `Idempotency-Key`) answers `201 {charge_id}`,
//! `402` for a declined card (any card ending in `0002`), or `503` when the processor fails; `POST /refunds`
//! (`{order_id}`) gives the money back. Keys are kept in SQLite, so a retried charge is never taken twice.
//!
//! [`Faults`]: crate::Faults

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use courier::prelude::*;
use courier_http::Problem;
use courier_http::server::idempotency::{IdempotencyLayer, SqliteIdempotencyStore};
use http::StatusCode;
use rusqlite::{OptionalExtension, params};

use crate::Faults;
use crate::store::{self, ServiceDb};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS charges (order_id TEXT PRIMARY KEY, charge_id TEXT NOT NULL, card TEXT NOT NULL,
    amount_cents INTEGER NOT NULL, refunded INTEGER NOT NULL DEFAULT 0, charged_at INTEGER NOT NULL);
";

/// A card that is always declined (the test card of the fake processor).
pub const DECLINED_CARD: &str = "4000000000000002";

/// `POST /charges` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChargeRequest {
    /// The order.
    pub order_id: Uuid,
    /// The card number.
    pub card: String,
    /// The amount.
    pub amount_cents: u64,
}

/// `POST /charges` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Charge {
    /// The charge.
    pub charge_id: String,
}

/// `POST /refunds` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefundRequest {
    /// The order whose charge to refund.
    pub order_id: Uuid,
}

#[derive(Debug, Clone)]
pub(crate) struct Payments {
    db: ServiceDb,
    faults: Faults,
    keys: Arc<SqliteIdempotencyStore>,
}

impl Payments {
    pub(crate) async fn open(dir: &std::path::Path, faults: Faults) -> anyhow::Result<Self> {
        let db = store::open(dir, "payments", SCHEMA).await?;
        let keys = Arc::new(SqliteIdempotencyStore::open(dir.join("payments-keys.db"))?);
        Ok(Self { db, faults, keys })
    }

    pub(crate) fn router(&self) -> Router {
        Router::new()
            .route("/charges", post(charge))
            .layer(IdempotencyLayer::new(self.keys.clone()))
            .route("/refunds", post(refund))
            .with_state(self.clone())
    }
}

async fn charge(
    State(payments): State<Payments>,
    Json(request): Json<ChargeRequest>,
) -> Result<(StatusCode, Json<Charge>), Problem> {
    if request.amount_cents == 0 {
        return Err(Problem::unprocessable("amount_cents must be positive"));
    }
    let latency = payments.faults.payments_latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if rand_below_one() < payments.faults.payments_failure_rate() {
        return Err(Problem::unavailable("the card processor failed; try again"));
    }
    if request.card.ends_with("0002") {
        return Err(Problem::new(StatusCode::PAYMENT_REQUIRED)
            .with_title("Card declined")
            .with_detail(format!("card ending {} was declined", &request.card[request.card.len() - 4..])));
    }
    let id = request.order_id.to_string();
    let charge_id = store::transaction(&payments.db, move |tx| {
        let existing: Option<String> =
            tx.query_row("SELECT charge_id FROM charges WHERE order_id = ?1", [&id], |r| r.get(0)).optional()?;
        if let Some(existing) = existing {
            return Ok(existing);
        }
        let charge_id = format!("ch_{}", Uuid::now_v7().simple());
        tx.execute(
            "INSERT INTO charges (order_id, charge_id, card, amount_cents, charged_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, charge_id, request.card, request.amount_cents as i64, chrono::Utc::now().timestamp_millis()],
        )?;
        Ok(charge_id)
    })
    .await
    .map_err(|e| Problem::internal(format!("payments database: {e}")))?;
    Ok((StatusCode::CREATED, Json(Charge { charge_id })))
}

async fn refund(State(payments): State<Payments>, Json(request): Json<RefundRequest>) -> Result<Json<bool>, Problem> {
    let id = request.order_id.to_string();
    let refunded = payments
        .db
        .with_conn(move |c| c.execute("UPDATE charges SET refunded = 1 WHERE order_id = ?1", [id]))
        .await
        .map_err(|e| Problem::internal(format!("payments database: {e}")))?;
    Ok(Json(refunded > 0))
}

/// A number in `0..1`, good enough for a fake processor's failure rate.
fn rand_below_one() -> f64 {
    (Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0
}
