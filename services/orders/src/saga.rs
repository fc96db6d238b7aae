//! The order saga: reserve stock (done when the order is placed) → charge
//! the payment provider → confirm. A failure compensates what was done:
//! a declined card releases the stock; a payment that cannot be completed
//! before the order's deadline is cancelled at the provider (refunded if it
//! went through after all) and releases the stock; a cancelled order
//! releases its stock and refunds its charge.
//!
//! Each step is taken under a lease on the order row (a token and an
//! expiry), so that one worker at a time works on an order; a worker that
//! dies or freezes loses the lease and another instance's worker resumes
//! the order from what the row says. Every provider call carries a key
//! derived from the order, so a resumed step repeats the same request and
//! the provider answers it once. State changes happen in transactions that
//! check the order is still where the step found it, with the events they
//! cause written to the outbox in the same transaction.

use std::sync::Arc;

use chrono::Utc;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Semaphore, mpsc};
use uuid::Uuid;

use crate::cache::{Cache, Kind};
use crate::catalogue;
use crate::events::{CacheInvalidated, PaymentProcessed, PaymentStatus};
use crate::orders::{self, Order, TransitionError};
use crate::payments::{PaymentError, Provider};
use crate::settings::{SagaSettings, Topics};
use crate::workflow::Status;

/// What a step of the saga came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The order is where it should be now (paid, failed, cancelled…).
    Settled(Status),
    /// The provider could not be reached; tried again later.
    Later(String),
    /// Another worker holds the order, or it is not due.
    NotMine,
}

/// Why compensation or a cancel could not finish.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// PostgreSQL failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The provider could not be reached.
    #[error("the payment provider: {0}")]
    Provider(PaymentError),
    /// The order is not in a state that allows it.
    #[error(transparent)]
    Transition(#[from] crate::workflow::IllegalTransition),
    /// Another worker holds the order.
    #[error("the order is held by another worker")]
    Busy,
    /// No such order.
    #[error("no such order")]
    NotFound,
}

/// Runs sagas.
#[derive(Debug, Clone)]
pub struct Saga {
    db: PgPool,
    provider: Provider,
    cache: Cache,
    topics: Topics,
    settings: SagaSettings,
    kick: mpsc::Sender<Uuid>,
}

/// A lease on one order.
struct Lease {
    token: Uuid,
}

impl Saga {
    /// A saga runner and the receiving end of its kicks (for [`Saga::spawn`]).
    pub fn new(
        db: PgPool,
        provider: Provider,
        cache: Cache,
        topics: Topics,
        settings: SagaSettings,
    ) -> (Self, mpsc::Receiver<Uuid>) {
        let (kick, kicked) = mpsc::channel(10_000);
        (
            Self {
                db,
                provider,
                cache,
                topics,
                settings,
                kick,
            },
            kicked,
        )
    }

    /// Asks the worker to advance `order` now (the poll finds it otherwise).
    pub fn kick(&self, order: Uuid) {
        let _ = self.kick.try_send(order);
    }

