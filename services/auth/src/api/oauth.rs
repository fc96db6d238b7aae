//! Logging in through an external OpenID Connect provider: `start` sends
//! the browser there, `callback` takes it back, checks everything, links or
//! creates the local user by verified email, and answers like a login.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tributary_kit::{Json, Path};

use super::{LoginAnswer, after_first_factor, client_ip, user_agent};
use crate::app::AppState;
use crate::error::AuthError;
use crate::mfa::FirstFactor;
use crate::oidc::{FLOW_TTL_SECS, Flow, Identity, OidcError};
use crate::random;
use crate::users::{self, Audit, StoreError, User};

/// The cookie that ties a login at a provider to the browser that started it.
const COOKIE: &str = "tributary_oidc";

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// Sends the browser to the provider's login.
#[utoipa::path(get, path = "/auth/oauth/{provider}/start", tag = "oauth",
    params(("provider" = String, Path, description = "A configured provider's name")),
    responses(
        (status = 303, description = "To the provider's authorization endpoint (with a cookie for the callback)"),
        (status = 404, description = "No such provider", body = tributary_kit::Problem, content_type = "application/problem+json"),
        (status = 502, description = "The provider's discovery failed", body = tributary_kit::Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn start(
    State(state): State<AppState>,
    Path(provider): Path<String>,
) -> Result<Response, AuthError> {
    let cookie = random::token("");
    let login_state = random::token("");
    let flow = Flow::new(&provider, &cookie);
    let url = state
        .oidc
        .authorization_url(&provider, &login_state, &flow)
        .await?;
    flow.save(&state.redis, &state.settings.redis_prefix, &login_state)
        .await?;
    let secure = if url.starts_with("https://") || state.settings.issuer.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let set_cookie = format!(
        "{COOKIE}={cookie}; Path=/auth/oauth/{provider}; HttpOnly; SameSite=Lax; Max-Age={FLOW_TTL_SECS}{secure}"
    );
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    let location = HeaderValue::try_from(url).map_err(|_| {
        AuthError::from(OidcError::Provider("an unusable authorization URL".into()))
    })?;
    headers.insert(header::LOCATION, location);
    if let Ok(value) = HeaderValue::try_from(set_cookie) {
        headers.insert(header::SET_COOKIE, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The provider's answer, as query parameters.
#[derive(Debug, Default)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

impl Callback {
    fn parse(query: Option<&str>) -> Result<Self, AuthError> {
        let mut callback = Callback::default();
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match name.as_ref() {
                "code" => &mut callback.code,
                "state" => &mut callback.state,
                "iss" => &mut callback.iss,
                "error" => &mut callback.error,
                "error_description" => &mut callback.error_description,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(AuthError::InvalidQuery {
                    parameter: name.into_owned(),
                    detail: "is given twice".into(),
                });
            }
        }
        Ok(callback)
    }
}

/// Where the provider sends the browser back: answers like `POST /auth/login`.
#[utoipa::path(get, path = "/auth/oauth/{provider}/callback", tag = "oauth",
    params(
        ("provider" = String, Path, description = "A configured provider's name"),
        ("code" = Option<String>, Query, description = "The authorization code"),
        ("state" = Option<String>, Query, description = "The state `start` sent"),
        ("error" = Option<String>, Query, description = "The provider's refusal"),
    ),
    responses(
        (status = 200, description = "Logged in, or a challenge for the second factor", body = LoginAnswer),
        (status = 400, description = "The state is unknown, used, expired or not this browser's; or a parameter is missing", body = tributary_kit::Problem, content_type = "application/problem+json"),
        (status = 401, description = "The provider refused, the ID token is invalid, or the account is locked", body = tributary_kit::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The provider has not verified the email", body = tributary_kit::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such provider", body = tributary_kit::Problem, content_type = "application/problem+json"),
        (status = 502, description = "The provider failed", body = tributary_kit::Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn callback(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(provider): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, AuthError> {
    let callback = Callback::parse(query.as_deref())?;
    let ip = client_ip(&state, peer, &headers).to_string();
    let ua = user_agent(&headers).to_string();
    let cookie = cookie_value(&headers);
    let login_state = callback.state.as_deref().unwrap_or("");
    let flow = Flow::take(
        &state.redis,
        &state.settings.redis_prefix,
        login_state,
        &provider,
        cookie.as_deref(),
    )
    .await?;
    // RFC 9207: an answer naming another issuer is a mix-up attack.
    if let Some(iss) = &callback.iss
        && Some(iss.as_str()) != state.oidc.issuer(&provider)
    {
        return Err(OidcError::InvalidState.into());
    }
    if let Some(error) = callback.error {
        let detail = callback.error_description.unwrap_or_default();
        return Err(OidcError::Denied(format!("{error}: {detail}")).into());
    }
    let code = callback.code.ok_or_else(|| AuthError::InvalidQuery {
        parameter: "code".into(),
        detail: "is missing".into(),
    })?;
    let identity = match state.oidc.finish(&flow, &code).await {
        Ok(identity) => identity,
        Err(error) => {
            tracing::warn!(%provider, %error, "an external login failed");
            users::audit(
                &state.db,
                Audit {
                    action: "oauth-login",
                    outcome: "failed",
                    ip: Some(ip.clone()),
                    user_agent: Some(&ua),
                    detail: Some(
                        serde_json::json!({ "provider": provider, "error": error.to_string() }),
                    ),
                    ..Audit::default()
                },
            )
            .await;
            return Err(error.into());
        }
    };
    let user = local_user(&state, &provider, &identity).await?;
    if state.attempts.is_locked(&user.email).await? {
        users::audit(
            &state.db,
            Audit {
                action: "oauth-login",
                outcome: "locked",
                user_id: Some(user.id),
                email: Some(&user.email),
                ip: Some(ip.clone()),
                user_agent: Some(&ua),
                ..Audit::default()
            },
        )
        .await;
        return Err(AuthError::InvalidCredentials);
    }
    let detail = serde_json::json!({ "provider": provider, "subject": identity.subject });
    let answer = after_first_factor(
        &state,
        &user,
        FirstFactor::Federated,
        (&ip, &ua),
        |outcome| Audit {
            action: "oauth-login",
            outcome,
            user_id: Some(user.id),
            email: Some(&user.email),
            ip: Some(ip.clone()),
            user_agent: Some(&ua),
            detail: Some(detail.clone()),
            ..Audit::default()
        },
    )
    .await?;
    let mut response = Json(answer).into_response();
    // The flow's cookie has done its job.
    let expired =
        format!("{COOKIE}=; Path=/auth/oauth/{provider}; HttpOnly; SameSite=Lax; Max-Age=0");
    if let Ok(value) = HeaderValue::try_from(expired) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The local user of `identity`: the one linked to it, else the one with
/// its (verified) email, linked now, else a new one without a password.
async fn local_user(
    state: &AppState,
    provider: &str,
    identity: &Identity,
) -> Result<User, AuthError> {
    if let Some(user) = users::by_identity(&state.db, provider, &identity.subject).await? {
        return Ok(user);
    }
    let email = match (&identity.email, identity.email_verified) {
        (Some(email), true) => email.trim().to_string(),
        _ => return Err(OidcError::UnverifiedEmail.into()),
    };
    super::check_email(&email)
        .map_err(|_| OidcError::Provider(format!("the email `{email}` is not an address")))?;
    let (user, created) = match users::by_email(&state.db, &email).await? {
        Some(user) => (user, false),
        None => match users::create(&state.db, &email, None, &state.settings.new_accounts).await {
            Ok(user) => (user, true),
            // Another callback made it at the same moment.
            Err(StoreError::EmailTaken) => (
                users::by_email(&state.db, &email)
                    .await?
                    .ok_or(AuthError::Unavailable(
                        "a user vanished while linking".into(),
                    ))?,
                false,
            ),
            Err(StoreError::Database(e)) => return Err(e.into()),
        },
    };
    let mut tx = state.db.begin().await?;
    users::link_identity(&mut *tx, provider, &identity.subject, user.id, Some(&email)).await?;
    users::audit_in(
        &mut *tx,
        Audit {
            action: if created {
                "oauth-signup"
            } else {
                "oauth-link"
            },
            outcome: "ok",
            user_id: Some(user.id),
            email: Some(&email),
            detail: Some(serde_json::json!({ "provider": provider, "subject": identity.subject })),
            ..Audit::default()
        },
    )
    .await?;
    tx.commit().await?;
    Ok(user)
}
