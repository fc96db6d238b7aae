//! The payment provider's API (Stripe-like payment intents), called with an
//! idempotency key on every request (derived from the order, so a retry by
//! anyone, on any instance, after any crash, is the same request and never
//! a second charge), a timeout, retries with exponential backoff inside a
//! retry budget, and a circuit breaker. Every failed call is reported as an
//! `ExternalAPICallFailed` event.

use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use reqwest::StatusCode;
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::events::{CallFailure, ExternalApiCallFailed};
use crate::money::Currency;
use crate::settings::{PaymentSettings, Topics};

use tributary_kit::resilience::{Breaker, RetryBudget, State};

/// The service name in `ExternalAPICallFailed`.
const SERVICE: &str = "payment-provider";

/// A payment intent as the provider shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Intent {
    /// The provider's id.
    pub id: String,
    /// `requires_confirmation`, `requires_payment_method`, `succeeded`, `canceled`, …
    pub status: String,
    /// Amount in minor units.
    pub amount: i64,
    /// Refunded so far.
    #[serde(default)]
    pub amount_refunded: i64,
}

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The card was declined (final for this intent).
    #[error("declined: {0}")]
    Declined(String),
    /// The provider refused the request for good (4xx): retrying the same
    /// request cannot help.
    #[error("refused ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The provider's code and message.
        message: String,
    },
    /// No usable answer (timeout, connection, 5xx, 409 in flight, breaker
    /// open): the request may or may not have been done; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// The provider, as this service calls it.
#[derive(Debug, Clone)]
pub struct Provider {
    http: reqwest::Client,
    base: String,
    settings: PaymentSettings,
    breaker: Breaker,
    budget: RetryBudget,
    db: PgPool,
    topics: Topics,
    breaker_state: Gauge,
}

/// One attempt's failure, before retries are decided.
struct Failure {
    error: PaymentError,
    kind: CallFailure,
    status: Option<u16>,
    retry: bool,
}

