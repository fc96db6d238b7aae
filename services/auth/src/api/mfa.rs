//! The second factor's routes: enrolment, confirmation, removal, and the
//! second step of a login.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use tributary_kit::Json;
use tributary_kit::jwt::Bearer;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Tokens, client_ip, log_in, record_failure, user_agent};
use crate::app::{AppState, OutcomeLabels};
use crate::attempts::{Admission, Factor};
use crate::error::AuthError;
use crate::events::Method;
use crate::mfa;
use crate::users::{self, Audit, User};

/// The password was right; the second factor is next.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Challenge {
    /// Always `true`.
    pub(super) mfa_required: bool,
    /// For `POST /auth/login/mfa`.
    pub(super) mfa_token: String,
    /// Seconds left to use it.
    pub(super) expires_in: u64,
}

/// `POST /auth/login/mfa`: exactly one of `code` and `recovery_code`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SecondStep {
    mfa_token: String,
    /// The 6 digits the authenticator app shows.
    code: Option<String>,
    /// One of the recovery codes, if the app is lost.
    recovery_code: Option<String>,
}

fn now_secs() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

async fn user(state: &AppState, claims_user: &str) -> Result<User, AuthError> {
    let id: Uuid = claims_user
        .parse()
        .map_err(|_| AuthError::NotFound("user"))?;
    users::by_id(&state.db, id)
        .await?
        .ok_or(AuthError::NotFound("user"))
}

/// Checks a TOTP code of `user`'s enrolled seed, spending its step.
async fn totp_matches(state: &AppState, user: &User, code: &str) -> Result<bool, AuthError> {
    let Some(sealed) = &user.mfa_secret else {
        return Ok(false);
    };
    Ok(mfa::check_totp(
        &state.sealing,
        &state.redis,
        &state.settings.redis_prefix,
        user.id,
        sealed,
        code,
        now_secs(),
    )
    .await?)
}

/// Finishes a login with the second factor.
#[utoipa::path(post, path = "/auth/login/mfa", tag = "tokens", request_body = SecondStep,
    responses(
        (status = 200, description = "Logged in", body = Tokens),
        (status = 401, description = "The challenge or the code is invalid", body = tributary_kit::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Neither or both of code and recovery_code", body = tributary_kit::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts", body = tributary_kit::Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn login_second_step(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<SecondStep>,
) -> Result<Json<Tokens>, AuthError> {
    let prefix = &state.settings.redis_prefix;
    let (user_id, first) = mfa::challenge_user(&state.redis, prefix, &body.mfa_token)
        .await?
        .ok_or(AuthError::InvalidChallenge)?;
    let event_method = match first {
        mfa::FirstFactor::Password => Method::Password,
        mfa::FirstFactor::Federated => Method::Oauth,
    };
    let user = users::by_id(&state.db, user_id)
        .await?
        .filter(|u| u.mfa_enabled)
        .ok_or(AuthError::InvalidChallenge)?;
    let ip = client_ip(&state, peer, &headers).to_string();
    let ua = user_agent(&headers).to_string();
    let record = |outcome: &'static str, method: &'static str| Audit {
        action: "login-second-factor",
        outcome,
        user_id: Some(user.id),
        email: Some(user.email.as_str()),
        ip: Some(ip.clone()),
        user_agent: Some(ua.as_str()),
        detail: Some(serde_json::json!({ "method": method })),
        ..Audit::default()
    };
    let method = match (&body.code, &body.recovery_code) {
        (Some(_), None) => "totp",
        (None, Some(_)) => "recovery-code",
        _ => {
            return Err(AuthError::Invalid {
                pointer: "",
                detail: "give exactly one of `code` and `recovery_code`".into(),
            });
        }
    };
    let reservation = match state
        .attempts
        .admit(&user.email, &ip, Factor::SecondFactor, false)
        .await?
    {
        Admission::Go(reservation) => reservation,
        Admission::Limited(seconds) | Admission::Blocked(seconds) => {
            return Err(AuthError::TooManyAttempts(seconds));
        }
        Admission::Locked => {
            users::audit(&state.db, record("locked", method)).await;
            return Err(AuthError::InvalidSecondFactor);
        }
    };
    let matched = match (&body.code, &body.recovery_code) {
        (Some(code), _) => totp_matches(&state, &user, code).await,
        (_, Some(code)) => mfa::use_recovery_code(&state.db, user.id, code)
            .await
            .map_err(AuthError::from),
        _ => Ok(false),
    };
    let matched = match matched {
        Ok(matched) => matched,
        Err(error) => {
            state.attempts.release(reservation).await?;
            return Err(error);
        }
    };
    let aftermath = state.attempts.finish(reservation, matched).await?;
    if aftermath.locked_now {
        state.metrics.lockouts.inc();
        users::audit(
            &state.db,
            Audit {
                action: "lockout",
                ..record("locked", method)
            },
        )
        .await;
    }
    if !matched {
        let audit = record("failed", method);
        record_failure(&state, &user, event_method, (&ip, &ua), audit).await;
        return Err(AuthError::InvalidSecondFactor);
    }
    if !mfa::end_challenge(&state.redis, prefix, &body.mfa_token).await? {
        // Two requests with good codes raced; the other one logged in.
        return Err(AuthError::InvalidChallenge);
    }
    let amr: Vec<String> = match method {
        "totp" => vec![first.amr().into(), "otp".into(), "mfa".into()],
        _ => vec![first.amr().into(), "mfa".into()],
    };
    let audit = record("ok", method);
    let tokens = log_in(&state, &user, &amr, event_method, (&ip, &ua), audit).await?;
    state
        .metrics
        .logins
        .get_or_create(&OutcomeLabels { outcome: "ok" })
        .inc();
    Ok(Json(tokens))
}

/// A seed to enter in an authenticator app.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Enrolment {
    /// The seed in base32.
    secret: String,
    /// The `otpauth://` URI for a QR code.
    otpauth_uri: String,
}

/// Starts (or restarts) TOTP enrolment; confirm it with a code.
#[utoipa::path(post, path = "/auth/mfa/totp", tag = "mfa", security(("bearer" = [])),
    responses(
        (status = 200, description = "A new seed", body = Enrolment),
        (status = 401, description = "No valid access token", body = tributary_kit::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The second factor is already on", body = tributary_kit::Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn enrol(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
) -> Result<Json<Enrolment>, AuthError> {
    let user = user(&state, &claims.user_id).await?;
    let enrolment = mfa::enrol(&state.sealing, user.id, "Tributary", &user.email)?;
    if !users::begin_mfa(&state.db, user.id, &enrolment.sealed).await? {
        return Err(AuthError::MfaState(
            "the second factor is already on; remove it first",
        ));
    }
    Ok(Json(Enrolment {
        secret: enrolment.secret,
        otpauth_uri: enrolment.uri,
    }))
}

/// A TOTP code.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Code {
    /// The 6 digits the app shows now.
    code: String,
}

/// Recovery codes, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RecoveryCodes {
    /// Ten single-use codes for when the app is lost.
    recovery_codes: Vec<String>,
}

