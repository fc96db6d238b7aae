//! `/api/v1/orders`: place, read, list, cancel and fulfil orders.

use std::collections::BTreeSet;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Acquire;
use tributary_kit::jwt::Bearer;
use tributary_kit::{Json, Path, Problem};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{json_bytes, read_through, require, require_admin, writable, write_failed};
use crate::app::{AppState, OutcomeLabels};
use crate::cache::Kind;
use crate::catalogue::{self, Take};
use crate::db;
use crate::error::OrdersError;
use crate::events::{CacheInvalidated, Item, OrderCreated, Shipping as EventShipping};
use crate::idempotency::{Lease, Recorded};
use crate::money::Currency;
use crate::orders::{self, Filter, Line, Order, Pricing, Shipping};
use crate::pricing::{LineInput, OrderInput};
use crate::saga::{self, SagaError};
use crate::workflow::Status;

/// Lines per order at most (the `OrderCreated` v1 schema's `maxItems`).
pub const MAX_LINES: usize = 5;
/// Units per line at most.
pub const MAX_QTY: i64 = 1000;

/// Where an order is placed from.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum Channel {
    /// The web shop (the default).
    #[default]
    Web,
    /// The mobile app.
    Mobile,
    /// A store.
    Store,
}

impl Channel {
    fn name(self) -> &'static str {
        match self {
            Self::Web => "web",
            Self::Mobile => "mobile",
            Self::Store => "store",
        }
    }
}

/// One line of `POST /api/v1/orders`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LineRequest {
    /// `SKU-00042`.
    sku: String,
    /// 1 to 1000.
    qty: i64,
}

/// `POST /api/v1/orders`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateOrder {
    /// 1 to 5 lines, each product once.
    lines: Vec<LineRequest>,
    /// The currency to pay in.
    currency: Currency,
    /// A coupon from the pricing rules.
    #[serde(default)]
    coupon: Option<String>,
    /// `web` (default), `mobile` or `store`.
    #[serde(default)]
    channel: Channel,
    /// Where it ships (the country picks the tax).
    #[serde(default)]
    shipping: Option<Shipping>,
}

fn sku_ok(sku: &str) -> bool {
    sku.len() == 9 && sku.starts_with("SKU-") && sku[4..].bytes().all(|b| b.is_ascii_digit())
}

