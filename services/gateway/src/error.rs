//! Every way the gateway itself refuses or fails a request, each one
//! problem+json with the status a client can act on. What upstreams answer
//! is passed on as they answered it.

use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tributary_kit::Problem;
use tributary_kit::jwt::VerifyError;

use crate::keys::KeyError;
use crate::limit::Decision;

/// Why the gateway answered instead of an upstream.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No route takes the request.
    #[error("no route for this path and method")]
    NoRoute,
    /// The route was retired.
    #[error("retired: {0}")]
    Retired(String),
    /// The API key is missing or refused.
    #[error(transparent)]
    Key(KeyError),
    /// The bearer token is missing (`None`) or refused.
    #[error("token refused")]
    Token(Option<VerifyError>),
    /// The token lacks a permission.
    #[error("the token lacks the permission `{0}`")]
    Forbidden(String),
    /// Over the rate limit.
    #[error("rate limited")]
    RateLimited(Decision),
    /// The upstream's circuit breaker is open.
    #[error("the upstream {upstream} is failing; retry in {retry_in:?}")]
    BreakerOpen {
        /// The upstream.
        upstream: String,
        /// When it will be probed.
        retry_in: Duration,
    },
    /// The upstream could not be reached or broke off.
    #[error("the upstream {upstream} did not answer: {reason}")]
    BadGateway {
        /// The upstream.
        upstream: String,
        /// What went wrong.
        reason: String,
    },
    /// The upstream took longer than its timeout.
    #[error("the upstream {upstream} did not answer within {timeout:?}")]
    Timeout {
        /// The upstream.
        upstream: String,
        /// Its timeout.
        timeout: Duration,
    },
    /// The request body is larger than allowed.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    /// A CORS preflight that is not allowed.
    #[error("cross-origin request refused: {0}")]
    CorsRefused(String),
    /// An Idempotency-Key problem (400 missing or malformed, 409 in flight,
    /// 422 reused for another request).
    #[error("{1}")]
    Idempotency(StatusCode, String),
    /// The request is malformed in a way a proxy must not pass on.
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl GatewayError {
    /// The problem response.
    pub fn problem(&self) -> Problem {
        match self {
            GatewayError::NoRoute => {
                Problem::not_found().detail("no route takes this path and method")
            }
            GatewayError::Retired(why) => {
                Problem::new(StatusCode::GONE, "retired", "Retired").detail(why.clone())
            }
            GatewayError::Key(KeyError::Unavailable(_)) => {
                Problem::unavailable("API keys cannot be checked right now", 1)
            }
            GatewayError::Key(error) => {
                Problem::new(StatusCode::UNAUTHORIZED, "api-key", "API key refused")
                    .detail(format!("{error}: send the application's key in X-API-Key"))
                    .header(header::WWW_AUTHENTICATE, "ApiKey realm=\"tributary\"")
            }
            GatewayError::Token(error) => tributary_kit::jwt::unauthorized(error.as_ref()),
            GatewayError::Forbidden(permission) => tributary_kit::jwt::forbidden(&format!(
                "this route needs the permission `{permission}`"
            )),
            GatewayError::RateLimited(decision) => {
                let mut problem = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Too many requests",
                )
                .detail(format!(
                    "over {} requests per {} s; retry in {} s",
                    decision.limit,
                    decision.window_secs,
                    decision.reset_secs.max(1)
                ));
                let mut headers = http::HeaderMap::new();
                decision.write_headers(&mut headers);
                for (name, value) in &headers {
                    problem.headers.push((name.clone(), value.clone()));
                }
                problem
            }
            GatewayError::BreakerOpen { upstream, retry_in } => Problem::unavailable(
                format!(
                    "the upstream {upstream} is failing; the gateway is not sending it requests for now"
                ),
                retry_in.as_secs().max(1),
            ),
            GatewayError::BadGateway { upstream, .. } => {
                Problem::new(StatusCode::BAD_GATEWAY, "bad-gateway", "Bad gateway")
                    .detail(format!("the upstream {upstream} did not answer"))
            }
            GatewayError::Timeout { upstream, timeout } => Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway-timeout",
                "Gateway timeout",
            )
            .detail(format!(
                "the upstream {upstream} did not answer within {} s",
                timeout.as_secs_f64()
            )),
            GatewayError::TooLarge(limit) => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Request body too large",
            )
            .detail(format!("request bodies are limited to {limit} bytes")),
            GatewayError::CorsRefused(why) => Problem::new(
                StatusCode::FORBIDDEN,
                "cors",
                "Cross-origin request refused",
            )
            .detail(why.clone()),
            GatewayError::Idempotency(status, why) => {
                let (slug, title) = match status.as_u16() {
                    409 => ("idempotency-in-flight", "Request in flight"),
                    422 => ("idempotency-mismatch", "Idempotency key reused"),
                    _ => ("idempotency-key", "Idempotency key required"),
                };
                Problem::new(*status, slug, title).detail(why.clone())
            }
            GatewayError::BadRequest(why) => {
                Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request")
                    .detail(why.clone())
            }
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut response = self.problem().into_response();
        if matches!(self, GatewayError::BadRequest(_)) {
            // Its framing cannot be trusted: nothing after it on this
            // connection is read as a request.
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}
