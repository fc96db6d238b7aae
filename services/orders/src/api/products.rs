//! `/api/v1/products` (the catalogue, readable by anyone, changed by
//! admins) and `/api/v1/admin` (customer segments, cache purge).

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tributary_kit::jwt::Bearer;
use tributary_kit::{Json, Path, Problem};
use utoipa::{IntoParams, ToSchema};

use super::{read_through, require_admin, writable, write_failed};
use crate::app::AppState;
use crate::cache::Kind;
use crate::catalogue::{self, Product};
use crate::error::OrdersError;
use crate::events::CacheInvalidated;
use crate::money::Currency;
use crate::orders;

/// `POST /api/v1/products`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateProduct {
    /// `SKU-` and five digits.
    sku: String,
    /// 1 to 200 characters.
    name: String,
    /// Units in stock (0 or more).
    #[serde(default)]
    stock: i64,
    /// Prices in minor units by currency (`{"USD": 1999}`).
    #[schema(value_type = BTreeMap<String, i64>)]
    prices: BTreeMap<Currency, i64>,
}

fn check_prices(prices: &BTreeMap<Currency, i64>) -> Result<(), OrdersError> {
    if prices.is_empty() {
        return Err(OrdersError::invalid(
            "/prices",
            "needs a price in one currency at least",
        ));
    }
    for (currency, amount) in prices {
        if !(0..=100_000_000_000).contains(amount) {
            return Err(OrdersError::invalid(
                format!("/prices/{}", currency.code()),
                "must be 0 to 100,000,000,000 minor units",
            ));
        }
    }
    Ok(())
}

/// After a product write: invalidate its cache entry here and, through the
/// event written in the same transaction, everywhere.
async fn invalidated(state: &AppState, sku: &str, version: i64) {
    let _ = state.cache.invalidate(Kind::Products, sku, version).await;
}

/// Adds a product (admins).
#[utoipa::path(post, path = "/api/v1/products", tag = "catalogue", request_body = CreateProduct,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = Product),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The SKU exists", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn create(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    Json(body): Json<CreateProduct>,
) -> Result<Response, OrdersError> {
    require_admin(&claims)?;
    if !(body.sku.len() == 9
        && body.sku.starts_with("SKU-")
        && body.sku[4..].bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(OrdersError::invalid("/sku", "must look like SKU-00042"));
    }
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(OrdersError::invalid("/name", "must be 1 to 200 characters"));
    }
    if !(0..=1_000_000_000).contains(&body.stock) {
        return Err(OrdersError::invalid("/stock", "must be 0 to 1,000,000,000"));
    }
    check_prices(&body.prices)?;
    writable(&state)?;
    let mut tx = state
        .db
        .primary()
        .begin()
        .await
        .map_err(|e| write_failed(&state, e))?;
    if !catalogue::create(&mut tx, &body.sku, name, body.stock, &body.prices).await? {
        return Err(OrdersError::ProductExists(body.sku));
    }
    CacheInvalidated::new(
        "products",
        vec![format!("{}@1", body.sku)],
        "product created",
    )
    .enqueue(&mut tx, &state.settings.topics)
    .await?;
    tx.commit().await?;
    invalidated(&state, &body.sku, 1).await;
    let product = catalogue::get(state.db.primary(), &body.sku)
        .await?
        .ok_or(OrdersError::NotFound("product"))?;
    Ok((StatusCode::CREATED, Json(product)).into_response())
}

/// `GET /api/v1/products` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// The last SKU of the previous page.
    #[serde(default)]
    after: Option<String>,
    /// 1 to 100 (default 50).
    #[serde(default)]
    limit: Option<String>,
}

/// A page of products.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ProductPage {
    /// By SKU.
    products: Vec<Product>,
}

