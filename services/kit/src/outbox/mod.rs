//! The transactional outbox: what must leave a service (events for Kafka,
//! mail for SMTP) is written to its `outbox` table in the same transaction
//! as the change it reports, so nothing is sent for a change that rolled
//! back and nothing is lost while Kafka or the mail server is down. One
//! [`Relay`] per destination delivers, across all instances one at a time
//! (an advisory lock), and deletes what was delivered.
//!
//! Delivery is at least once: an instance that dies between delivering and
//! deleting leaves the rows to be sent again. Events carry an `event_id` for
//! consumers to drop the copy. An ordered destination (Kafka) goes in `id`
//! order per topic and key: a failed row holds back the later rows of its
//! topic and key (only), so rows written under one lock (one order's
//! events) leave in the order they were written, and a topic that refuses
//! its rows does not stop the others.
//!
//! The table each service creates in its migrations:
//!
//! ```sql
//! CREATE TABLE outbox (
//!     id              bigserial PRIMARY KEY,
//!     destination     text NOT NULL,
//!     topic           text,
//!     key             text,
//!     payload         bytea NOT NULL,
//!     attempts        integer NOT NULL DEFAULT 0,
//!     last_error      text,
//!     next_attempt_at timestamptz NOT NULL DEFAULT now(),
//!     created_at      timestamptz NOT NULL DEFAULT now()
//! );
//! CREATE INDEX outbox_due ON outbox (destination, id);
//! CREATE INDEX outbox_keys ON outbox (destination, topic, key, id);
//! ```

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use sqlx::{PgConnection, PgPool};

#[cfg(feature = "kafka")]
pub mod kafka;

/// Where a row goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Destination {
    name: &'static str,
    ordered: bool,
}

impl Destination {
    /// Kafka topics, in `id` order.
    pub const KAFKA: Self = Self::ordered("kafka");

    /// A destination whose rows go in `id` order: a failure holds back
    /// every later row.
    pub const fn ordered(name: &'static str) -> Self {
        Self {
            name,
            ordered: true,
        }
    }

    /// A destination whose rows are independent (mail): a failed one waits
    /// on its own, and is dropped (and logged) after 24 h.
    pub const fn independent(name: &'static str) -> Self {
        Self {
            name,
            ordered: false,
        }
    }

    /// The name stored in the `destination` column.
    pub fn name(self) -> &'static str {
        self.name
    }
}

/// A row waiting for delivery.
#[derive(Debug, sqlx::FromRow)]
pub struct Pending {
    /// Its place in the outbox.
    pub id: i64,
    /// The Kafka topic.
    pub topic: Option<String>,
    /// The Kafka key.
    pub key: Option<String>,
    /// The bytes to deliver (sealed, for mail).
    pub payload: Vec<u8>,
    /// Failed deliveries so far.
    pub attempts: i32,
    /// When it was written.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A service's outbox: its table, the channel that announces new rows, and
/// the advisory locks of its relays, all named after the service.
#[derive(Debug, Clone, Copy)]
pub struct Outbox {
    service: &'static str,
}

impl Outbox {
    /// The outbox of `service` (`auth`, `orders`).
    pub const fn new(service: &'static str) -> Self {
        Self { service }
    }

    /// The notification channel a new row is announced on.
    pub fn channel(self) -> String {
        format!("tributary_{}_outbox", self.service)
    }

    /// Adds a row in the caller's transaction, announced when it commits.
    pub async fn enqueue(
        self,
        connection: &mut PgConnection,
        destination: Destination,
        topic: Option<&str>,
        key: Option<&str>,
        payload: &[u8],
    ) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO outbox (destination, topic, key, payload) VALUES ($1, $2, $3, $4)",
        )
        .bind(destination.name())
        .bind(topic)
        .bind(key)
        .bind(payload)
        .execute(&mut *connection)
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(self.channel())
            .bind(destination.name())
            .execute(&mut *connection)
            .await?;
        Ok(())
    }

    /// A relay of `destination`'s rows to `sink`.
    pub fn relay<S: Sink>(
        self,
        db: PgPool,
        destination: Destination,
        sink: S,
        metrics: OutboxMetrics,
    ) -> Relay<S> {
        Relay {
            outbox: self,
            db,
            destination,
            sink,
            batch: 64,
            metrics,
        }
    }
}

/// Delivers rows somewhere.
pub trait Sink: Send + Sync + 'static {
    /// Delivers `batch`, one result per row, in order.
    fn deliver(
        &self,
        batch: &[Pending],
    ) -> impl std::future::Future<Output = Vec<Result<(), String>>> + Send;
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    destination: &'static str,
}

/// The relays' metrics.
#[derive(Debug, Clone)]
pub struct OutboxMetrics {
    delivered: Family<DestinationLabels, Counter>,
    failed: Family<DestinationLabels, Counter>,
    oldest: Family<DestinationLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    delay: Family<DestinationLabels, Histogram>,
}

