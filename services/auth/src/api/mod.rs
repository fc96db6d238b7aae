//! The HTTP API: handlers that read the request, call the domain modules,
//! and answer. Every route is in the OpenAPI document at `/openapi.json`.

use std::net::{IpAddr, SocketAddr};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tributary_kit::jwt::{ACCESS_TOKEN_TYPE, Bearer, Claims};
use tributary_kit::openapi::BearerScheme;
use tributary_kit::{Json, Path, Problem, Secret};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::app::{AppState, OutcomeLabels};
use crate::attempts::{Admission, Factor};
use crate::error::AuthError;
use crate::events::{Method, UserLoggedIn};
use crate::mfa::FirstFactor;
use crate::passwords::MAX_PASSWORD_BYTES;
use crate::sessions::{Grant, Refresh, SessionInfo};
use crate::users::{self, Audit, StoreError, User};

mod mfa;
mod oauth;
mod reset;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tributary auth",
        description = "Users, logins, access tokens every service verifies locally, refresh rotation, sessions and brute-force protection. Errors are RFC 9457 problem+json."
    ),
    components(schemas(Problem)),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// Every route, with the OpenAPI document served at `/openapi.json`.
pub fn router(state: AppState) -> Router {
    let (router, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(sign_up))
        .routes(routes!(login))
        .routes(routes!(mfa::login_second_step))
        .routes(routes!(mfa::enrol))
        .routes(routes!(mfa::confirm))
        .routes(routes!(mfa::disable))
        .routes(routes!(oauth::start))
        .routes(routes!(oauth::callback))
        .routes(routes!(reset::request_reset))
        .routes(routes!(reset::confirm_reset))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(sessions))
        .routes(routes!(end_session))
        .routes(routes!(set_access))
        .routes(routes!(unlock))
        .routes(routes!(rotate_keys))
        .routes(routes!(jwks))
        .routes(routes!(openid_configuration))
        .with_state(state)
        .split_for_parts();
    let mut document = document;
    utoipa::Modify::modify(&tributary_kit::openapi::CommonProblems, &mut document);
    let document = serde_json::to_value(&document).unwrap_or_default();
    router.route(
        "/openapi.json",
        axum::routing::get(move || async move { axum::Json(document.clone()) }),
    )
}

/// The client's address: the peer, or the right-most address in
/// `X-Forwarded-For` that a trusted proxy did not add.
pub(super) fn client_ip(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let trusted = &state.settings.trusted_proxies;
    if !trusted.contains(&peer.ip()) {
        return peer.ip();
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !trusted.contains(ip))
        .unwrap_or(peer.ip())
}

pub(super) fn user_agent(headers: &HeaderMap) -> &str {
    headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// `POST /auth/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SignUp {
    /// The email to log in with.
    email: String,
    /// 8 characters at least, 72 bytes at most.
    #[schema(value_type = String, format = Password)]
    password: Secret,
}

/// A user as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
struct UserView {
    id: Uuid,
    email: String,
    roles: Vec<String>,
    permissions: Vec<String>,
    mfa_enabled: bool,
    created_at: DateTime<Utc>,
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        Self {
            id: user.id,
            email: user.email,
            roles: user.roles,
            permissions: user.permissions,
            mfa_enabled: user.mfa_enabled,
            created_at: user.created_at,
        }
    }
}

/// An email that can receive mail: one `@`, a dotted domain, no spaces.
fn check_email(email: &str) -> Result<(), AuthError> {
    let invalid = |detail: &str| AuthError::Invalid {
        pointer: "/email",
        detail: detail.to_string(),
    };
    if email.len() > 254 {
        return Err(invalid("is longer than 254 characters"));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err(invalid("is not an email address (no @)"));
    };
    if local.is_empty()
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || email.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid("is not an email address"));
    }
    Ok(())
}