fn check(body: &CreateOrder) -> Result<(), OrdersError> {
    if body.lines.is_empty() {
        return Err(OrdersError::invalid("/lines", "needs at least one line"));
    }
    if body.lines.len() > MAX_LINES {
        return Err(OrdersError::invalid(
            "/lines",
            format!(
                "has {} lines; at most {MAX_LINES} are allowed",
                body.lines.len()
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    for (index, line) in body.lines.iter().enumerate() {
        if !sku_ok(&line.sku) {
            return Err(OrdersError::invalid(
                format!("/lines/{index}/sku"),
                "must look like SKU-00042",
            ));
        }
        if !seen.insert(line.sku.as_str()) {
            return Err(OrdersError::invalid(
                format!("/lines/{index}/sku"),
                format!("{} is on an earlier line; add the quantities", line.sku),
            ));
        }
        if !(1..=MAX_QTY).contains(&line.qty) {
            return Err(OrdersError::invalid(
                format!("/lines/{index}/qty"),
                format!("must be 1 to {MAX_QTY}"),
            ));
        }
    }
    if let Some(coupon) = &body.coupon
        && (coupon.is_empty() || coupon.len() > 64)
    {
        return Err(OrdersError::invalid(
            "/coupon",
            "must be 1 to 64 characters",
        ));
    }
    if let Some(shipping) = &body.shipping {
        if shipping.country.len() != 2 || !shipping.country.bytes().all(|b| b.is_ascii_uppercase())
        {
            return Err(OrdersError::invalid(
                "/shipping/country",
                "must be an ISO 3166-1 alpha-2 code in capitals (DE)",
            ));
        }
        if shipping
            .postal_code
            .as_ref()
            .is_some_and(|p| p.is_empty() || p.len() > 16)
        {
            return Err(OrdersError::invalid(
                "/shipping/postal_code",
                "must be 1 to 16 characters",
            ));
        }
    }
    Ok(())
}

/// Places an order: prices it, reserves its stock (all lines or none) and
/// answers 201 with the order, `reserved`; the payment follows (poll the
/// order for `paid` or `payment_failed`).
#[utoipa::path(post, path = "/api/v1/orders", tag = "orders", request_body = CreateOrder,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Placed; stock reserved, payment under way", body = Order,
            headers(("Location" = String, description = "The order's URL"))),
        (status = 200, description = "A replay of the request first made with this Idempotency-Key (`Idempotent-Replayed: true`)", body = Order),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `write:orders`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not enough stock (nothing reserved), or the Idempotency-Key is in flight", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid, a product is unknown or not sold in the currency, an unknown coupon, or the Idempotency-Key was used for another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database or the pricing rules are unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn create(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    lease: Option<Extension<Lease>>,
    Json(body): Json<CreateOrder>,
) -> Result<Response, OrdersError> {
    require(&claims, "write:orders")?;
    check(&body)?;
    writable(&state)?;
    let outcome = place(&state, &claims.user_id, body, lease.map(|l| l.0)).await;
    let label = match &outcome {
        Ok(_) => "placed",
        Err(OrdersError::OutOfStock { .. }) => "out_of_stock",
        Err(OrdersError::Invalid { .. } | OrdersError::Pricing(_)) => "invalid",
        Err(_) => "failed",
    };
    state
        .metrics
        .orders
        .get_or_create(&OutcomeLabels { outcome: label })
        .inc();
    outcome
}

async fn place(
    state: &AppState,
    user_id: &str,
    body: CreateOrder,
    lease: Option<Lease>,
) -> Result<Response, OrdersError> {
    let failed = |e| write_failed(state, e);
    let mut connection = state.db.primary().acquire().await.map_err(failed)?;
    let mut tx = connection.begin().await.map_err(failed)?;
    let (customer, segment) = orders::customer(&mut tx, user_id).await.map_err(failed)?;
    let skus: Vec<String> = body.lines.iter().map(|l| l.sku.clone()).collect();
    let prices = catalogue::prices(&mut tx, &skus, body.currency)
        .await
        .map_err(failed)?;
    let mut lines = Vec::with_capacity(body.lines.len());
    for (index, line) in body.lines.iter().enumerate() {
        let Some(price) = prices.get(&line.sku) else {
            let known = catalogue::exists(&mut tx, &line.sku)
                .await
                .map_err(failed)?;
            let detail = if known {
                format!("{} is not sold in {}", line.sku, body.currency.code())
            } else {
                format!("no product {}", line.sku)
            };
            return Err(OrdersError::invalid(format!("/lines/{index}/sku"), detail));
        };
        lines.push(LineInput {
            sku: line.sku.clone(),
            qty: line.qty,
            unit_price: *price,
        });
    }
    let rules = state.pricing.current();
    let input = OrderInput {
        customer: customer.clone(),
        segment,
        currency: body.currency,
        channel: body.channel.name().to_string(),
        coupon: body.coupon.clone(),
        country: body.shipping.as_ref().map(|s| s.country.clone()),
        lines,
    };
    let priced = rules.price(&input)?;
    let takes: Vec<Take> = input
        .lines
        .iter()
        .map(|l| Take {
            sku: l.sku.clone(),
            qty: l.qty,
        })
        .collect();
    let products = match catalogue::reserve(&mut tx, &takes).await.map_err(failed)? {
        Ok(products) => products,
        Err(short) => {
            let index = body.lines.iter().position(|l| l.sku == short).unwrap_or(0);
            return Err(OrdersError::OutOfStock {
                pointer: format!("/lines/{index}/sku"),
                sku: short,
            });
        }
    };
    let now = Utc::now();
    let order = Order {
        id: Uuid::new_v4(),
        customer_id: customer.clone(),
        user_id: user_id.to_string(),
        status: Status::Reserved,
        currency: body.currency,
        channel: body.channel.name().to_string(),
        shipping: body.shipping,
        coupon: body.coupon,
        lines: input
            .lines
            .iter()
            .zip(&priced.line_discounts)
            .map(|(l, discount)| Line {
                sku: l.sku.clone(),
                qty: l.qty,
                unit_price: l.unit_price,
                discount: *discount,
            })
            .collect(),
        pricing: Pricing {
            subtotal: priced.subtotal,
            discount: priced.discount,
            tax: priced.tax,
            total: priced.total,
            applied: priced.applied,
            rules: priced.rules,
        },
        failure: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    orders::insert(&mut tx, &order, saga::deadline(&state.settings.saga))
        .await
        .map_err(failed)?;
    let event = OrderCreated::new(
        order.id,
        customer,
        order.currency,
        order.channel.clone(),
        order
            .lines
            .iter()
            .map(|l| Item {
                sku: l.sku.clone(),
                qty: l.qty,
                unit_price: order.currency.major(l.unit_price),
            })
            .collect(),
        order.pricing.total,
        order.shipping.as_ref().map(|s| EventShipping {
            country: s.country.clone(),
            postal_code: s.postal_code.clone(),
        }),
        now,
    );
    event
        .enqueue(&mut tx, &state.settings.topics)
        .await
        .map_err(failed)?;
    let product_keys = products
        .iter()
        .map(|(sku, v)| format!("{sku}@{v}"))
        .collect();
    CacheInvalidated::new("products", product_keys, "stock reserved")
        .enqueue(&mut tx, &state.settings.topics)
        .await
        .map_err(failed)?;
    let body = serde_json::to_vec(&order).map_err(|e| OrdersError::Unavailable(e.to_string()))?;
    let location = format!("/api/v1/orders/{}", order.id);
    if let Some(lease) = &lease {
        lease
            .record(&mut tx, StatusCode::CREATED, &body, Some(&location))
            .await?;
    }
    tx.commit().await.map_err(failed)?;
    match db::position(&mut connection).await {
        Ok(lsn) => {
            if let Err(error) = state.positions.wrote(user_id, lsn).await {
                tracing::warn!(%error, "remembering the write position failed; reads may lag it");
            }
        }
        Err(error) => tracing::warn!(%error, "reading the write position failed"),
    }
    drop(connection);
    for (sku, version) in products {
        let _ = state.cache.invalidate(Kind::Products, &sku, version).await;
    }
    state.saga.kick(order.id);
    let mut response = json_bytes(StatusCode::CREATED, body.into());
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response.extensions_mut().insert(Recorded);
    Ok(response)
}

/// The owner of an order's JSON body.
#[derive(Deserialize)]
struct Owner {
    user_id: String,
}

/// Reads an order: the caller's own, or any for an admin.
#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order (with `Warning` and `Age` when served from the cache while the database is down)", body = Order),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `read:orders`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order of the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Neither the database nor the cache can answer", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn get(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    Path(id): Path<Uuid>,
) -> Result<Response, OrdersError> {
    require(&claims, "read:orders")?;
    let read = read_through(
        &state,
        Kind::Orders,
        &id.to_string(),
        Some(&claims.user_id),
        |pool| async move {
            Ok(orders::get(&pool, id).await?.and_then(|order| {
                serde_json::to_vec(&order)
                    .ok()
                    .map(|body| (order.version, body))
            }))
        },
    )
    .await?;
    let owner: Owner = serde_json::from_slice(read.body())
        .map_err(|e| OrdersError::Unavailable(format!("a cached order: {e}")))?;
    if owner.user_id != claims.user_id && !claims.has_role("admin") {
        return Err(OrdersError::NotFound("order"));
    }
    Ok(read.into_response())
}

/// `GET /api/v1/orders` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only orders in this status.
    #[serde(default)]
    status: Option<String>,
    /// Placed at or after (RFC 3339).
    #[serde(default)]
    from: Option<String>,
    /// Placed before (RFC 3339).
    #[serde(default)]
    to: Option<String>,
    /// 1 to 100 (default 20).
    #[serde(default)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    cursor: Option<String>,
    /// Admins: every customer's orders (`true`), not only their own.
    #[serde(default)]
    all: Option<String>,
}

/// A page of orders.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct OrderPage {
    /// Newest first.
    orders: Vec<Order>,
    /// The cursor of the next page, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

fn cursor(order: &Order) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}|{}",
        order.created_at.timestamp_micros(),
        order.id
    ))
}