impl Default for OutboxMetrics {
    fn default() -> Self {
        Self {
            delivered: Family::default(),
            failed: Family::default(),
            oldest: Family::default(),
            delay: Family::new_with_constructor(|| {
                Histogram::new([
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ])
            }),
        }
    }
}

impl OutboxMetrics {
    /// Registers them under `outbox_delivered`, `outbox_failed`,
    /// `outbox_lag_seconds` (the age of the oldest row waiting) and
    /// `outbox_delivery_delay_seconds` (from commit to delivery).
    pub fn register(&self, metrics: &crate::observe::Metrics) {
        metrics.register(
            "outbox_delivered",
            "Outbox rows delivered, by destination",
            self.delivered.clone(),
        );
        metrics.register(
            "outbox_failed",
            "Outbox deliveries that failed and wait to be retried, by destination",
            self.failed.clone(),
        );
        metrics.register(
            "outbox_lag_seconds",
            "Age of the oldest outbox row waiting for delivery, by destination (0 when none waits)",
            self.oldest.clone(),
        );
        metrics.register(
            "outbox_delivery_delay_seconds",
            "Time from writing an outbox row to its delivery, by destination",
            self.delay.clone(),
        );
    }
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Rows delivered and deleted.
    pub delivered: usize,
    /// Rows whose delivery failed.
    pub failed: usize,
    /// Whether another instance holds the destination.
    pub busy: bool,
    /// Whether the batch was full (more may be waiting).
    pub full: bool,
}

/// Delivers one destination's rows.
#[derive(Debug)]
pub struct Relay<S> {
    outbox: Outbox,
    db: PgPool,
    destination: Destination,
    sink: S,
    batch: i64,
    metrics: OutboxMetrics,
}