fn check_password(state: &AppState, password: &str) -> Result<(), AuthError> {
    let invalid = |detail: String| AuthError::Invalid {
        pointer: "/password",
        detail,
    };
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(invalid(format!(
            "is {} bytes long; at most {MAX_PASSWORD_BYTES} bytes are allowed, as bcrypt ignores the rest",
            password.len()
        )));
    }
    let min = state.settings.passwords.min_length;
    if password.chars().count() < min {
        return Err(invalid(format!("must be at least {min} characters long")));
    }
    if password.trim().is_empty() {
        return Err(invalid("must not be only spaces".into()));
    }
    Ok(())
}

/// Creates an account.
#[utoipa::path(post, path = "/auth/users", tag = "users", request_body = SignUp,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 409, description = "The email is taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Hashing is saturated or a dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
async fn sign_up(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<SignUp>,
) -> Result<impl IntoResponse, AuthError> {
    let email = body.email.trim().to_string();
    check_email(&email)?;
    check_password(&state, body.password.expose())?;
    let hash = state.hasher.hash(body.password).await?;
    let user =
        match users::create(&state.db, &email, Some(&hash), &state.settings.new_accounts).await {
            Ok(user) => user,
            Err(StoreError::EmailTaken) => return Err(AuthError::EmailTaken),
            Err(StoreError::Database(e)) => return Err(e.into()),
        };
    users::audit(
        &state.db,
        Audit {
            action: "signup",
            outcome: "ok",
            user_id: Some(user.id),
            email: Some(&email),
            ip: Some(client_ip(&state, peer, &headers).to_string()),
            user_agent: Some(user_agent(&headers)),
            ..Audit::default()
        },
    )
    .await;
    Ok((StatusCode::CREATED, Json(UserView::from(user))))
}

/// `POST /auth/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Login {
    email: String,
    #[schema(value_type = String, format = Password)]
    password: Secret,
}

/// Tokens for a client.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Tokens {
    /// A JWT (`typ: at+jwt`, EdDSA) for `Authorization: Bearer`.
    access_token: String,
    /// An opaque token for `POST /auth/refresh`; each use returns a new one.
    refresh_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: u64,
}

/// What a login answers: tokens, or a challenge for the second factor.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
enum LoginAnswer {
    /// Logged in.
    Tokens(Tokens),
    /// The password was right; now `POST /auth/login/mfa`.
    Mfa(mfa::Challenge),
}

