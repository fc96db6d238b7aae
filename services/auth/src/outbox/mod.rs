//! The transactional outbox: what must leave the service (events for Kafka,
//! mail for SMTP) is written to the `outbox` table in the same transaction
//! as the change it reports, so nothing is sent for a change that rolled
//! back and nothing is lost while Kafka or the mail server is down. One
//! [`Relay`] per destination delivers, across all instances one at a time
//! (an advisory lock), and deletes what was delivered.
//!
//! Delivery is at least once: an instance that dies between delivering and
//! deleting leaves the rows to be sent again. Events carry an `event_id` for
//! consumers to drop the copy.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sqlx::{PgConnection, PgPool};

pub mod kafka;
pub mod smtp;

/// The notification channel a new row is announced on.
pub const CHANNEL: &str = "tributary_auth_outbox";

/// Where a row goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A Kafka topic, in `id` order.
    Kafka,
    /// An SMTP server, each mail on its own.
    Smtp,
}

impl Destination {
    /// The name stored in the `destination` column.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kafka => "kafka",
            Self::Smtp => "smtp",
        }
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

/// Adds a row in the caller's transaction, announced when it commits.
pub async fn enqueue(
    connection: &mut PgConnection,
    destination: Destination,
    topic: Option<&str>,
    key: Option<&str>,
    payload: &[u8],
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO outbox (destination, topic, key, payload) VALUES ($1, $2, $3, $4)")
        .bind(destination.name())
        .bind(topic)
        .bind(key)
        .bind(payload)
        .execute(&mut *connection)
        .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(destination.name())
        .execute(&mut *connection)
        .await?;
    Ok(())
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
#[derive(Debug, Clone, Default)]
pub struct OutboxMetrics {
    delivered: Family<DestinationLabels, Counter>,
    failed: Family<DestinationLabels, Counter>,
}

impl OutboxMetrics {
    /// Registers them under `outbox_delivered` and `outbox_failed`.
    pub fn register(&self, metrics: &tributary_kit::observe::Metrics) {
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
    db: PgPool,
    destination: Destination,
    sink: S,
    batch: i64,
    metrics: OutboxMetrics,
}

/// The longest wait between rounds when nothing is announced.
const POLL: Duration = Duration::from_secs(2);
/// How long a mail is retried before it is dropped (and logged); events are
/// never dropped.
const GIVE_UP_AFTER: chrono::TimeDelta = chrono::TimeDelta::hours(24);
/// The longest wait after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl<S: Sink> Relay<S> {
    /// A relay of `destination`'s rows to `sink`.
    pub fn new(db: PgPool, destination: Destination, sink: S, metrics: OutboxMetrics) -> Self {
        Self {
            db,
            destination,
            sink,
            batch: 64,
            metrics,
        }
    }

    /// Kafka rows go in `id` order: a failure holds back every later row.
    /// Mail rows are independent: a failed one waits on its own.
    fn ordered(&self) -> bool {
        self.destination == Destination::Kafka
    }

    /// Delivers one batch of due rows, unless another instance is at it.
    pub async fn round(&self) -> sqlx::Result<Round> {
        let mut tx = self.db.begin().await?;
        // An instance frozen mid-round loses the lock when PostgreSQL drops
        // its idle transaction; its late commit then fails and deletes nothing.
        sqlx::query("SET LOCAL idle_in_transaction_session_timeout = '30s'")
            .execute(&mut *tx)
            .await?;
        let lock = format!("tributary-auth-outbox:{}", self.destination.name());
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
        let due = if self.ordered() {
            ""
        } else {
            "AND next_attempt_at <= now()"
        };
        let query = format!(
            "SELECT id, topic, key, payload, attempts, created_at FROM outbox \
             WHERE destination = $1 {due} ORDER BY id LIMIT $2"
        );
        let rows: Vec<Pending> = sqlx::query_as(sqlx::AssertSqlSafe(query))
            .bind(self.destination.name())
            .bind(self.batch)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            return Ok(Round::default());
        }
        let mut results = self.sink.deliver(&rows).await;
        results.resize(rows.len(), Err("not delivered".into()));
        if self.ordered()
            && let Some(first) = results.iter().position(Result::is_err)
        {
            // Later rows go again after the failed one, delivered or not.
            results.truncate(first + 1);
        }
        let mut round = Round {
            full: rows.len() as i64 == self.batch,
            ..Round::default()
        };
        let mut delivered = Vec::new();
        let mut delivered_or_dropped = Vec::new();
        for (row, result) in rows.iter().zip(&results) {
            match result {
                Ok(()) => {
                    delivered.push(row.id);
                    delivered_or_dropped.push(row.id);
                }
                Err(error)
                    if !self.ordered() && chrono::Utc::now() - row.created_at > GIVE_UP_AFTER =>
                {
                    round.failed += 1;
                    tracing::error!(destination = self.destination.name(), id = row.id, attempts = row.attempts + 1, %error, "outbox delivery failed too often; dropped");
                    delivered_or_dropped.push(row.id);
                }
                Err(error) => {
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
        tx.commit().await?;
        round.delivered = delivered.len();
        let labels = DestinationLabels {
            destination: self.destination.name(),
        };
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
    /// coming, on each announcement, every 2 s otherwise, and backing off
    /// (up to 30 s) while deliveries fail.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut listener = None;
            let mut failures = 0u32;
            loop {
                let wait = match self.round().await {
                    Ok(round) if round.failed > 0 => {
                        failures += 1;
                        backoff(failures)
                    }
                    Ok(round) => {
                        failures = 0;
                        if round.full {
                            continue;
                        }
                        POLL
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
        listener.listen(CHANNEL).await.ok()?;
        Some(listener)
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