/// Confirms enrolment with a code from the app: the second factor is on.
#[utoipa::path(post, path = "/auth/mfa/totp/confirm", tag = "mfa", security(("bearer" = [])), request_body = Code,
    responses(
        (status = 200, description = "On; the recovery codes, shown once", body = RecoveryCodes),
        (status = 401, description = "No valid access token, or a wrong code", body = tributary_kit::Problem, content_type = "application/problem+json"),
        (status = 409, description = "No enrolment started, or already on", body = tributary_kit::Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn confirm(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    Json(body): Json<Code>,
) -> Result<Json<RecoveryCodes>, AuthError> {
    let user = user(&state, &claims.user_id).await?;
    if user.mfa_enabled || user.mfa_secret.is_none() {
        return Err(AuthError::MfaState(
            "start an enrolment with POST /auth/mfa/totp first",
        ));
    }
    if !totp_matches(&state, &user, &body.code).await? {
        return Err(AuthError::InvalidSecondFactor);
    }
    let mut tx = state.db.begin().await?;
    users::set_mfa(&mut tx, user.id, true).await?;
    let recovery_codes = mfa::new_recovery_codes(&mut tx, user.id).await?;
    tx.commit().await?;
    users::audit(
        &state.db,
        Audit {
            action: "mfa-enabled",
            outcome: "ok",
            user_id: Some(user.id),
            ..Audit::default()
        },
    )
    .await;
    Ok(Json(RecoveryCodes { recovery_codes }))
}

/// Turns the second factor off; needs a current code.
#[utoipa::path(post, path = "/auth/mfa/totp/disable", tag = "mfa", security(("bearer" = [])), request_body = Code,
    responses(
        (status = 204, description = "Off"),
        (status = 401, description = "No valid access token, or a wrong code", body = tributary_kit::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The second factor is not on", body = tributary_kit::Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn disable(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    Json(body): Json<Code>,
) -> Result<axum::http::StatusCode, AuthError> {
    let user = user(&state, &claims.user_id).await?;
    if !user.mfa_enabled {
        return Err(AuthError::MfaState("the second factor is not on"));
    }
    if !totp_matches(&state, &user, &body.code).await? {
        return Err(AuthError::InvalidSecondFactor);
    }
    let mut tx = state.db.begin().await?;
    users::set_mfa(&mut tx, user.id, false).await?;
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    users::audit(
        &state.db,
        Audit {
            action: "mfa-disabled",
            outcome: "ok",
            user_id: Some(user.id),
            ..Audit::default()
        },
    )
    .await;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