    /// Runs the worker: kicked orders at once, and every `poll_every` the
    /// orders left half-way (a crash, a lost lease, a retry that is due).
    pub fn spawn(self, mut kicked: mpsc::Receiver<Uuid>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
            let mut poll = tokio::time::interval(self.settings.poll_every);
            // Steps run in this set: stopping the worker stops them too.
            let mut running = tokio::task::JoinSet::new();
            loop {
                let ids = tokio::select! {
                    Some(id) = kicked.recv() => vec![id],
                    _ = poll.tick() => match self.due().await {
                        Ok(ids) => ids,
                        Err(error) => {
                            tracing::warn!(%error, "looking for orders to advance failed");
                            Vec::new()
                        }
                    },
                    Some(_) = running.join_next(), if !running.is_empty() => Vec::new(),
                };
                for id in ids {
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    let saga = self.clone();
                    running.spawn(async move {
                        match saga.advance(id).await {
                            Ok(outcome) => tracing::debug!(order = %id, ?outcome, "saga step"),
                            Err(error) => tracing::warn!(order = %id, %error, "saga step failed"),
                        }
                        drop(slot);
                    });
                }
            }
        })
    }

    async fn due(&self) -> sqlx::Result<Vec<Uuid>> {
        sqlx::query_scalar(
            "SELECT id FROM orders WHERE status = 'reserved' AND next_attempt_at <= now() \
             AND (lease_until IS NULL OR lease_until < now()) ORDER BY next_attempt_at LIMIT 200",
        )
        .fetch_all(&self.db)
        .await
    }

    /// Takes the lease on `id` if it is in `status` and free (and, for the
    /// worker, due).
    async fn claim(&self, id: Uuid, status: Status, due_only: bool) -> sqlx::Result<Option<Lease>> {
        let token = Uuid::new_v4();
        let claimed: Option<Uuid> = sqlx::query_scalar(
            "UPDATE orders SET lease_token = $3, lease_until = now() + make_interval(secs => $4) \
             WHERE id = $1 AND status = $2 AND (lease_until IS NULL OR lease_until < now()) \
             AND (NOT $5 OR next_attempt_at <= now()) RETURNING id",
        )
        .bind(id)
        .bind(status.name())
        .bind(token)
        .bind(self.settings.lease.as_secs_f64())
        .bind(due_only)
        .fetch_optional(&self.db)
        .await?;
        Ok(claimed.map(|_| Lease { token }))
    }

    /// Gives the lease back and schedules the next attempt.
    async fn later(&self, id: Uuid, lease: &Lease, why: &str) -> sqlx::Result<Outcome> {
        sqlx::query(
            "UPDATE orders SET lease_token = NULL, lease_until = NULL, attempts = attempts + 1, \
             next_attempt_at = now() + make_interval(secs => LEAST(30, 0.5 * power(2, LEAST(attempts, 6)))) \
             WHERE id = $1 AND lease_token = $2",
        )
        .bind(id)
        .bind(lease.token)
        .execute(&self.db)
        .await?;
        Ok(Outcome::Later(why.to_string()))
    }

    async fn release_lease(&self, id: Uuid, lease: &Lease) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE orders SET lease_token = NULL, lease_until = NULL WHERE id = $1 AND lease_token = $2",
        )
        .bind(id)
        .bind(lease.token)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Takes a reserved order as far as it can go now.
    pub async fn advance(&self, id: Uuid) -> Result<Outcome, SagaError> {
        let Some(lease) = self.claim(id, Status::Reserved, true).await? else {
            return Ok(Outcome::NotMine);
        };
        let Some(order) = orders::get(&self.db, id).await? else {
            return Err(SagaError::NotFound);
        };
        let (intent, give_up_at): (Option<String>, chrono::DateTime<Utc>) =
            sqlx::query_as("SELECT payment_intent, give_up_at FROM orders WHERE id = $1")
                .bind(id)
                .fetch_one(&self.db)
                .await?;
        if Utc::now() >= give_up_at {
            return self
                .give_up(
                    &order,
                    &lease,
                    intent.as_deref(),
                    "the payment was not completed in time",
                )
                .await;
        }
        let intent = match intent {
            Some(intent) => intent,
            None => match self
                .provider
                .create_intent(id, order.pricing.total, order.currency)
                .await
            {
                Ok(intent) => {
                    let kept = sqlx::query(
                        "UPDATE orders SET payment_intent = $3 WHERE id = $1 AND lease_token = $2",
                    )
                    .bind(id)
                    .bind(lease.token)
                    .bind(&intent.id)
                    .execute(&self.db)
                    .await?
                    .rows_affected();
                    if kept == 0 {
                        return Ok(Outcome::NotMine);
                    }
                    intent.id
                }
                Err(PaymentError::Unavailable(why)) => {
                    return Ok(self.later(id, &lease, &why).await?);
                }
                Err(error) => {
                    let why = format!("the payment could not be started: {error}");
                    return self.fail(&order, &lease, &why).await;
                }
            },
        };
        match self.provider.confirm(id, &intent).await {
            Ok(confirmed) if confirmed.status == "succeeded" => self.paid(&order, &lease).await,
            Ok(other) => {
                let why = format!("the payment ended {}", other.status);
                self.fail(&order, &lease, &why).await
            }
            Err(PaymentError::Declined(reason)) => {
                let why = format!("the card was declined: {reason}");
                self.fail(&order, &lease, &why).await
            }
            Err(PaymentError::Unavailable(why)) => Ok(self.later(id, &lease, &why).await?),
            Err(error @ PaymentError::Refused { .. }) => {
                // The intent may have been charged by a reply we lost; the
                // deadline's compensation asks the provider. Until then, retry.
                Ok(self.later(id, &lease, &error.to_string()).await?)
            }
        }
    }

    /// reserved → paid, with `PaymentProcessed` (captured).
    async fn paid(&self, order: &Order, lease: &Lease) -> Result<Outcome, SagaError> {
        let mut tx = self.db.begin().await?;
        if !holds(&mut tx, order.id, lease).await? {
            return Ok(Outcome::NotMine);
        }
        let payment_id = Uuid::new_v4();
        let version = match orders::transition(
            &mut tx,
            order.id,
            Status::Reserved,
            Status::Paid,
            "charged",
            None,
        )
        .await
        {
            Ok(version) => version,
            Err(TransitionError::Moved) => return Ok(Outcome::NotMine),
            Err(TransitionError::Illegal(e)) => return Err(e.into()),
            Err(TransitionError::Database(e)) => return Err(e.into()),
        };
        sqlx::query("UPDATE orders SET payment_id = $2 WHERE id = $1")
            .bind(order.id)
            .bind(payment_id)
            .execute(&mut *tx)
            .await?;
        PaymentProcessed::new(
            payment_id,
            order.id,
            order.pricing.total,
            order.currency,
            PaymentStatus::Captured,
            None,
            Utc::now(),
        )
        .enqueue(&mut tx, &self.topics)
        .await?;
        CacheInvalidated::new(
            "orders",
            vec![format!("{}@{version}", order.id)],
            "order paid",
        )
        .enqueue(&mut tx, &self.topics)
        .await?;
        tx.commit().await?;
        let _ = self
            .cache
            .invalidate(Kind::Orders, &order.id.to_string(), version)
            .await;
        Ok(Outcome::Settled(Status::Paid))
    }

    /// reserved → payment_failed: stock released, `PaymentProcessed`
    /// (declined, with the reason).
    async fn fail(&self, order: &Order, lease: &Lease, why: &str) -> Result<Outcome, SagaError> {
        self.settle(
            order,
            Some(lease),
            Status::Reserved,
            Status::PaymentFailed,
            why,
            Some((PaymentStatus::Declined, why.to_string())),
        )
        .await
    }

    /// Past the deadline: make sure nothing stays charged, then fail the order.
    async fn give_up(
        &self,
        order: &Order,
        lease: &Lease,
        intent: Option<&str>,
        why: &str,
    ) -> Result<Outcome, SagaError> {
        let refunded = match intent {
            None => false,
            Some(intent) => match self.undo_payment(order.id, intent).await {
                Ok(refunded) => refunded,
                Err(SagaError::Provider(PaymentError::Unavailable(e))) => {
                    return Ok(self.later(order.id, lease, &e).await?);
                }
                Err(e) => return Err(e),
            },
        };
        let event = if refunded {
            (PaymentStatus::Refunded, why.to_string())
        } else {
            (PaymentStatus::Declined, why.to_string())
        };
        self.settle(
            order,
            Some(lease),
            Status::Reserved,
            Status::PaymentFailed,
            why,
            Some(event),
        )
        .await
    }

    /// Makes sure an intent is not left charged: cancels it, or refunds it
    /// if it was charged. Whether a refund was made.
    async fn undo_payment(&self, order: Uuid, intent: &str) -> Result<bool, SagaError> {
        let now = self
            .provider
            .retrieve(intent)
            .await
            .map_err(SagaError::Provider)?;
        match now.status.as_str() {
            "succeeded" if now.amount_refunded >= now.amount => Ok(true),
            "succeeded" => {
                self.provider
                    .refund(order, intent)
                    .await
                    .map_err(SagaError::Provider)?;
                Ok(true)
            }
            "canceled" => Ok(false),
            _ => match self.provider.cancel(order, intent).await {
                Ok(_) => Ok(false),
                // Charged between the two calls.
                Err(PaymentError::Refused { .. }) => {
                    self.provider
                        .refund(order, intent)
                        .await
                        .map_err(SagaError::Provider)?;
                    Ok(true)
                }
                Err(e) => Err(SagaError::Provider(e)),
            },
        }
    }

    /// Moves the order from `from` to `to`, releasing its stock, with the
    /// payment event if any; under `lease` when given.
    async fn settle(
        &self,
        order: &Order,
        lease: Option<&Lease>,
        from: Status,
        to: Status,
        why: &str,
        payment: Option<(PaymentStatus, String)>,
    ) -> Result<Outcome, SagaError> {
        let mut tx = self.db.begin().await?;
        if let Some(lease) = lease
            && !holds(&mut tx, order.id, lease).await?
        {
            return Ok(Outcome::NotMine);
        }
        let version = match orders::transition(&mut tx, order.id, from, to, why, Some(why)).await {
            Ok(version) => version,
            Err(TransitionError::Moved) => return Ok(Outcome::NotMine),
            Err(TransitionError::Illegal(e)) => return Err(e.into()),
            Err(TransitionError::Database(e)) => return Err(e.into()),
        };
        let products = if from.holds_stock() && !to.holds_stock() {
            catalogue::release(&mut tx, &order.takes()).await?
        } else {
            Vec::new()
        };
        if let Some((status, reason)) = payment {
            let reason =
                (status != PaymentStatus::Refunded || !reason.is_empty()).then_some(reason);
            let payment_id: Option<Uuid> =
                sqlx::query_scalar("SELECT payment_id FROM orders WHERE id = $1")
                    .bind(order.id)
                    .fetch_one(&mut *tx)
                    .await?;
            PaymentProcessed::new(
                payment_id.unwrap_or_else(Uuid::new_v4),
                order.id,
                order.pricing.total,
                order.currency,
                status,
                if status == PaymentStatus::Declined {
                    reason
                } else {
                    None
                },
                Utc::now(),
            )
            .enqueue(&mut tx, &self.topics)
            .await?;
        }
        CacheInvalidated::new("orders", vec![format!("{}@{version}", order.id)], why)
            .enqueue(&mut tx, &self.topics)
            .await?;
        let product_keys: Vec<String> = products
            .iter()
            .map(|(sku, v)| format!("{sku}@{v}"))
            .collect();
        CacheInvalidated::new("products", product_keys, "stock released")
            .enqueue(&mut tx, &self.topics)
            .await?;
        tx.commit().await?;
        let _ = self
            .cache
            .invalidate(Kind::Orders, &order.id.to_string(), version)
            .await;
        for (sku, version) in products {
            let _ = self.cache.invalidate(Kind::Products, &sku, version).await;
        }
        Ok(Outcome::Settled(to))
    }

    /// Cancels an order for its customer: a reserved one is cancelled (its
    /// payment undone if one was started), a paid one refunded; either way
    /// the stock comes back.
    pub async fn cancel(&self, id: Uuid) -> Result<Status, SagaError> {
        let Some(order) = orders::get(&self.db, id).await? else {
            return Err(SagaError::NotFound);
        };
        let to = match order.status {
            Status::Pending | Status::Reserved => Status::Cancelled,
            Status::Paid => Status::Refunded,
            other => {
                return Err(SagaError::Transition(crate::workflow::IllegalTransition {
                    from: other,
                    to: Status::Cancelled,
                }));
            }
        };
        let Some(lease) = self.claim(id, order.status, false).await? else {
            return Err(SagaError::Busy);
        };
        let intent: Option<String> =
            sqlx::query_scalar("SELECT payment_intent FROM orders WHERE id = $1")
                .bind(id)
                .fetch_one(&self.db)
                .await?;
        let refunded = match intent.as_deref() {
            None => false,
            Some(intent) if order.status == Status::Paid => {
                match self.provider.refund(id, intent).await {
                    Ok(()) => true,
                    Err(e) => {
                        self.release_lease(id, &lease).await?;
                        return Err(SagaError::Provider(e));
                    }
                }
            }
            Some(intent) => match self.undo_payment(id, intent).await {
                Ok(refunded) => refunded,
                Err(e) => {
                    self.release_lease(id, &lease).await?;
                    return Err(e);
                }
            },
        };
        let payment = refunded.then(|| (PaymentStatus::Refunded, String::new()));
        match self
            .settle(
                &order,
                Some(&lease),
                order.status,
                to,
                "cancelled by the customer",
                payment,
            )
            .await?
        {
            Outcome::Settled(status) => Ok(status),
            _ => Err(SagaError::Busy),
        }
    }
}

/// Whether `lease` still holds the order (locking its row for the
/// transaction, so the check stays true until the commit).
async fn holds(tx: &mut PgConnection, id: Uuid, lease: &Lease) -> sqlx::Result<bool> {
    let token: Option<Option<Uuid>> =
        sqlx::query_scalar("SELECT lease_token FROM orders WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    Ok(token.flatten() == Some(lease.token))
}

/// How long an order may take to be paid before it is given up.
pub fn deadline(settings: &SagaSettings) -> chrono::DateTime<Utc> {
    Utc::now()
        + chrono::Duration::from_std(settings.give_up_after)
            .unwrap_or(chrono::Duration::minutes(15))
}