/// The longest wait between rounds when nothing is announced.
const POLL: Duration = Duration::from_secs(2);
/// The wait after a round with failed rows (each waits for its own retry time).
const RETRY_POLL: Duration = Duration::from_millis(500);
/// How long a mail is retried before it is dropped (and logged); events are
/// never dropped.
const GIVE_UP_AFTER: chrono::TimeDelta = chrono::TimeDelta::hours(24);
/// The longest wait after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl<S: Sink> Relay<S> {
    /// Delivers up to `rows` rows per round (64 by default).
    pub fn batch(mut self, rows: i64) -> Self {
        self.batch = rows.max(1);
        self
    }

    fn ordered(&self) -> bool {
        self.destination.ordered
    }

    /// Delivers one batch of due rows, unless another instance is at it.
    pub async fn round(&self) -> sqlx::Result<Round> {
        let mut tx = self.db.begin().await?;
        // An instance frozen mid-round loses the lock when PostgreSQL drops
        // its idle transaction; its late commit then fails and deletes nothing.
        sqlx::query("SET LOCAL idle_in_transaction_session_timeout = '30s'")
            .execute(&mut *tx)
            .await?;
        let lock = format!(
            "tributary-{}-outbox:{}",
            self.outbox.service,
            self.destination.name()
        );
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext($1))")
            .bind(&lock)
            .fetch_one(&mut *tx)
            .await?;
        if !held {
            return Ok(Round {
                busy: true,
                ..Round::default()
            });
        }
        // Due rows; for an ordered destination, only those with no earlier
        // row of the same topic and key still waiting for its retry.
        let held_back = if self.ordered() {
            "AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.destination = o.destination \
             AND e.topic IS NOT DISTINCT FROM o.topic AND e.key IS NOT DISTINCT FROM o.key \
             AND e.id < o.id AND e.next_attempt_at > now())"
        } else {
            ""
        };
        let query = format!(
            "SELECT id, topic, key, payload, attempts, created_at FROM outbox o \
             WHERE destination = $1 AND next_attempt_at <= now() {held_back} ORDER BY id LIMIT $2"
        );
        let rows: Vec<Pending> = sqlx::query_as(sqlx::AssertSqlSafe(query))
            .bind(self.destination.name())
            .bind(self.batch)
            .fetch_all(&mut *tx)
            .await?;
        let labels = DestinationLabels {
            destination: self.destination.name(),
        };
        if rows.is_empty() {
            self.metrics.oldest.get_or_create(&labels).set(0.0);
            return Ok(Round::default());
        }
        let mut results: Vec<Result<(), Outcome>> = self
            .sink
            .deliver(&rows)
            .await
            .into_iter()
            .map(|r| r.map_err(Outcome::Failed))
            .collect();
        results.resize(rows.len(), Err(Outcome::Failed("not delivered".into())));
        if self.ordered() {
            hold_back_after_failures(&rows, &mut results);
        }
        let mut round = Round {
            full: rows.len() as i64 == self.batch,
            ..Round::default()
        };
        let mut delivered = Vec::new();
        let mut delivered_or_dropped = Vec::new();
        for (row, result) in rows.iter().zip(&results) {
            match result {
                // Left as it is: the query skips it while the failed row
                // of its key waits.
                Err(Outcome::HeldBack) => {}
                Ok(()) => {
                    delivered.push(row.id);
                    delivered_or_dropped.push(row.id);
                }
                Err(Outcome::Failed(error))
                    if !self.ordered() && chrono::Utc::now() - row.created_at > GIVE_UP_AFTER =>
                {
                    round.failed += 1;
                    tracing::error!(destination = self.destination.name(), id = row.id, attempts = row.attempts + 1, %error, "outbox delivery failed too often; dropped");
                    delivered_or_dropped.push(row.id);
                }
                Err(Outcome::Failed(error)) => {
                    round.failed += 1;
                    let wait = backoff(row.attempts.saturating_add(1) as u32);
                    tracing::warn!(destination = self.destination.name(), id = row.id, attempts = row.attempts + 1, %error, "outbox delivery failed; will retry");
                    sqlx::query(
                        "UPDATE outbox SET attempts = attempts + 1, last_error = $2, \
                         next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1",
                    )
                    .bind(row.id)
                    .bind(error.chars().take(1000).collect::<String>())
                    .bind(wait.as_secs_f64())
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&delivered_or_dropped)
            .execute(&mut *tx)
            .await?;
        let oldest: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM now() - created_at)::float8 FROM outbox \
             WHERE destination = $1 ORDER BY id LIMIT 1",
        )
        .bind(self.destination.name())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        round.delivered = delivered.len();
        let now = chrono::Utc::now();
        let delay = self.metrics.delay.get_or_create(&labels);
        for (row, result) in rows.iter().zip(&results) {
            if result.is_ok() {
                delay.observe((now - row.created_at).as_seconds_f64().max(0.0));
            }
        }
        drop(delay);
        self.metrics
            .oldest
            .get_or_create(&labels)
            .set(oldest.unwrap_or(0.0));
        self.metrics
            .delivered
            .get_or_create(&labels)
            .inc_by(round.delivered as u64);
        self.metrics
            .failed
            .get_or_create(&labels)
            .inc_by(round.failed as u64);
        Ok(round)
    }

    /// Runs rounds for as long as the task lives: at once while rows keep
    /// coming, on each announcement, every 2 s otherwise; each failed row
    /// waits for its own retry time (0.5 s doubled per failure, at most
    /// 30 s), and the relay backs off as long only when PostgreSQL fails.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        // The series exist from the start, so that alerts on them resolve.
        let labels = DestinationLabels {
            destination: self.destination.name(),
        };
        self.metrics.oldest.get_or_create(&labels).set(0.0);
        drop(self.metrics.delivered.get_or_create(&labels));
        drop(self.metrics.failed.get_or_create(&labels));
        drop(self.metrics.delay.get_or_create(&labels));
        tokio::spawn(async move {
            let mut listener = None;
            let mut failures = 0u32;
            loop {
                // A failed row waits for its own retry time (and holds back
                // its key's later rows); the others go on.
                let wait = match self.round().await {
                    Ok(round) => {
                        failures = 0;
                        if round.full && round.delivered > 0 {
                            continue;
                        }
                        if round.failed > 0 { RETRY_POLL } else { POLL }
                    }
                    Err(error) => {
                        failures += 1;
                        tracing::warn!(destination = self.destination.name(), %error, "outbox round failed");
                        listener = None;
                        backoff(failures)
                    }
                };
                if failures > 0 {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                if listener.is_none() {
                    listener = self.listen().await;
                }
                match listener.as_mut() {
                    Some(l) => {
                        if let Ok(Err(_)) = tokio::time::timeout(wait, l.recv()).await {
                            listener = None;
                        }
                    }
                    None => tokio::time::sleep(wait).await,
                }
            }
        })
    }

    async fn listen(&self) -> Option<sqlx::postgres::PgListener> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.db)
            .await
            .ok()?;
        listener.listen(&self.outbox.channel()).await.ok()?;
        Some(listener)
    }
}

/// Why a row was not delivered in a round.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Its delivery failed.
    Failed(String),
    /// An earlier row of its topic and key failed: it goes after that one,
    /// even if it was delivered now (a repeat consumers drop by event id).
    HeldBack,
}

/// Turns each sink result into an outcome; for an ordered destination,
/// every row after a failed row of the same topic and key is held back.
fn hold_back_after_failures(rows: &[Pending], results: &mut [Result<(), Outcome>]) {
    let mut failed: std::collections::HashSet<(Option<&str>, Option<&str>)> =
        std::collections::HashSet::new();
    for (row, result) in rows.iter().zip(results.iter_mut()) {
        let key = (row.topic.as_deref(), row.key.as_deref());
        if failed.contains(&key) {
            *result = Err(Outcome::HeldBack);
        } else if result.is_err() {
            failed.insert(key);
        }
    }
}

/// 0.5 s doubled per failure, at most 30 s.
fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    (Duration::from_millis(500) * 2u32.pow(exponent)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