/// Logs in with an email and password.
#[utoipa::path(post, path = "/auth/login", tag = "tokens", request_body = Login,
    responses(
        (status = 200, description = "Logged in, or a challenge for the second factor", body = LoginAnswer),
        (status = 401, description = "Wrong email or password (also for locked accounts)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Hashing is saturated or a dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<Login>,
) -> Result<Json<LoginAnswer>, AuthError> {
    let email = body.email.trim().to_string();
    if email.is_empty() || email.len() > 254 {
        return Err(AuthError::Invalid {
            pointer: "/email",
            detail: "must be an email address of at most 254 characters".into(),
        });
    }
    let ip = client_ip(&state, peer, &headers).to_string();
    let ua = user_agent(&headers).to_string();
    let (email_ref, ip_ref, ua_ref) = (email.as_str(), ip.as_str(), ua.as_str());
    let record = move |outcome: &'static str, user_id: Option<Uuid>| Audit {
        action: "login",
        outcome,
        user_id,
        email: Some(email_ref),
        ip: Some(ip_ref.to_string()),
        user_agent: Some(ua_ref),
        ..Audit::default()
    };
    let count = |outcome: &'static str| {
        state
            .metrics
            .logins
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    };
    let reservation = match state
        .attempts
        .admit(&email, &ip, Factor::Password, true)
        .await?
    {
        Admission::Go(reservation) => reservation,
        Admission::Limited(seconds) | Admission::Blocked(seconds) => {
            count("limited");
            users::audit(&state.db, record("limited", None)).await;
            return Err(AuthError::TooManyAttempts(seconds));
        }
        Admission::Locked => {
            count("locked");
            state.hasher.pretend().await;
            users::audit(&state.db, record("locked", None)).await;
            return Err(AuthError::InvalidCredentials);
        }
    };
    let user = users::by_email(&state.db, &email).await?;
    let matched = match user.as_ref().and_then(|u| u.password_hash.clone()) {
        Some(hash) => match state.hasher.verify(body.password, hash).await {
            Ok(matched) => matched,
            Err(busy) => {
                state.attempts.release(reservation).await?;
                return Err(busy.into());
            }
        },
        None => {
            state.hasher.pretend().await;
            false
        }
    };
    let user_id = user.as_ref().map(|u| u.id);
    let aftermath = state.attempts.finish(reservation, matched).await?;
    if aftermath.locked_now {
        state.metrics.lockouts.inc();
        tracing::warn!(user_id = ?user_id, "account locked after repeated failures");
        users::audit(
            &state.db,
            Audit {
                action: "lockout",
                ..record("locked", user_id)
            },
        )
        .await;
    }
    if aftermath.address_blocked_now {
        state.metrics.blocked_addresses.inc();
        tracing::warn!(%ip, "address blocked: failures across many accounts");
        users::audit(
            &state.db,
            Audit {
                action: "address-blocked",
                ..record("blocked", None)
            },
        )
        .await;
    }
    let user = match (user, matched) {
        (Some(user), true) => user,
        (Some(user), false) => {
            count("failed");
            let audit = record("failed", Some(user.id));
            record_failure(&state, &user, Method::Password, (&ip, &ua), audit).await;
            return Err(AuthError::InvalidCredentials);
        }
        (None, _) => {
            count("failed");
            users::audit(&state.db, record("failed", None)).await;
            return Err(AuthError::InvalidCredentials);
        }
    };
    let answer = after_first_factor(
        &state,
        &user,
        FirstFactor::Password,
        (&ip, &ua),
        |outcome| record(outcome, Some(user.id)),
    )
    .await?;
    count(match answer {
        LoginAnswer::Tokens(_) => "ok",
        LoginAnswer::Mfa(_) => "mfa-required",
    });
    Ok(Json(answer))
}

/// Ends a login whose first step `first` passed: a challenge for the
/// second factor if the user has one, otherwise a session and its tokens.
/// `record` makes the audit record of an outcome.
async fn after_first_factor<'a>(
    state: &AppState,
    user: &User,
    first: FirstFactor,
    (ip, ua): (&str, &str),
    record: impl Fn(&'static str) -> Audit<'a>,
) -> Result<LoginAnswer, AuthError> {
    if user.mfa_enabled {
        let prefix = &state.settings.redis_prefix;
        let mfa_token = crate::mfa::start_challenge(&state.redis, prefix, user.id, first).await?;
        users::audit(&state.db, record("mfa-required")).await;
        return Ok(LoginAnswer::Mfa(mfa::Challenge {
            mfa_required: true,
            mfa_token,
            expires_in: crate::mfa::CHALLENGE_TTL_SECS,
        }));
    }
    let method = match first {
        FirstFactor::Password => Method::Password,
        FirstFactor::Federated => Method::Oauth,
    };
    let amr = vec![first.amr().to_string()];
    let tokens = log_in(state, user, &amr, method, (ip, ua), record("ok")).await?;
    Ok(LoginAnswer::Tokens(tokens))
}

/// Starts a session for `user` and signs its tokens, with the audit record
/// and the `UserLoggedIn` event in one transaction: if it does not commit,
/// the session ends and the login fails (no event for a login that did not
/// happen).
async fn log_in(
    state: &AppState,
    user: &User,
    amr: &[String],
    method: Method,
    (ip, ua): (&str, &str),
    record: Audit<'_>,
) -> Result<Tokens, AuthError> {
    let account = crate::attempts::Attempts::account(&user.email);
    let (grant, refresh_token) = state.sessions.start(user.id, &account, amr, ip, ua).await?;
    let tokens = issue(state, user, &grant, refresh_token);
    let event = UserLoggedIn::new(
        user,
        method,
        Some(&grant.sid),
        amr.iter().any(|m| m == "mfa"),
        ip,
        ua,
        Utc::now(),
    );
    let recorded = async {
        let tokens = tokens?;
        let mut tx = state.db.begin().await?;
        users::audit_in(&mut *tx, record).await?;
        event.enqueue(&mut tx, &state.settings.events_topic).await?;
        tx.commit().await?;
        Ok::<_, AuthError>(tokens)
    }
    .await;
    if recorded.is_err()
        && let Err(error) = state.sessions.end(&grant.sid, Some(user.id)).await
    {
        tracing::error!(%error, sid = %grant.sid, "ending the session of a failed login failed");
    }
    recorded
}