fn parse_cursor(text: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (micros, id) = text.split_once('|')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id.parse().ok()?,
    ))
}

fn time_parameter(
    parameter: &'static str,
    text: Option<&str>,
) -> Result<Option<DateTime<Utc>>, OrdersError> {
    text.map(|t| {
        DateTime::parse_from_rfc3339(t)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| OrdersError::InvalidQuery {
                parameter,
                detail: format!("is not an RFC 3339 time: {e}"),
            })
    })
    .transpose()
}

/// Lists the caller's orders, newest first, a page at a time.
#[utoipa::path(get, path = "/api/v1/orders", tag = "orders", security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 400, description = "A query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `read:orders`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No database answers", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn list(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    Query(query): Query<ListQuery>,
) -> Result<Json<OrderPage>, OrdersError> {
    require(&claims, "read:orders")?;
    let status = query
        .status
        .as_deref()
        .map(|s| {
            Status::from_name(s).ok_or_else(|| OrdersError::InvalidQuery {
                parameter: "status",
                detail: format!(
                    "must be one of {}",
                    Status::ALL.map(Status::name).join(", ")
                ),
            })
        })
        .transpose()?;
    let limit = match query.limit.as_deref() {
        None => 20,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or(OrdersError::InvalidQuery {
                parameter: "limit",
                detail: "must be a number from 1 to 100".into(),
            })?,
    };
    let after = query
        .cursor
        .as_deref()
        .map(|c| {
            parse_cursor(c).ok_or(OrdersError::InvalidQuery {
                parameter: "cursor",
                detail: "is not a cursor this service made".into(),
            })
        })
        .transpose()?;
    let everyone = match query.all.as_deref() {
        None | Some("false") => false,
        Some("true") => {
            require_admin(&claims)?;
            true
        }
        Some(_) => {
            return Err(OrdersError::InvalidQuery {
                parameter: "all",
                detail: "must be true or false".into(),
            });
        }
    };
    let filter = Filter {
        user_id: (!everyone).then(|| claims.user_id.clone()),
        status,
        from: time_parameter("from", query.from.as_deref())?,
        to: time_parameter("to", query.to.as_deref())?,
        after,
    };
    let last_write = state
        .positions
        .last(&claims.user_id)
        .await
        .unwrap_or(Some(u64::MAX));
    let (pool, from) = state.db.reader(last_write);
    let page = match orders::list(pool, &filter, limit + 1).await {
        Ok(page) => page,
        Err(error) if from != crate::db::ReadFrom::Primary => {
            tracing::warn!(%error, "a replica failed a list; asking the primary");
            state.db.replica_failed(from);
            orders::list(state.db.primary(), &filter, limit + 1).await?
        }
        Err(error) => return Err(error.into()),
    };
    let mut page = page;
    let next_cursor = if page.len() as i64 > limit {
        page.truncate(limit as usize);
        page.last().map(cursor)
    } else {
        None
    };
    Ok(Json(OrderPage {
        orders: page,
        next_cursor,
    }))
}

