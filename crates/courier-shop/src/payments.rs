//! Payments: an HTTP service in front of a fake card processor whose latency and failure rate the [`Faults`]
//! set. `POST /charges` (`{order_id, card, amount_cents}`, with an `Idempotency-Key`) answers `201 {charge_id}`,
//! `402` for a declined card (any card ending in `0002`), or `503` when the processor fails; `POST /refunds`
//! (`{order_id}`) gives the money back. Keys are kept in the service's database, so a retried charge is never
//! taken twice.
//!
//! [`Faults`]: crate::Faults

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use courier::postgres::sqlx;
use courier::prelude::*;
use courier_http::Problem;
use courier_http::server::idempotency::IdempotencyLayer;
use http::StatusCode;
use rusqlite::params;

use crate::Faults;
use crate::store::{Place, ServiceDb};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS charges (order_id TEXT PRIMARY KEY, charge_id TEXT NOT NULL, card TEXT NOT NULL,
    amount_cents BIGINT NOT NULL, refunded BIGINT NOT NULL DEFAULT 0, charged_at BIGINT NOT NULL);
";
/// Records a charge unless the order has one (no row then: the first charge stands).
const CHARGE: &str =
    "INSERT INTO charges (order_id, charge_id, card, amount_cents, charged_at) VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (order_id) DO NOTHING";
const CHARGE_OF: &str = "SELECT charge_id FROM charges WHERE order_id = $1";
const REFUND: &str = "UPDATE charges SET refunded = 1 WHERE order_id = $1";

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
    keys: IdempotencyLayer,
}

impl Payments {
    pub(crate) async fn open(place: &Place, faults: Faults) -> anyhow::Result<Self> {
        let db = ServiceDb::open(place, SCHEMA).await?;
        Ok(Self { db, faults, keys: IdempotencyLayer::new(place.idempotency_keys().await?) })
    }

    /// Charges `request` unless its order was charged; returns the order's charge id.
    async fn charge(&self, request: ChargeRequest) -> anyhow::Result<String> {
        let (id, now) = (request.order_id.to_string(), chrono::Utc::now().timestamp_millis());
        let charge_id = format!("ch_{}", Uuid::now_v7().simple());
        let amount = i64::try_from(request.amount_cents)?;
        Ok(match &self.db {
            ServiceDb::Sqlite(db) => {
                db.with_conn(move |c| {
                    c.execute(CHARGE, params![id, charge_id, request.card, amount, now])?;
                    c.query_row(CHARGE_OF, [id], |r| r.get(0))
                })
                .await?
            }
            ServiceDb::Postgres(db) => {
                let charge = sqlx::query(CHARGE).bind(&id).bind(charge_id).bind(request.card).bind(amount).bind(now);
                charge.execute(db.pool()).await?;
                sqlx::query_scalar(CHARGE_OF).bind(id).fetch_one(db.pool()).await?
            }
        })
    }

    /// Marks the order's charge refunded; `false` if it had none.
    async fn refund(&self, order_id: Uuid) -> anyhow::Result<bool> {
        let id = order_id.to_string();
        let refunded = match &self.db {
            ServiceDb::Sqlite(db) => db.with_conn(move |c| c.execute(REFUND, [id])).await? as u64,
            ServiceDb::Postgres(db) => sqlx::query(REFUND).bind(id).execute(db.pool()).await?.rows_affected(),
        };
        Ok(refunded > 0)
    }

    pub(crate) fn router(&self) -> Router {
        Router::new()
            .route("/charges", post(charge))
            .layer(self.keys.clone())
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
    let charge_id = payments.charge(request).await.map_err(|e| Problem::internal(format!("payments database: {e}")))?;
    Ok((StatusCode::CREATED, Json(Charge { charge_id })))
}

async fn refund(State(payments): State<Payments>, Json(request): Json<RefundRequest>) -> Result<Json<bool>, Problem> {
    let refunded =
        payments.refund(request.order_id).await.map_err(|e| Problem::internal(format!("payments database: {e}")))?;
    Ok(Json(refunded))
}

/// A number in `0..1`, good enough for a fake processor's failure rate.
fn rand_below_one() -> f64 {
    (Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0
}
