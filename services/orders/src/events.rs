//! The domain events the service publishes, as `schemas/events/` defines
//! them, written to the outbox in the transaction of the change they
//! report and keyed so that one order's events stay in order.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use tributary_kit::outbox::Destination;
use uuid::Uuid;

use crate::OUTBOX;
use crate::money::Currency;
use crate::settings::Topics;

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Writes `event` to the outbox for `topic` under `key`.
async fn enqueue<E: Serialize>(
    connection: &mut PgConnection,
    topic: &str,
    key: &str,
    event: &E,
) -> sqlx::Result<()> {
    let payload = serde_json::to_vec(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    OUTBOX
        .enqueue(
            connection,
            Destination::KAFKA,
            Some(topic),
            Some(key),
            &payload,
        )
        .await
}

/// One line of `OrderCreated`.
#[derive(Debug, Serialize)]
pub struct Item {
    /// The product.
    pub sku: String,
    /// How many.
    pub qty: i64,
    /// The unit price in major units.
    pub unit_price: f64,
}

/// Where an order ships.
#[derive(Debug, Serialize)]
pub struct Shipping {
    /// ISO 3166 alpha-2.
    pub country: String,
    /// The postal code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
}

/// `OrderCreated` v1 (`schemas/events/order_created.v1.schema.json`).
#[derive(Debug, Serialize)]
pub struct OrderCreated {
    event_id: Uuid,
    event_type: &'static str,
    occurred_at: String,
    order_id: Uuid,
    customer_id: String,
    currency: &'static str,
    channel: String,
    items: Vec<Item>,
    total: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    shipping: Option<Shipping>,
}

impl OrderCreated {
    /// The event of an order placed at `at`; amounts are minor units.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        order_id: Uuid,
        customer_id: String,
        currency: Currency,
        channel: String,
        items: Vec<Item>,
        total: i64,
        shipping: Option<Shipping>,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            event_type: "OrderCreated",
            occurred_at: timestamp(at),
            order_id,
            customer_id,
            currency: currency.code(),
            channel,
            items,
            total: currency.major(total),
            shipping,
        }
    }

    /// Writes it to the outbox, keyed by the order.
    pub async fn enqueue(
        &self,
        connection: &mut PgConnection,
        topics: &Topics,
    ) -> sqlx::Result<()> {
        enqueue(connection, &topics.orders, &self.order_id.to_string(), self).await
    }
}

/// What happened to a payment (the schema's `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Charged.
    Captured,
    /// Refused by the provider.
    Declined,
    /// Charged, then refunded.
    Refunded,
}

/// `PaymentProcessed` v1 (`schemas/events/payment_processed.v1.schema.json`).
#[derive(Debug, Serialize)]
pub struct PaymentProcessed {
    event_id: Uuid,
    event_type: &'static str,
    occurred_at: String,
    payment_id: Uuid,
    order_id: Uuid,
    amount: f64,
    currency: &'static str,
    status: PaymentStatus,
    method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    decline_reason: Option<String>,
}

impl PaymentProcessed {
    /// A card payment's outcome; `amount` in minor units.
    pub fn new(
        payment_id: Uuid,
        order_id: Uuid,
        amount: i64,
        currency: Currency,
        status: PaymentStatus,
        decline_reason: Option<String>,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            event_type: "PaymentProcessed",
            occurred_at: timestamp(at),
            payment_id,
            order_id,
            amount: currency.major(amount),
            currency: currency.code(),
            status,
            method: "card",
            decline_reason: decline_reason.map(|r| r.chars().take(200).collect()),
        }
    }

    /// Writes it to the outbox, keyed by the order (so it follows the
    /// order's `OrderCreated`).
    pub async fn enqueue(
        &self,
        connection: &mut PgConnection,
        topics: &Topics,
    ) -> sqlx::Result<()> {
        enqueue(
            connection,
            &topics.payments,
            &self.order_id.to_string(),
            self,
        )
        .await
    }
}

/// `CacheInvalidated` v1: entries of `cache` older than the versions named
/// in `keys` (`ID@VERSION`) must be dropped.
#[derive(Debug, Serialize)]
pub struct CacheInvalidated {
    event_id: Uuid,
    event_type: &'static str,
    occurred_at: String,
    cache: &'static str,
    keys: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl CacheInvalidated {
    /// Entries of `cache` (`orders`, `products`) below the given versions.
    pub fn new(cache: &'static str, keys: Vec<String>, reason: &str) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            event_type: "CacheInvalidated",
            occurred_at: timestamp(Utc::now()),
            cache,
            keys,
            reason: Some(reason.chars().take(200).collect()),
        }
    }

    /// Writes it to the outbox, keyed by the cache.
    pub async fn enqueue(
        &self,
        connection: &mut PgConnection,
        topics: &Topics,
    ) -> sqlx::Result<()> {
        if self.keys.is_empty() {
            return Ok(());
        }
        enqueue(connection, &topics.cache, self.cache, self).await
    }
}

/// How an external call failed (the schema's `error.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallFailure {
    /// No answer in time.
    Timeout,
    /// No connection.
    Connection,
    /// An HTTP error status.
    Http,
    /// An answer that could not be read.
    Decode,
}

#[derive(Debug, Serialize)]
struct CallError {
    kind: CallFailure,
    message: String,
}

/// `ExternalAPICallFailed` v1.
#[derive(Debug, Serialize)]
pub struct ExternalApiCallFailed {
    event_id: Uuid,
    event_type: &'static str,
    occurred_at: String,
    service: &'static str,
    endpoint: String,
    attempt: u32,
    status_code: Option<u16>,
    latency_ms: f64,
    error: CallError,
}

impl ExternalApiCallFailed {
    /// A failed call of `service`'s `endpoint`.
    pub fn new(
        service: &'static str,
        endpoint: String,
        attempt: u32,
        status_code: Option<u16>,
        latency: std::time::Duration,
        kind: CallFailure,
        message: String,
    ) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            event_type: "ExternalAPICallFailed",
            occurred_at: timestamp(Utc::now()),
            service,
            endpoint: endpoint.chars().take(512).collect(),
            attempt: attempt.max(1),
            status_code,
            latency_ms: latency.as_secs_f64() * 1000.0,
            error: CallError {
                kind,
                message: message.chars().take(1000).collect(),
            },
        }
    }

    /// Writes it to the outbox on its own, keyed by the service.
    pub async fn enqueue(
        &self,
        connection: &mut PgConnection,
        topics: &Topics,
    ) -> sqlx::Result<()> {
        enqueue(connection, &topics.external_calls, self.service, self).await
    }
}