/// Cancels an order: a reserved one is cancelled (a started payment is
/// undone), a paid one is refunded; the stock comes back.
#[utoipa::path(post, path = "/api/v1/orders/{id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "Cancelled or refunded", body = Order),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `write:orders`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order of the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order is fulfilled or already ended, or its payment is under way (retry)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database or the payment provider is unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    Path(id): Path<Uuid>,
) -> Result<Response, OrdersError> {
    require(&claims, "write:orders")?;
    writable(&state)?;
    let order = orders::get(state.db.primary(), id)
        .await
        .map_err(|e| write_failed(&state, e))?
        .filter(|o| o.user_id == claims.user_id || claims.has_role("admin"))
        .ok_or(OrdersError::NotFound("order"))?;
    match state.saga.cancel(order.id).await {
        Ok(_) => {}
        Err(SagaError::Busy) => return Err(OrdersError::Busy),
        Err(SagaError::NotFound) => return Err(OrdersError::NotFound("order")),
        Err(SagaError::Transition(e)) => return Err(e.into()),
        Err(SagaError::Provider(e)) => {
            return Err(OrdersError::Problem(Problem::unavailable(
                format!("the payment provider could not undo the payment ({e}); retry"),
                5,
            )));
        }
        Err(SagaError::Database(e)) => return Err(write_failed(&state, e)),
    }
    answer_current(&state, &claims.user_id, id).await
}

