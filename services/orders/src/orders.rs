//! Orders as stored (PostgreSQL): placing one, reading them, and changing
//! their status only along the state machine's edges, under the order's
//! row lock and, for saga steps, the holder's lease.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::catalogue::Take;
use crate::money::Currency;
use crate::pricing::Applied;
use crate::workflow::{self, IllegalTransition, Status};

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Line {
    /// The product.
    pub sku: String,
    /// How many.
    pub qty: i64,
    /// The catalogue's unit price, in minor units.
    pub unit_price: i64,
    /// What the pricing rules took off this line, in minor units.
    pub discount: i64,
}

/// How the order was priced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pricing {
    /// Σ qty × unit price.
    pub subtotal: i64,
    /// Every discount.
    pub discount: i64,
    /// Every tax.
    pub tax: i64,
    /// What the customer pays.
    pub total: i64,
    /// The rules that fired, in order, with what each changed.
    pub applied: Vec<Applied>,
    /// The SHA-256 of the rules file in force.
    pub rules: String,
}

/// Where an order ships.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Shipping {
    /// ISO 3166-1 alpha-2, upper case.
    pub country: String,
    /// The postal code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
}

/// An order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Order {
    /// Its id.
    pub id: Uuid,
    /// The customer's number in events (`C000042`).
    pub customer_id: String,
    /// The auth service's user who placed it.
    pub user_id: String,
    /// Where it is.
    pub status: Status,
    /// The currency of every amount.
    pub currency: Currency,
    /// `web`, `mobile` or `store`.
    pub channel: String,
    /// Where it ships.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping: Option<Shipping>,
    /// The coupon given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon: Option<String>,
    /// The lines.
    pub lines: Vec<Line>,
    /// The prices.
    pub pricing: Pricing,
    /// Why the payment failed or the order was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Raised by every change.
    pub version: i64,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl Order {
    /// Its lines as stock to take or give back.
    pub fn takes(&self) -> Vec<Take> {
        self.lines
            .iter()
            .map(|l| Take {
                sku: l.sku.clone(),
                qty: l.qty,
            })
            .collect()
    }
}

/// The customer's number for `user_id`, made on first use, and its segment.
pub async fn customer(tx: &mut PgConnection, user_id: &str) -> sqlx::Result<(String, String)> {
    let made: Option<(i64, String)> = sqlx::query_as(
        "WITH new AS (INSERT INTO customers (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING \
         RETURNING number, segment) \
         SELECT number, segment FROM new UNION ALL \
         SELECT number, segment FROM customers WHERE user_id = $1 LIMIT 1",
    )
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?;
    let row = match made {
        Some(row) => row,
        // Another transaction made it while this statement waited: its
        // snapshot did not show the row; a new statement's does.
        None => {
            sqlx::query_as("SELECT number, segment FROM customers WHERE user_id = $1")
                .bind(user_id)
                .fetch_one(&mut *tx)
                .await?
        }
    };
    Ok((customer_number(row.0), row.1))
}

/// `42` → `C000042`.
pub fn customer_number(number: i64) -> String {
    format!("C{number:06}")
}

/// Sets a customer's pricing segment (made if new).
pub async fn set_segment(tx: &mut PgConnection, user_id: &str, segment: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO customers (user_id, segment) VALUES ($1, $2) \
         ON CONFLICT (user_id) DO UPDATE SET segment = EXCLUDED.segment",
    )
    .bind(user_id)
    .bind(segment)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Records a new order (already reserved) in the caller's transaction.
