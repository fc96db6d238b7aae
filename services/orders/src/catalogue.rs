//! Products, their prices and their stock (PostgreSQL). Stock is reserved
//! by one conditional decrement per line, never below zero (the table's
//! `CHECK` holds even against a bug here), and a basket's rows are always
//! locked in SKU order, so two baskets can wait on each other but never
//! deadlock.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::money::Currency;

/// A product as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Product {
    /// `SKU-00042`.
    pub sku: String,
    /// Its name.
    pub name: String,
    /// Units in stock.
    pub stock: i64,
    /// Its price in each currency it is sold in, in minor units.
    #[schema(value_type = BTreeMap<String, i64>)]
    pub prices: BTreeMap<Currency, i64>,
    /// Raised by every change.
    pub version: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ProductRow {
    sku: String,
    name: String,
    stock: i64,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    prices: sqlx::types::Json<BTreeMap<String, i64>>,
}

impl From<ProductRow> for Product {
    fn from(row: ProductRow) -> Self {
        Self {
            sku: row.sku,
            name: row.name,
            stock: row.stock,
            prices: row
                .prices
                .0
                .into_iter()
                .filter_map(|(code, amount)| Some((Currency::from_code(&code)?, amount)))
                .collect(),
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

const SELECT: &str = "SELECT p.sku, p.name, p.stock, p.version, p.created_at, p.updated_at, \
     COALESCE((SELECT jsonb_object_agg(currency, amount) FROM product_prices pp WHERE pp.sku = p.sku), '{}'::jsonb) AS prices \
     FROM products p";

/// A product, from `pool`.
pub async fn get(pool: &PgPool, sku: &str) -> sqlx::Result<Option<Product>> {
    let query = format!("{SELECT} WHERE p.sku = $1");
    Ok(sqlx::query_as::<_, ProductRow>(sqlx::AssertSqlSafe(query))
        .bind(sku)
        .fetch_optional(pool)
        .await?
        .map(Product::from))
}

/// Up to `limit` products after `after`, by SKU.
pub async fn list(pool: &PgPool, after: Option<&str>, limit: i64) -> sqlx::Result<Vec<Product>> {
    let query = format!("{SELECT} WHERE p.sku > $1 ORDER BY p.sku LIMIT $2");
    Ok(sqlx::query_as::<_, ProductRow>(sqlx::AssertSqlSafe(query))
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(Product::from)
        .collect())
}

/// Creates a product; `false` when the SKU exists.
pub async fn create(
    tx: &mut PgConnection,
    sku: &str,
    name: &str,
    stock: i64,
    prices: &BTreeMap<Currency, i64>,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO products (sku, name, stock) VALUES ($1, $2, $3) ON CONFLICT (sku) DO NOTHING",
    )
    .bind(sku)
    .bind(name)
    .bind(stock)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    set_prices(tx, sku, prices).await?;
    Ok(true)
}

/// Sets (adds or replaces) prices of a product.
pub async fn set_prices(
    tx: &mut PgConnection,
    sku: &str,
    prices: &BTreeMap<Currency, i64>,
) -> sqlx::Result<()> {
    for (currency, amount) in prices {
        sqlx::query(
            "INSERT INTO product_prices (sku, currency, amount) VALUES ($1, $2, $3) \
             ON CONFLICT (sku, currency) DO UPDATE SET amount = EXCLUDED.amount",
        )
        .bind(sku)
        .bind(currency.code())
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Adds `units` to the stock (negative to write off); the new stock and
/// version, or `None` for an unknown product or a stock that would go
/// below zero.
pub async fn restock(
    tx: &mut PgConnection,
    sku: &str,
    units: i64,
) -> sqlx::Result<Option<(i64, i64)>> {
    sqlx::query_as(
        "UPDATE products SET stock = stock + $2, version = version + 1, updated_at = now() \
         WHERE sku = $1 AND stock + $2 >= 0 RETURNING stock, version",
    )
    .bind(sku)
    .bind(units)
    .fetch_optional(&mut *tx)
    .await
}

/// Raises a product's version (its prices changed); the new version.
pub async fn touch(tx: &mut PgConnection, sku: &str) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "UPDATE products SET version = version + 1, updated_at = now() WHERE sku = $1 RETURNING version",
    )
    .bind(sku)
    .fetch_optional(&mut *tx)
    .await
}

/// Whether a product exists.
pub async fn exists(tx: &mut PgConnection, sku: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM products WHERE sku = $1)")
        .bind(sku)
        .fetch_one(&mut *tx)
        .await
}

/// The unit prices of `skus` in `currency` (missing ones are left out).
pub async fn prices(
    tx: &mut PgConnection,
    skus: &[String],
    currency: Currency,
) -> sqlx::Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT sku, amount FROM product_prices WHERE sku = ANY($1) AND currency = $2",
    )
    .bind(skus)
    .bind(currency.code())
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// One line of a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    /// The product.
    pub sku: String,
    /// How many.
    pub qty: i64,
}

/// Takes every line's units, locking rows in SKU order. On the first line
/// short of stock, returns its SKU and takes nothing (the caller rolls back
/// the transaction). On success, the products' new versions.
pub async fn reserve(
    tx: &mut PgConnection,
    lines: &[Take],
) -> sqlx::Result<Result<Vec<(String, i64)>, String>> {
    let mut sorted: Vec<&Take> = lines.iter().collect();
    sorted.sort_by(|a, b| a.sku.cmp(&b.sku));
    let mut versions = Vec::with_capacity(sorted.len());
    for line in sorted {
        let version: Option<i64> = sqlx::query_scalar(
            "UPDATE products SET stock = stock - $2, version = version + 1, updated_at = now() \
             WHERE sku = $1 AND stock >= $2 RETURNING version",
        )
        .bind(&line.sku)
        .bind(line.qty)
        .fetch_optional(&mut *tx)
        .await?;
        match version {
            Some(version) => versions.push((line.sku.clone(), version)),
            None => return Ok(Err(line.sku.clone())),
        }
    }
    Ok(Ok(versions))
}

/// Gives every line's units back, in SKU order; the products' new versions.
pub async fn release(tx: &mut PgConnection, lines: &[Take]) -> sqlx::Result<Vec<(String, i64)>> {
    let mut sorted: Vec<&Take> = lines.iter().collect();
    sorted.sort_by(|a, b| a.sku.cmp(&b.sku));
    let mut versions = Vec::with_capacity(sorted.len());
    for line in sorted {
        let version: i64 = sqlx::query_scalar(
            "UPDATE products SET stock = stock + $2, version = version + 1, updated_at = now() \
             WHERE sku = $1 RETURNING version",
        )
        .bind(&line.sku)
        .bind(line.qty)
        .fetch_one(&mut *tx)
        .await?;
        versions.push((line.sku.clone(), version));
    }
    Ok(versions)
}