/// The order as it is now, from the primary, remembering the caller's
/// write position.
async fn answer_current(
    state: &AppState,
    user_id: &str,
    id: Uuid,
) -> Result<Response, OrdersError> {
    let mut connection = state
        .db
        .primary()
        .acquire()
        .await
        .map_err(|e| write_failed(state, e))?;
    if let Ok(lsn) = db::position(&mut connection).await {
        let _ = state.positions.wrote(user_id, lsn).await;
    }
    drop(connection);
    let order = orders::get(state.db.primary(), id)
        .await?
        .ok_or(OrdersError::NotFound("order"))?;
    Ok(Json(order).into_response())
}

/// Marks a paid order shipped (admins).
#[utoipa::path(post, path = "/api/v1/orders/{id}/fulfil", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "Fulfilled", body = Order),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order is not paid", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn fulfil(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    Path(id): Path<Uuid>,
) -> Result<Response, OrdersError> {
    require_admin(&claims)?;
    writable(&state)?;
    let mut tx = state
        .db
        .primary()
        .begin()
        .await
        .map_err(|e| write_failed(&state, e))?;
    let order = orders::lock(&mut tx, id)
        .await?
        .ok_or(OrdersError::NotFound("order"))?;
    let version = match orders::transition(
        &mut tx,
        id,
        order.status,
        Status::Fulfilled,
        "fulfilled",
        None,
    )
    .await
    {
        Ok(version) => version,
        Err(orders::TransitionError::Illegal(e)) => return Err(e.into()),
        Err(orders::TransitionError::Moved) => return Err(OrdersError::Busy),
        Err(orders::TransitionError::Database(e)) => return Err(e.into()),
    };
    CacheInvalidated::new("orders", vec![format!("{id}@{version}")], "order fulfilled")
        .enqueue(&mut tx, &state.settings.topics)
        .await?;
    tx.commit().await?;
    let _ = state
        .cache
        .invalidate(Kind::Orders, &id.to_string(), version)
        .await;
    answer_current(&state, &claims.user_id, id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let at = DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap();
        let id = Uuid::new_v4();
        let text = URL_SAFE_NO_PAD.encode(format!("{}|{id}", at.timestamp_micros()));
        assert_eq!(parse_cursor(&text), Some((at, id)));
        assert_eq!(parse_cursor("garbage!"), None);
    }

    #[test]
    fn skus_have_the_catalogue_shape() {
        assert!(sku_ok("SKU-00042"));
        assert!(!sku_ok("SKU-0042"));
        assert!(!sku_ok("sku-00042"));
        assert!(!sku_ok("SKU-0004x"));
    }
}