pub async fn insert(
    tx: &mut PgConnection,
    order: &Order,
    give_up_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    let number: i64 = order
        .customer_id
        .trim_start_matches('C')
        .parse()
        .unwrap_or_default();
    let pricing =
        serde_json::json!({"applied": order.pricing.applied, "rules": order.pricing.rules});
    sqlx::query(
        "INSERT INTO orders (id, user_id, customer_number, status, currency, channel, ship_country, \
         ship_postal, coupon, subtotal, discount, tax, total, pricing, give_up_at, version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $17)",
    )
    .bind(order.id)
    .bind(&order.user_id)
    .bind(number)
    .bind(order.status.name())
    .bind(order.currency.code())
    .bind(&order.channel)
    .bind(order.shipping.as_ref().map(|s| s.country.as_str()))
    .bind(order.shipping.as_ref().and_then(|s| s.postal_code.as_deref()))
    .bind(order.coupon.as_deref())
    .bind(order.pricing.subtotal)
    .bind(order.pricing.discount)
    .bind(order.pricing.tax)
    .bind(order.pricing.total)
    .bind(pricing)
    .bind(give_up_at)
    .bind(order.version)
    .bind(order.created_at)
    .execute(&mut *tx)
    .await?;
    for (index, line) in order.lines.iter().enumerate() {
        sqlx::query(
            "INSERT INTO order_lines (order_id, line, sku, qty, unit_price, discount) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(order.id)
        .bind(index as i32)
        .bind(&line.sku)
        .bind(line.qty as i32)
        .bind(line.unit_price)
        .bind(line.discount)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO order_transitions (order_id, from_status, to_status, reason) VALUES ($1, 'pending', $2, 'stock reserved')",
    )
    .bind(order.id)
    .bind(order.status.name())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    user_id: String,
    customer_number: i64,
    status: String,
    currency: String,
    channel: String,
    ship_country: Option<String>,
    ship_postal: Option<String>,
    coupon: Option<String>,
    subtotal: i64,
    discount: i64,
    tax: i64,
    total: i64,
    pricing: sqlx::types::Json<serde_json::Value>,
    failure: Option<String>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    lines: sqlx::types::Json<Vec<Line>>,
}

const SELECT: &str = "SELECT o.id, o.user_id, o.customer_number, o.status, o.currency, o.channel, \
    o.ship_country, o.ship_postal, o.coupon, o.subtotal, o.discount, o.tax, o.total, o.pricing, \
    o.failure, o.version, o.created_at, o.updated_at, \
    COALESCE((SELECT jsonb_agg(jsonb_build_object('sku', l.sku, 'qty', l.qty, 'unit_price', l.unit_price, \
    'discount', l.discount) ORDER BY l.line) FROM order_lines l WHERE l.order_id = o.id), '[]'::jsonb) AS lines \
    FROM orders o";

impl TryFrom<OrderRow> for Order {
    type Error = sqlx::Error;

    fn try_from(row: OrderRow) -> Result<Self, Self::Error> {
        let corrupt = |what: &str| sqlx::Error::Decode(format!("order {}: {what}", row.id).into());
        let status = Status::from_name(&row.status).ok_or_else(|| corrupt("unknown status"))?;
        let currency =
            Currency::from_code(&row.currency).ok_or_else(|| corrupt("unknown currency"))?;
        let applied = row
            .pricing
            .0
            .get("applied")
            .cloned()
            .map(serde_json::from_value::<Vec<Applied>>)
            .transpose()
            .map_err(|_| corrupt("unreadable pricing"))?
            .unwrap_or_default();
        let rules = row
            .pricing
            .0
            .get("rules")
            .and_then(|r| r.as_str())
            .unwrap_or("none")
            .to_string();
        Ok(Order {
            id: row.id,
            customer_id: customer_number(row.customer_number),
            user_id: row.user_id,
            status,
            currency,
            channel: row.channel,
            shipping: row.ship_country.map(|country| Shipping {
                country,
                postal_code: row.ship_postal,
            }),
            coupon: row.coupon,
            lines: row.lines.0,
            pricing: Pricing {
                subtotal: row.subtotal,
                discount: row.discount,
                tax: row.tax,
                total: row.total,
                applied,
                rules,
            },
            failure: row.failure,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// An order, from `pool`.
pub async fn get(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<Order>> {
    let query = format!("{SELECT} WHERE o.id = $1");
    sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(query))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .map(Order::try_from)
        .transpose()
}

/// An order, locked for the caller's transaction.
pub async fn lock(tx: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Order>> {
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let query = format!("{SELECT} WHERE o.id = $1");
    sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(query))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .map(Order::try_from)
        .transpose()
}

/// What a list of orders is filtered by.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this user's (none: everyone's, for admins).
    pub user_id: Option<String>,
    /// Only these statuses.
    pub status: Option<Status>,
    /// Placed at or after.
    pub from: Option<DateTime<Utc>>,
    /// Placed before.
    pub to: Option<DateTime<Utc>>,
    /// After this (created_at, id), newest first.
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

/// Up to `limit` orders matching `filter`, newest first.
pub async fn list(pool: &PgPool, filter: &Filter, limit: i64) -> sqlx::Result<Vec<Order>> {
    let query = format!(
        "{SELECT} WHERE ($1::text IS NULL OR o.user_id = $1) AND ($2::text IS NULL OR o.status = $2) \
         AND ($3::timestamptz IS NULL OR o.created_at >= $3) AND ($4::timestamptz IS NULL OR o.created_at < $4) \
         AND ($5::timestamptz IS NULL OR (o.created_at, o.id) < ($5, $6)) \
         ORDER BY o.created_at DESC, o.id DESC LIMIT $7"
    );
    sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(query))
        .bind(filter.user_id.as_deref())
        .bind(filter.status.map(Status::name))
        .bind(filter.from)
        .bind(filter.to)
        .bind(filter.after.map(|(at, _)| at))
        .bind(filter.after.map(|(_, id)| id).unwrap_or_default())
        .bind(limit)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(Order::try_from)
        .collect()
}

/// Moves a locked order from `from` to `to`, with a reason; the new
/// version. Anything off the state machine's edges is refused.
pub async fn transition(
    tx: &mut PgConnection,
    id: Uuid,
    from: Status,
    to: Status,
    reason: &str,
    failure: Option<&str>,
) -> Result<i64, TransitionError> {
    workflow::transition(from, to)?;
    let version: Option<i64> = sqlx::query_scalar(
        "UPDATE orders SET status = $3, failure = COALESCE($4, failure), version = version + 1, \
         updated_at = now(), lease_token = NULL, lease_until = NULL \
         WHERE id = $1 AND status = $2 RETURNING version",
    )
    .bind(id)
    .bind(from.name())
    .bind(to.name())
    .bind(failure)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(version) = version else {
        return Err(TransitionError::Moved);
    };
    sqlx::query(
        "INSERT INTO order_transitions (order_id, from_status, to_status, reason) VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(from.name())
    .bind(to.name())
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    Ok(version)
}

/// Why a transition did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    /// Not an edge of the state machine.
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// The order was no longer in the expected state.
    #[error("the order moved on meanwhile")]
    Moved,
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The states an order went through, oldest first.
pub async fn history(pool: &PgPool, id: Uuid) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT from_status, to_status FROM order_transitions WHERE order_id = $1 ORDER BY seq",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}