impl Provider {
    /// A client of the provider at `settings.base_url`; failures are
    /// reported through `db`'s outbox.
    pub fn new(
        settings: PaymentSettings,
        db: PgPool,
        topics: Topics,
        breaker_state: Gauge,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(2)))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("the payment provider's HTTP client: {e}"))?;
        let base = settings.base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(format!("payments.base_url `{base}` must be an http(s) URL"));
        }
        Ok(Self {
            http,
            base,
            breaker: Breaker::new(settings.breaker.clone(), settings.timeout),
            budget: RetryBudget::new(settings.retry_ratio, settings.retry_floor_per_second),
            settings,
            db,
            topics,
            breaker_state,
        })
    }

    /// Creates the order's payment intent (the same one however often asked).
    pub async fn create_intent(
        &self,
        order: Uuid,
        amount: i64,
        currency: Currency,
    ) -> Result<Intent, PaymentError> {
        let body = serde_json::json!({
            "amount": amount,
            "currency": currency.code().to_ascii_lowercase(),
            "metadata": {"order_id": order.to_string()},
        });
        self.call(
            "/v1/payment_intents",
            Some(body),
            &format!("order-{order}-intent"),
        )
        .await
    }

    /// Confirms (charges) the intent.
    pub async fn confirm(&self, order: Uuid, intent: &str) -> Result<Intent, PaymentError> {
        self.call(
            &format!("/v1/payment_intents/{intent}/confirm"),
            None,
            &format!("order-{order}-confirm-{intent}"),
        )
        .await
    }

    /// Cancels an intent that was not charged.
    pub async fn cancel(&self, order: Uuid, intent: &str) -> Result<Intent, PaymentError> {
        self.call(
            &format!("/v1/payment_intents/{intent}/cancel"),
            None,
            &format!("order-{order}-cancel-{intent}"),
        )
        .await
    }

    /// Refunds a charged intent in full.
    pub async fn refund(&self, order: Uuid, intent: &str) -> Result<(), PaymentError> {
        let body = serde_json::json!({"payment_intent": intent});
        self.call::<serde_json::Value>(
            "/v1/refunds",
            Some(body),
            &format!("order-{order}-refund-{intent}"),
        )
        .await
        .map(|_| ())
    }

    /// The intent as the provider sees it now.
    pub async fn retrieve(&self, intent: &str) -> Result<Intent, PaymentError> {
        self.get(&format!("/v1/payment_intents/{intent}")).await
    }

    async fn get<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, PaymentError> {
        self.attempts(path, || {
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(self.settings.api_key.expose())
        })
        .await
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: Option<serde_json::Value>,
        key: &str,
    ) -> Result<T, PaymentError> {
        self.attempts(path, || {
            let request = self
                .http
                .post(format!("{}{path}", self.base))
                .bearer_auth(self.settings.api_key.expose())
                .header("idempotency-key", key);
            match &body {
                Some(body) => request.json(body),
                None => request,
            }
        })
        .await
    }

    /// Makes the request, retrying what may be retried within the budget.
    async fn attempts<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T, PaymentError> {
        self.budget.deposit();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let permit = match self.breaker.acquire() {
                Ok(permit) => permit,
                Err(open) => {
                    self.show_breaker();
                    return Err(PaymentError::Unavailable(open.to_string()));
                }
            };
            let started = Instant::now();
            let outcome = self.once::<T>(request()).await;
            match outcome {
                Ok(value) => {
                    permit.succeeded();
                    self.show_breaker();
                    return Ok(value);
                }
                Err(failure) => {
                    // Declines and refusals are the provider working.
                    if failure.retry {
                        permit.failed();
                    } else {
                        permit.succeeded();
                    }
                    self.show_breaker();
                    self.report(path, attempt, &failure, started.elapsed())
                        .await;
                    let may_retry = failure.retry
                        && attempt < self.settings.max_attempts
                        && self.budget.withdraw();
                    if !may_retry {
                        return Err(failure.error);
                    }
                    let base = Duration::from_millis(100) * 2u32.pow(attempt - 1);
                    let jitter = Duration::from_millis(fastrand::u64(0..=base.as_millis() as u64));
                    tokio::time::sleep(base / 2 + jitter / 2).await;
                }
            }
        }
    }

    async fn once<T: for<'de> Deserialize<'de>>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, Failure> {
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                let kind = if e.is_timeout() {
                    CallFailure::Timeout
                } else {
                    CallFailure::Connection
                };
                return Err(Failure {
                    error: PaymentError::Unavailable(e.to_string()),
                    kind,
                    status: None,
                    retry: true,
                });
            }
        };
        let status = response.status();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => {
                return Err(Failure {
                    error: PaymentError::Unavailable(format!("reading the answer: {e}")),
                    kind: if e.is_timeout() {
                        CallFailure::Timeout
                    } else {
                        CallFailure::Connection
                    },
                    status: Some(status.as_u16()),
                    retry: true,
                });
            }
        };
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| Failure {
                error: PaymentError::Unavailable(format!("an unreadable answer: {e}")),
                kind: CallFailure::Decode,
                status: Some(status.as_u16()),
                retry: true,
            });
        }
        let detail = serde_json::from_slice::<ErrorBody>(&bytes)
            .ok()
            .map(|b| b.error);
        let message = detail
            .as_ref()
            .map(|d| {
                format!(
                    "{}: {}",
                    d.code.as_deref().unwrap_or("error"),
                    d.message.as_deref().unwrap_or("")
                )
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
        let (error, retry) = if status == StatusCode::PAYMENT_REQUIRED {
            let reason = detail
                .and_then(|d| d.decline_code.or(d.code))
                .unwrap_or_else(|| "declined".into());
            (PaymentError::Declined(reason), false)
        } else if status.is_server_error()
            || status == StatusCode::CONFLICT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            (
                PaymentError::Unavailable(format!("{status}: {message}")),
                true,
            )
        } else {
            (
                PaymentError::Refused {
                    status: status.as_u16(),
                    message,
                },
                false,
            )
        };
        Err(Failure {
            error,
            kind: CallFailure::Http,
            status: Some(status.as_u16()),
            retry,
        })
    }

    fn show_breaker(&self) {
        self.breaker_state.set(match self.breaker.state() {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        });
    }

    /// Writes `ExternalAPICallFailed` to the outbox (on its own: the call
    /// failed whatever happens to the order).
    async fn report(&self, path: &str, attempt: u32, failure: &Failure, latency: Duration) {
        let event = ExternalApiCallFailed::new(
            SERVICE,
            format!("POST {path}"),
            attempt,
            failure.status,
            latency,
            failure.kind,
            failure.error.to_string(),
        );
        let written = async {
            let mut tx = self.db.begin().await?;
            event.enqueue(&mut tx, &self.topics).await?;
            tx.commit().await
        }
        .await;
        if let Err(error) = written {
            tracing::warn!(%error, "recording a failed payment call failed");
        }
        tracing::warn!(endpoint = path, attempt, error = %failure.error, "a payment provider call failed");
    }
}