/// Lists the catalogue by SKU.
#[utoipa::path(get, path = "/api/v1/products", tag = "catalogue", params(ListQuery),
    responses(
        (status = 200, description = "A page of products", body = ProductPage),
        (status = 400, description = "A query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No database answers", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<ProductPage>, OrdersError> {
    let limit = match query.limit.as_deref() {
        None => 50,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or(OrdersError::InvalidQuery {
                parameter: "limit",
                detail: "must be a number from 1 to 100".into(),
            })?,
    };
    let (pool, _) = state.db.reader(None);
    let products = catalogue::list(pool, query.after.as_deref(), limit).await?;
    Ok(Json(ProductPage { products }))
}

/// Reads a product with its prices and stock.
#[utoipa::path(get, path = "/api/v1/products/{sku}", tag = "catalogue",
    params(("sku" = String, Path, description = "The product's SKU")),
    responses(
        (status = 200, description = "The product (with `Warning` and `Age` when served from the cache while the database is down)", body = Product),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Neither the database nor the cache can answer", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn get(
    State(state): State<AppState>,
    Path(sku): Path<String>,
) -> Result<Response, OrdersError> {
    let key = sku.clone();
    let read = read_through(&state, Kind::Products, &key, None, |pool| {
        let sku = sku.clone();
        async move {
            Ok(catalogue::get(&pool, &sku).await?.and_then(|product| {
                serde_json::to_vec(&product)
                    .ok()
                    .map(|body| (product.version, body))
            }))
        }
    })
    .await?;
    Ok(read.into_response())
}

/// `POST /api/v1/products/{sku}/restock`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Restock {
    /// Units to add (negative to write off; stock never goes below zero).
    units: i64,
}

/// Adds to (or writes off) a product's stock (admins).
#[utoipa::path(post, path = "/api/v1/products/{sku}/restock", tag = "catalogue", request_body = Restock,
    security(("bearer" = [])),
    params(("sku" = String, Path, description = "The product's SKU")),
    responses(
        (status = 200, description = "The product after the change", body = Product),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The write-off exceeds the stock", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn restock(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    Path(sku): Path<String>,
    Json(body): Json<Restock>,
) -> Result<Response, OrdersError> {
    require_admin(&claims)?;
    if body.units == 0 || body.units.abs() > 1_000_000_000 {
        return Err(OrdersError::invalid(
            "/units",
            "must be non-zero, at most 1,000,000,000 either way",
        ));
    }
    writable(&state)?;
    let mut tx = state
        .db
        .primary()
        .begin()
        .await
        .map_err(|e| write_failed(&state, e))?;
    let Some((_, version)) = catalogue::restock(&mut tx, &sku, body.units).await? else {
        if catalogue::exists(&mut tx, &sku).await? {
            return Err(OrdersError::OutOfStock {
                pointer: "/units".into(),
                sku,
            });
        }
        return Err(OrdersError::NotFound("product"));
    };
    CacheInvalidated::new("products", vec![format!("{sku}@{version}")], "restocked")
        .enqueue(&mut tx, &state.settings.topics)
        .await?;
    tx.commit().await?;
    invalidated(&state, &sku, version).await;
    let product = catalogue::get(state.db.primary(), &sku)
        .await?
        .ok_or(OrdersError::NotFound("product"))?;
    Ok(Json(product).into_response())
}

/// Sets prices of a product (admins); other currencies keep theirs.
#[utoipa::path(put, path = "/api/v1/products/{sku}/prices", tag = "catalogue",
    request_body(content = BTreeMap<String, i64>, description = "Prices in minor units by currency"),
    security(("bearer" = [])),
    params(("sku" = String, Path, description = "The product's SKU")),
    responses(
        (status = 200, description = "The product after the change", body = Product),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn set_prices(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    Path(sku): Path<String>,
    Json(prices): Json<BTreeMap<Currency, i64>>,
) -> Result<Response, OrdersError> {
    require_admin(&claims)?;
    check_prices(&prices)?;
    writable(&state)?;
    let mut tx = state
        .db
        .primary()
        .begin()
        .await
        .map_err(|e| write_failed(&state, e))?;
    let Some(version) = catalogue::touch(&mut tx, &sku).await? else {
        return Err(OrdersError::NotFound("product"));
    };
    catalogue::set_prices(&mut tx, &sku, &prices).await?;
    CacheInvalidated::new(
        "products",
        vec![format!("{sku}@{version}")],
        "prices changed",
    )
    .enqueue(&mut tx, &state.settings.topics)
    .await?;
    tx.commit().await?;
    invalidated(&state, &sku, version).await;
    let product = catalogue::get(state.db.primary(), &sku)
        .await?
        .ok_or(OrdersError::NotFound("product"))?;
    Ok(Json(product).into_response())
}

/// `PUT /api/v1/admin/customers/{user_id}/segment`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Segment {
    /// What pricing rules see as `customer.segment` (1 to 32 of a-z, 0-9, _ and -).
    segment: String,
}

/// Sets a customer's pricing segment (admins).
#[utoipa::path(put, path = "/api/v1/admin/customers/{user_id}/segment", tag = "admin", request_body = Segment,
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The auth service's user id")),
    responses(
        (status = 204, description = "Set"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn set_segment(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    Path(user_id): Path<String>,
    Json(body): Json<Segment>,
) -> Result<StatusCode, OrdersError> {
    require_admin(&claims)?;
    let valid = !body.segment.is_empty()
        && body.segment.len() <= 32
        && body
            .segment
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !valid {
        return Err(OrdersError::invalid(
            "/segment",
            "must be 1 to 32 of a-z, 0-9, _ and -",
        ));
    }
    if user_id.is_empty() || user_id.len() > 128 {
        return Err(OrdersError::InvalidQuery {
            parameter: "user_id",
            detail: "must be 1 to 128 characters".into(),
        });
    }
    writable(&state)?;
    let mut tx = state
        .db
        .primary()
        .begin()
        .await
        .map_err(|e| write_failed(&state, e))?;
    orders::set_segment(&mut tx, &user_id, &body.segment).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/admin/cache/purge`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Purge {
    /// `products` or `orders`; both when absent.
    #[serde(default)]
    cache: Option<String>,
}

/// What a purge removed.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Purged {
    /// Redis entries removed.
    removed: u64,
}

/// Empties the cache (admins): Redis now, every instance's memory through
/// a `CacheInvalidated` event.
#[utoipa::path(post, path = "/api/v1/admin/cache/purge", tag = "admin", request_body = Purge,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Purged", body = Purged),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis or the database is unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn purge(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    Json(body): Json<Purge>,
) -> Result<Json<Purged>, OrdersError> {
    require_admin(&claims)?;
    let kinds: Vec<Kind> = match body.cache.as_deref() {
        None => vec![Kind::Products, Kind::Orders],
        Some(name) => vec![
            Kind::from_name(name)
                .ok_or_else(|| OrdersError::invalid("/cache", "must be `products` or `orders`"))?,
        ],
    };
    let mut removed = 0;
    for kind in &kinds {
        removed += state.cache.purge(Some(*kind), false).await?;
    }
    if state.db.primary_up() {
        let mut tx = state.db.primary().begin().await?;
        for kind in kinds {
            CacheInvalidated::new(kind.name(), vec!["*".into()], "purged by an admin")
                .enqueue(&mut tx, &state.settings.topics)
                .await?;
        }
        tx.commit().await?;
    }
    Ok(Json(Purged { removed }))
}