/// Records a failed check of `user`'s credentials: the audit record and a
/// `UserLoggedIn` event with `success: false`, together. A failure to
/// record is logged, never the caller's failure.
async fn record_failure(
    state: &AppState,
    user: &User,
    method: Method,
    (ip, ua): (&str, &str),
    record: Audit<'_>,
) {
    let event = UserLoggedIn::new(user, method, None, false, ip, ua, Utc::now());
    let recorded = async {
        let mut tx = state.db.begin().await?;
        users::audit_in(&mut *tx, record).await?;
        event.enqueue(&mut tx, &state.settings.events_topic).await?;
        tx.commit().await
    }
    .await;
    if let Err(error) = recorded {
        tracing::error!(%error, user_id = %user.id, "recording a failed login failed");
    }
}

/// Signs an access token for `user` in the session `grant`.
pub(super) fn issue(
    state: &AppState,
    user: &User,
    grant: &Grant,
    refresh_token: String,
) -> Result<Tokens, AuthError> {
    let key = state.keys.current()?;
    let now = Utc::now().timestamp();
    let ttl = state.settings.tokens.access_ttl.as_secs();
    let claims = Claims {
        user_id: user.id.to_string(),
        email: user.email.clone(),
        roles: user.roles.clone(),
        permissions: user.permissions.clone(),
        iat: now,
        exp: now + ttl as i64,
        iss: state.settings.issuer.clone(),
        aud: state.settings.audience.clone(),
        jti: Uuid::new_v4().to_string(),
        sid: grant.sid.clone(),
        amr: grant.amr.clone(),
        auth_time: grant.auth_time,
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.typ = Some(ACCESS_TOKEN_TYPE.into());
    header.kid = Some(key.kid.clone());
    let access_token = jsonwebtoken::encode(&header, &claims, &key.key)
        .map_err(|e| AuthError::Unavailable(format!("signing: {e}")))?;
    Ok(Tokens {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: ttl,
    })
}

/// `POST /auth/refresh`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RefreshRequest {
    #[schema(value_type = String)]
    refresh_token: Secret,
}

/// Exchanges a refresh token for new tokens; the old one is spent.
#[utoipa::path(post, path = "/auth/refresh", tag = "tokens", request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens", body = Tokens),
        (status = 401, description = "The refresh token is invalid; reusing an old one ends its session", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
async fn refresh(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<RefreshRequest>,
) -> Result<Json<Tokens>, AuthError> {
    let count = |outcome: &'static str| {
        state
            .metrics
            .refreshes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    };
    match state.sessions.refresh(body.refresh_token.expose()).await? {
        Refresh::Issued { grant, token } => {
            let user = state.user_cache.by_id(&state.db, grant.user).await?;
            let Some(user) = user else {
                state.sessions.end(&grant.sid, None).await?;
                count("ended");
                return Err(AuthError::InvalidRefreshToken);
            };
            count("ok");
            Ok(Json(issue(&state, &user, &grant, token)?))
        }
        Refresh::Reused(grant) => {
            count("reused");
            state
                .verifier
                .revoke(&grant.sid, state.sessions.revoked_until());
            tracing::warn!(user_id = %grant.user, sid = %grant.sid, "a spent refresh token was reused: session revoked");
            users::audit(
                &state.db,
                Audit {
                    action: "token-reuse",
                    outcome: "revoked",
                    user_id: Some(grant.user),
                    ip: Some(client_ip(&state, peer, &headers).to_string()),
                    user_agent: Some(user_agent(&headers)),
                    detail: Some(serde_json::json!({ "sid": grant.sid })),
                    ..Audit::default()
                },
            )
            .await;
            Err(AuthError::InvalidRefreshToken)
        }
        Refresh::Locked => {
            count("locked");
            Err(AuthError::InvalidRefreshToken)
        }
        Refresh::Ended | Refresh::Unknown => {
            count("invalid");
            Err(AuthError::InvalidRefreshToken)
        }
    }
}

