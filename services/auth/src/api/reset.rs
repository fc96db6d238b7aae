//! Password reset routes: ask for a mailed link, then set a new password
//! with its token.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use tributary_kit::{Json, Secret};
use utoipa::ToSchema;

use super::{check_email, check_password, client_ip, user_agent};
use crate::app::AppState;
use crate::error::AuthError;
use crate::reset::{self, Origin, Requested};
use crate::users::{self, Audit};

/// `POST /auth/password-reset`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ResetRequest {
    /// The account's email.
    email: String,
}

/// The same answer whether or not the account exists.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ResetAccepted {
    /// What happens next.
    detail: &'static str,
}

/// Mails a reset link if an account has this email. The answer is the
/// same, and as quick, whether or not it has: the work happens after it.
#[utoipa::path(post, path = "/auth/password-reset", tag = "password", request_body = ResetRequest,
    responses(
        (status = 202, description = "Accepted: a link is mailed if the account exists", body = ResetAccepted),
        (status = 422, description = "The email is malformed", body = tributary_kit::Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn request_reset(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<ResetRequest>,
) -> Result<(StatusCode, Json<ResetAccepted>), AuthError> {
    let email = body.email.trim().to_string();
    check_email(&email)?;
    let ip = client_ip(&state, peer, &headers).to_string();
    let ua = user_agent(&headers).to_string();
    tokio::spawn(async move {
        let origin = Origin {
            ip: &ip,
            user_agent: &ua,
        };
        let requested = reset::request(
            &state.db,
            &state.settings.reset,
            &state.sealing,
            &state.clock,
            &email,
            origin,
        )
        .await;
        let (outcome, user_id) = match requested {
            Ok(Requested::Mailed(_)) => return,
            Ok(Requested::NoAccount) => ("unknown-account", None),
            Ok(Requested::TooMany(user)) => ("limited", Some(user)),
            Err(error) => {
                tracing::error!(%error, "a password reset request failed");
                ("failed", None)
            }
        };
        let record = Audit {
            action: "password-reset-requested",
            outcome,
            user_id,
            email: Some(&email),
            ip: Some(ip.clone()),
            user_agent: Some(&ua),
            ..Audit::default()
        };
        users::audit(&state.db, record).await;
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(ResetAccepted {
            detail: "if an account has this email, a reset link is on its way",
        }),
    ))
}

/// `POST /auth/password-reset/confirm`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ResetConfirm {
    /// The token from the mailed link.
    #[schema(value_type = String)]
    token: Secret,
    /// The new password: 8 characters at least, 72 bytes at most.
    #[schema(value_type = String, format = Password)]
    password: Secret,
}

/// Sets a new password with a mailed token; every session of the user ends.
#[utoipa::path(post, path = "/auth/password-reset/confirm", tag = "password", request_body = ResetConfirm,
    responses(
        (status = 204, description = "The password is set; every session ended"),
        (status = 400, description = "The token is unknown, used or expired", body = tributary_kit::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The password is invalid", body = tributary_kit::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Hashing is saturated or a dependency is down", body = tributary_kit::Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn confirm_reset(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<ResetConfirm>,
) -> Result<StatusCode, AuthError> {
    check_password(&state, body.password.expose())?;
    let token = body.token.expose();
    if !reset::is_live(&state.db, &state.clock, token).await? {
        return Err(AuthError::InvalidResetToken);
    }
    let hash = state.hasher.hash(body.password).await?;
    let ip = client_ip(&state, peer, &headers).to_string();
    let origin = Origin {
        ip: &ip,
        user_agent: user_agent(&headers),
    };
    let sessions = state.sessions.clone();
    let user = reset::redeem(
        &state.db,
        &state.sealing,
        &state.clock,
        token,
        &hash,
        origin,
        |user| async move {
            sessions.end_all(user).await?;
            Ok::<_, AuthError>(())
        },
    )
    .await?
    .ok_or(AuthError::InvalidResetToken)?;
    // Sessions a login started while the transaction committed end too.
    state.sessions.end_all(user.id).await?;
    // Owning the mailbox proves the account: its lock and failures go.
    state.attempts.unlock(&user.email).await?;
    tracing::info!(user_id = %user.id, "password reset");
    Ok(StatusCode::NO_CONTENT)
}
