//! The service's one error type and the problem each variant answers with.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tributary_kit::Problem;

use crate::pricing::PricingError;
use crate::workflow::IllegalTransition;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum OrdersError {
    /// A request field is wrong.
    #[error("{pointer}: {detail}")]
    Invalid {
        /// JSON pointer to the field.
        pointer: String,
        /// What is wrong.
        detail: String,
    },
    /// A query parameter is wrong.
    #[error("query parameter {parameter}: {detail}")]
    InvalidQuery {
        /// The parameter.
        parameter: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A header is missing or wrong.
    #[error("header {header}: {detail}")]
    InvalidHeader {
        /// The header.
        header: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// No such thing (or not the caller's).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The product exists already.
    #[error("product {0} exists")]
    ProductExists(String),
    /// Not enough stock for a line.
    #[error("not enough stock of {sku}")]
    OutOfStock {
        /// JSON pointer to the line's sku.
        pointer: String,
        /// The product.
        sku: String,
    },
    /// The order is not in a state that allows this.
    #[error(transparent)]
    Transition(#[from] IllegalTransition),
    /// Another request or worker is changing the order now.
    #[error("the order is being changed by another request")]
    Busy,
    /// The same idempotency key was used for another request.
    #[error("the idempotency key was used for another request")]
    KeyReused,
    /// A request with the same idempotency key is still being processed.
    #[error("a request with this idempotency key is in flight")]
    KeyInFlight,
    /// Pricing refused the order.
    #[error(transparent)]
    Pricing(#[from] PricingError),
    /// A problem made elsewhere (the kit's 401 and 403).
    #[error("{}", .0.title)]
    Problem(Problem),
    /// Every database connection is in use: the service is saturated.
    #[error("every database connection is in use")]
    Overloaded,
    /// Writes are refused: the primary database is down.
    #[error("the primary database is unavailable")]
    PrimaryDown,
    /// PostgreSQL or Redis failed; the cause is logged.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for OrdersError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut => Self::Overloaded,
            error => Self::Unavailable(format!("PostgreSQL: {error}")),
        }
    }
}

impl From<redis::RedisError> for OrdersError {
    fn from(error: redis::RedisError) -> Self {
        Self::Unavailable(format!("Redis: {error}"))
    }
}

impl From<Problem> for OrdersError {
    fn from(problem: Problem) -> Self {
        Self::Problem(problem)
    }
}

impl OrdersError {
    /// 422 naming the field.
    pub fn invalid(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Invalid {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }

    /// The problem this error answers with.
    pub fn problem(&self) -> Problem {
        match self {
            Self::Invalid { pointer, detail } => Problem::invalid(pointer.clone(), detail.clone()),
            Self::InvalidQuery { parameter, detail } => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-query",
                "A query parameter is invalid",
            )
            .detail(format!("`{parameter}` {detail}")),
            Self::InvalidHeader { header, detail } => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-header",
                "A header is missing or invalid",
            )
            .detail(format!("{header}: {detail}")),
            Self::NotFound(what) => Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found")
                .detail(format!("{what} not found")),
            Self::ProductExists(sku) => {
                Problem::new(StatusCode::CONFLICT, "product-exists", "The product exists")
                    .detail(format!("{sku} exists; change its stock with /restock"))
                    .field("/sku", "exists")
            }
            Self::OutOfStock { pointer, sku } => {
                Problem::new(StatusCode::CONFLICT, "out-of-stock", "Not enough stock")
                    .detail(format!(
                        "{sku} has less stock than the order asks for; nothing was reserved"
                    ))
                    .field(pointer.clone(), format!("{sku}: not enough stock"))
            }
            Self::Transition(e) => Problem::new(
                StatusCode::CONFLICT,
                "order-state",
                "The order is not in a state that allows this",
            )
            .detail(e.to_string()),
            Self::Busy => Problem::new(
                StatusCode::CONFLICT,
                "order-busy",
                "The order is being changed",
            )
            .detail("its payment is under way; retry in a moment")
            .header(header::RETRY_AFTER, "1"),
            Self::KeyReused => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "The idempotency key was used for another request",
            )
            .detail("use a new Idempotency-Key for a different request"),
            Self::KeyInFlight => Problem::new(
                StatusCode::CONFLICT,
                "idempotency-key-in-flight",
                "A request with this idempotency key is in flight",
            )
            .detail("retry once it has been answered to get its response")
            .header(header::RETRY_AFTER, "1"),
            Self::Pricing(PricingError::UnknownCoupon(coupon)) => {
                Problem::invalid("/coupon", format!("unknown coupon `{coupon}`"))
            }
            Self::Pricing(PricingError::Overflow) => {
                Problem::invalid("/lines", "the order's amounts overflow")
            }
            Self::Pricing(PricingError::Rule { .. }) => {
                Problem::unavailable("the pricing rules failed on this order; retry later", 5)
            }
            Self::Problem(problem) => problem.clone(),
            Self::Overloaded => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "Overloaded")
                    .detail("every database connection is in use; retry in a moment")
                    .header(header::RETRY_AFTER, "1")
            }
            Self::PrimaryDown => Problem::unavailable(
                "the order database is unavailable: writes are refused, reads come from the cache",
                5,
            ),
            Self::Unavailable(_) => {
                Problem::unavailable("a dependency is unavailable; retry shortly", 1)
            }
        }
    }
}

impl IntoResponse for OrdersError {
    fn into_response(self) -> Response {
        match &self {
            Self::Unavailable(cause) => tracing::error!(%cause, "answering 503"),
            Self::Overloaded => {
                tracing::warn!("every database connection is in use: answering 503")
            }
            Self::Pricing(error @ PricingError::Rule { .. }) => {
                tracing::error!(%error, "a pricing rule failed")
            }
            _ => {}
        }
        self.problem().into_response()
    }
}