/// Ends the session of the access token.
#[utoipa::path(post, path = "/auth/logout", tag = "tokens", security(("bearer" = [])),
    responses(
        (status = 204, description = "The session ended"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn logout(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
) -> Result<StatusCode, AuthError> {
    end(&state, &claims, &claims.sid).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn end(state: &AppState, claims: &Claims, sid: &str) -> Result<bool, AuthError> {
    let user: Uuid = claims.user_id.parse().unwrap_or_default();
    let ended = state.sessions.end(sid, Some(user)).await?;
    if ended {
        state.verifier.revoke(sid, state.sessions.revoked_until());
        users::audit(
            &state.db,
            Audit {
                action: "logout",
                outcome: "ok",
                user_id: Some(user),
                detail: Some(serde_json::json!({ "sid": sid })),
                ..Audit::default()
            },
        )
        .await;
    }
    Ok(ended)
}

/// The user of the access token.
#[utoipa::path(get, path = "/auth/me", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn me(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
) -> Result<Json<UserView>, AuthError> {
    let id: Uuid = claims
        .user_id
        .parse()
        .map_err(|_| AuthError::NotFound("user"))?;
    let user = users::by_id(&state.db, id)
        .await?
        .ok_or(AuthError::NotFound("user"))?;
    Ok(Json(user.into()))
}

/// The live sessions of the access token's user.
#[utoipa::path(get, path = "/auth/sessions", tag = "sessions", security(("bearer" = [])),
    responses(
        (status = 200, description = "Live sessions, newest first", body = Vec<SessionInfo>),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn sessions(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
) -> Result<Json<Vec<SessionInfo>>, AuthError> {
    let user: Uuid = claims.user_id.parse().unwrap_or_default();
    Ok(Json(state.sessions.list(user).await?))
}

/// Ends one of the user's sessions.
#[utoipa::path(delete, path = "/auth/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session id")),
    responses(
        (status = 204, description = "The session ended"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such live session of this user", body = Problem, content_type = "application/problem+json"),
    ))]
async fn end_session(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    Path(id): Path<String>,
) -> Result<StatusCode, AuthError> {
    if end(&state, &claims, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AuthError::NotFound("session"))
    }
}

/// Admin actions need the `admin` role and a second factor within 15 minutes.
fn require_admin(claims: &Claims) -> Result<Uuid, AuthError> {
    if !claims.has_role("admin") {
        return Err(AuthError::Forbidden("this needs the `admin` role".into()));
    }
    let recent = Utc::now().timestamp() - claims.auth_time <= 15 * 60;
    if !(claims.amr.iter().any(|m| m == "mfa") && recent) {
        return Err(AuthError::StepUpRequired);
    }
    claims
        .user_id
        .parse()
        .map_err(|_| AuthError::Forbidden("the token's user id is not valid".into()))
}

/// `PUT /auth/admin/users/{id}/access`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Access {
    roles: Vec<String>,
    permissions: Vec<String>,
}

fn check_names(pointer: &'static str, names: &[String]) -> Result<(), AuthError> {
    for (i, name) in names.iter().enumerate() {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-:.".contains(&b));
        if !ok {
            return Err(AuthError::Invalid {
                pointer,
                detail: format!("entry {i} must be 1 to 64 letters, digits, `_`, `-`, `:` or `.`"),
            });
        }
    }
    Ok(())
}

/// Replaces a user's roles and permissions (admin, with a recent second factor).
#[utoipa::path(put, path = "/auth/admin/users/{id}/access", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user id")), request_body = Access,
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin, or no recent second factor", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid", body = Problem, content_type = "application/problem+json"),
    ))]
