//! The service's one error type and the problem each variant answers with.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tributary_kit::Problem;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A request field is wrong.
    #[error("{pointer}: {detail}")]
    Invalid {
        /// JSON pointer to the field.
        pointer: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Sign-up with an email that has an account.
    #[error("an account with this email exists")]
    EmailTaken,
    /// Wrong email or password, unknown account or locked account: one answer for all.
    #[error("the email or password is wrong")]
    InvalidCredentials,
    /// A refresh token that is unknown, spent, revoked or expired.
    #[error("the refresh token is invalid")]
    InvalidRefreshToken,
    /// A query parameter is missing or wrong.
    #[error("query parameter {parameter}: {detail}")]
    InvalidQuery {
        /// The parameter.
        parameter: String,
        /// What is wrong.
        detail: String,
    },
    /// An external login failed.
    #[error(transparent)]
    Oidc(#[from] crate::oidc::OidcError),
    /// A password reset token that is unknown, used or expired.
    #[error("the reset token is invalid")]
    InvalidResetToken,
    /// Too many attempts; retry after this many seconds.
    #[error("too many attempts")]
    TooManyAttempts(u64),
    /// Password hashing is saturated.
    #[error("password hashing is saturated")]
    Busy,
    /// No such thing.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The action needs a recent second-factor authentication.
    #[error("this needs a second factor within the last 15 minutes")]
    StepUpRequired,
    /// The MFA challenge of a login is unknown or expired.
    #[error("the MFA challenge is invalid or expired")]
    InvalidChallenge,
    /// A TOTP or recovery code that is wrong or was used.
    #[error("the code is wrong or was already used")]
    InvalidSecondFactor,
    /// Enrolment asked for while the second factor is on, or confirmation
    /// or removal while it is not in that state.
    #[error("{0}")]
    MfaState(&'static str),
    /// A problem made elsewhere (the kit's 401).
    #[error("{}", .0.title)]
    Problem(Problem),
    /// PostgreSQL, Redis or the keys failed; the cause is logged.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for AuthError {
    fn from(error: sqlx::Error) -> Self {
        Self::Unavailable(format!("PostgreSQL: {error}"))
    }
}

impl From<redis::RedisError> for AuthError {
    fn from(error: redis::RedisError) -> Self {
        Self::Unavailable(format!("Redis: {error}"))
    }
}

impl From<crate::keys::KeyError> for AuthError {
    fn from(error: crate::keys::KeyError) -> Self {
        Self::Unavailable(format!("signing keys: {error}"))
    }
}

impl From<crate::mfa::MfaError> for AuthError {
    fn from(error: crate::mfa::MfaError) -> Self {
        Self::Unavailable(format!("second factor: {error}"))
    }
}

impl From<crate::passwords::Busy> for AuthError {
    fn from(_: crate::passwords::Busy) -> Self {
        Self::Busy
    }
}

impl From<Problem> for AuthError {
    fn from(problem: Problem) -> Self {
        Self::Problem(problem)
    }
}

impl AuthError {
    /// The problem this error answers with.
    pub fn problem(&self) -> Problem {
        match self {
            Self::Invalid { pointer, detail } => Problem::invalid(*pointer, detail.clone()),
            Self::EmailTaken => Problem::new(
                StatusCode::CONFLICT,
                "email-taken",
                "An account with this email exists",
            )
            .field("/email", "an account with this email exists"),
            Self::InvalidCredentials => Problem::new(
                StatusCode::UNAUTHORIZED,
                "invalid-credentials",
                "The email or password is wrong",
            ),
            Self::InvalidRefreshToken => Problem::new(
                StatusCode::UNAUTHORIZED,
                "invalid-refresh-token",
                "The refresh token is invalid",
            )
            .detail("it is unknown, already used, expired, or its session has ended; log in again"),
            Self::InvalidQuery { parameter, detail } => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-query",
                "A query parameter is invalid",
            )
            .detail(format!("`{parameter}` {detail}")),
            Self::Oidc(error) => oidc_problem(error),
            Self::InvalidResetToken => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-reset-token",
                "The reset token is invalid",
            )
            .detail("it is unknown, already used or expired; ask for a new reset mail")
            .field("/token", "is unknown, already used or expired"),
            Self::TooManyAttempts(seconds) => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-attempts",
                "Too many attempts",
            )
            .detail(format!("try again in {seconds} s"))
            .header(header::RETRY_AFTER, &seconds.to_string()),
            Self::Busy => Problem::unavailable("too many logins at once; retry shortly", 1),
            Self::NotFound(what) => {
                Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found")
                    .detail(format!("{what} not found"))
            }
            Self::Forbidden(detail) => tributary_kit::jwt::forbidden(detail),
            Self::StepUpRequired => Problem::new(
                StatusCode::FORBIDDEN,
                "step-up-required",
                "A recent second factor is required",
            )
            .detail("log in again with your second factor; admin actions need it within 15 minutes")
            .header(
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"tributary\", error=\"insufficient_user_authentication\", acr_values=\"mfa\", max_age=900",
            ),
            Self::InvalidChallenge => Problem::new(
                StatusCode::UNAUTHORIZED,
                "invalid-mfa-challenge",
                "The MFA challenge is invalid or expired",
            )
            .detail("log in again with the password"),
            Self::InvalidSecondFactor => Problem::new(
                StatusCode::UNAUTHORIZED,
                "invalid-second-factor",
                "The code is wrong or was already used",
            ),
            Self::MfaState(detail) => Problem::new(
                StatusCode::CONFLICT,
                "mfa-state",
                "The second factor is not in a state that allows this",
            )
            .detail(*detail),
            Self::Problem(problem) => problem.clone(),
            Self::Unavailable(_) => Problem::unavailable("a dependency is unavailable; retry shortly", 1),
        }
    }
}

fn oidc_problem(error: &crate::oidc::OidcError) -> Problem {
    use crate::oidc::OidcError;
    match error {
        OidcError::UnknownProvider(name) => {
            Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found")
                .detail(format!("no provider `{name}` is configured"))
        }
        OidcError::Provider(_) => Problem::new(
            StatusCode::BAD_GATEWAY,
            "oidc-provider-failed",
            "The identity provider failed",
        )
        .detail(
            "the provider could not be reached or answered something unusable; try again later",
        ),
        OidcError::Denied(reason) => Problem::new(
            StatusCode::UNAUTHORIZED,
            "oidc-denied",
            "The identity provider refused the login",
        )
        .detail(reason.clone()),
        OidcError::InvalidIdToken(_) => Problem::new(
            StatusCode::UNAUTHORIZED,
            "invalid-id-token",
            "The identity provider's ID token is invalid",
        ),
        OidcError::InvalidState => Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-oidc-state",
            "The login state is invalid or expired",
        )
        .detail("start the login again from this browser"),
        OidcError::UnverifiedEmail => Problem::new(
            StatusCode::FORBIDDEN,
            "unverified-email",
            "The identity provider has not verified the email",
        )
        .detail("verify the email at the provider, then log in again"),
        OidcError::Redis(_) => {
            Problem::unavailable("a dependency is unavailable; retry shortly", 1)
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        match &self {
            Self::Unavailable(cause) => tracing::error!(%cause, "answering 503"),
            Self::Oidc(error) => tracing::warn!(%error, "an external login failed"),
            _ => {}
        }
        self.problem().into_response()
    }
}