async fn set_access(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    Path(id): Path<Uuid>,
    Json(body): Json<Access>,
) -> Result<Json<UserView>, AuthError> {
    let actor = require_admin(&claims)?;
    check_names("/roles", &body.roles)?;
    check_names("/permissions", &body.permissions)?;
    let user = users::set_access(&state.db, id, &body.roles, &body.permissions)
        .await?
        .ok_or(AuthError::NotFound("user"))?;
    state.user_cache.forget(id);
    users::audit(
        &state.db,
        Audit {
            action: "admin-access",
            outcome: "ok",
            user_id: Some(id),
            actor_id: Some(actor),
            detail: Some(
                serde_json::json!({ "roles": body.roles, "permissions": body.permissions }),
            ),
            ..Audit::default()
        },
    )
    .await;
    Ok(Json(user.into()))
}

/// Clears a user's failed attempts and lock (admin, with a recent second factor).
#[utoipa::path(post, path = "/auth/admin/users/{id}/unlock", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user id")),
    responses(
        (status = 204, description = "Unlocked"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin, or no recent second factor", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    ))]
async fn unlock(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, AuthError> {
    let actor = require_admin(&claims)?;
    let user = users::by_id(&state.db, id)
        .await?
        .ok_or(AuthError::NotFound("user"))?;
    state.attempts.unlock(&user.email).await?;
    users::audit(
        &state.db,
        Audit {
            action: "admin-unlock",
            outcome: "ok",
            user_id: Some(id),
            actor_id: Some(actor),
            ..Audit::default()
        },
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// A signing key made by `POST /auth/admin/keys/rotate`.
#[derive(Debug, Serialize, ToSchema)]
struct Rotated {
    /// The new key's id (its RFC 7638 thumbprint).
    kid: String,
    /// When it starts signing: it is published until then, so verifiers
    /// have it before any token names it.
    signs_from: DateTime<Utc>,
}

/// Makes a new signing key now (admin, with a recent second factor); the
/// previous one stays published until its last token has expired.
#[utoipa::path(post, path = "/auth/admin/keys/rotate", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 201, description = "A new key, published now", body = Rotated),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin, or no recent second factor", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "PostgreSQL is down", body = Problem, content_type = "application/problem+json"),
    ))]
async fn rotate_keys(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
) -> Result<(StatusCode, Json<Rotated>), AuthError> {
    let actor = require_admin(&claims)?;
    let kid = state.keys.rotate().await?;
    let lead = chrono::TimeDelta::from_std(state.settings.keys.publish_lead).unwrap_or_default();
    users::audit(
        &state.db,
        Audit {
            action: "admin-rotate-keys",
            outcome: "ok",
            actor_id: Some(actor),
            detail: Some(serde_json::json!({ "kid": kid })),
            ..Audit::default()
        },
    )
    .await;
    tracing::info!(%kid, actor = %actor, "signing key rotated over HTTP");
    Ok((
        StatusCode::CREATED,
        Json(Rotated {
            kid,
            signs_from: Utc::now() + lead,
        }),
    ))
}

/// The public keys access tokens are signed with.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "discovery",
    responses((status = 200, description = "A JWK set (RFC 7517)")))]
async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(axum::http::header::CACHE_CONTROL, "public, max-age=60")],
        axum::Json(state.keys.jwks()),
    )
}

/// OpenID Provider metadata, so that standard clients find the keys.
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "discovery",
    responses((status = 200, description = "Provider metadata (OpenID Connect Discovery)")))]
async fn openid_configuration(State(state): State<AppState>) -> impl IntoResponse {
    let issuer = state.settings.issuer.trim_end_matches('/');
    axum::Json(serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "token_endpoint": format!("{issuer}/auth/login"),
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "claims_supported": ["user_id", "email", "roles", "permissions", "iat", "exp", "iss", "aud", "jti", "sid", "amr", "auth_time"],
    }))
}
