//! The admin API, on the admin listener beside `/healthz`, `/readyz` and
//! `/metrics`: issue, list and revoke API keys, see the routes in use and
//! purge the response cache. Every call needs an access token with the
//! `admin` role. Its OpenAPI document is at `/openapi.json` there.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tributary_kit::jwt::{Bearer, forbidden};
use tributary_kit::openapi::{BearerScheme, CommonProblems};
use tributary_kit::{Json, Path, Problem};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::app::Gateway;
use crate::keys::{self, KeySummary};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tributary gateway admin",
        description = "API keys (issued, listed, revoked), the routes in use and the response cache's purge, on the gateway's admin listener. Every call needs an access token with the admin role. Errors are RFC 9457 problem+json."
    ),
    components(schemas(Problem)),
    modifiers(&BearerScheme)
)]
struct AdminDoc;

/// What the admin handlers reach.
#[derive(Debug, Clone)]
pub struct Admin(Arc<Gateway>);

impl axum::extract::FromRef<Admin> for tributary_kit::jwt::Verifier {
    fn from_ref(admin: &Admin) -> Self {
        admin.0.verifier.clone()
    }
}

/// The admin routes, with their OpenAPI document at `/openapi.json`.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let (router, mut document) = OpenApiRouter::with_openapi(AdminDoc::openapi())
        .routes(routes!(list_keys, issue_key))
        .routes(routes!(revoke_key))
        .routes(routes!(route_table))
        .routes(routes!(purge))
        .with_state(Admin(gateway))
        .split_for_parts();
    utoipa::Modify::modify(&CommonProblems, &mut document);
    let document = serde_json::to_value(&document).unwrap_or_default();
    router.route(
        "/openapi.json",
        axum::routing::get(move || async move { axum::Json(document.clone()) }),
    )
}

fn admin(bearer: &Bearer) -> Result<(), Problem> {
    if bearer.0.has_role("admin") {
        Ok(())
    } else {
        Err(forbidden("the admin API needs the admin role"))
    }
}

fn store_failed(error: sqlx::Error) -> Problem {
    tracing::error!(%error, "the key store failed");
    Problem::unavailable("the key store is unavailable", 1)
}

/// A key to issue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct IssueKey {
    /// The application's name (1 to 200 characters, no control characters).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    name: String,
    /// Requests per minute (the gateway's default without it).
    #[schema(minimum = 1, maximum = 2147483647)]
    limit_per_minute: Option<u32>,
}

/// A key just issued: the only time the key itself is shown.
#[derive(Debug, Serialize, ToSchema)]
struct IssuedKey {
    id: Uuid,
    name: String,
    /// Its first characters, to tell keys apart later.
    prefix: String,
    limit_per_minute: u32,
    /// The key, shown once: only its hash is kept.
    key: String,
}

/// Issues a key; the answer is the only place its text appears.
#[utoipa::path(post, path = "/admin/keys", tag = "keys", request_body = IssueKey,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Issued", body = IssuedKey),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The key store is unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
async fn issue_key(
    State(Admin(gateway)): State<Admin>,
    bearer: Bearer,
    Json(body): Json<IssueKey>,
) -> Result<Response, Problem> {
    admin(&bearer)?;
    let limit = body
        .limit_per_minute
        .unwrap_or(gateway.settings.keys.default_limit_per_minute);
    let name = keys::check_new(&body.name, limit)
        .map_err(|invalid| Problem::invalid(invalid.field, invalid.reason))?;
    let (key, text) = gateway
        .keys
        .issue(name, limit)
        .await
        .map_err(store_failed)?;
    let issued = IssuedKey {
        id: key.id,
        name: key.name,
        prefix: key.prefix,
        limit_per_minute: key.limit_per_minute,
        key: text,
    };
    Ok((StatusCode::CREATED, axum::Json(issued)).into_response())
}

/// Every key issued, newest first, revoked ones with the time.
#[utoipa::path(get, path = "/admin/keys", tag = "keys", security(("bearer" = [])),
    responses(
        (status = 200, description = "The keys (never their text)", body = Vec<KeySummary>),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The key store is unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_keys(
    State(Admin(gateway)): State<Admin>,
    bearer: Bearer,
) -> Result<Response, Problem> {
    admin(&bearer)?;
    let keys = gateway.keys.list().await.map_err(store_failed)?;
    Ok(axum::Json(keys).into_response())
}

/// Revokes a key: refused at once on this instance, on every other within
/// its key cache time.
#[utoipa::path(delete, path = "/admin/keys/{id}", tag = "keys", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The key's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No key with this id is in use", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The key store is unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
async fn revoke_key(
    State(Admin(gateway)): State<Admin>,
    bearer: Bearer,
    Path(id): Path<Uuid>,
) -> Result<Response, Problem> {
    admin(&bearer)?;
    if gateway.keys.revoke(id).await.map_err(store_failed)? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::not_found().detail("no key with this id is in use"))
    }
}

/// The route table in use.
#[derive(Debug, Serialize, ToSchema)]
struct RouteTable {
    /// The route file's digest (changes with every reload that took).
    digest: String,
    /// The routes' names, in the order they are matched.
    routes: Vec<String>,
}

/// The route table in use (to check that a reload took).
#[utoipa::path(get, path = "/admin/routes", tag = "routes", security(("bearer" = [])),
    responses(
        (status = 200, description = "The routes in use", body = RouteTable),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin role", body = Problem, content_type = "application/problem+json"),
    ))]
async fn route_table(
    State(Admin(gateway)): State<Admin>,
    bearer: Bearer,
) -> Result<Response, Problem> {
    admin(&bearer)?;
    let table = gateway.table.load();
    Ok(axum::Json(RouteTable {
        digest: table.digest.clone(),
        routes: table.routes().iter().map(|r| r.name.to_string()).collect(),
    })
    .into_response())
}

/// What to purge.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Purge {
    /// Answers to paths starting with this; all without it.
    path_prefix: Option<String>,
}

/// What a purge did.
#[derive(Debug, Serialize, ToSchema)]
struct Purged {
    /// Answers dropped on this instance.
    purged_here: usize,
    /// Other instances told to purge alike.
    instances_told: i64,
}

/// Purges the response cache here and, through Redis, on every instance.
#[utoipa::path(post, path = "/admin/cache/purge", tag = "cache", request_body = Purge,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Purged", body = Purged),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Purged here, but the other instances could not be told", body = Problem, content_type = "application/problem+json"),
    ))]
async fn purge(
    State(Admin(gateway)): State<Admin>,
    bearer: Bearer,
    Json(body): Json<Purge>,
) -> Result<Response, Problem> {
    admin(&bearer)?;
    let prefix = body.path_prefix.unwrap_or_default();
    let purged_here = gateway
        .cache
        .purge((!prefix.is_empty()).then_some(prefix.as_str()));
    // Every other instance purges on the announcement.
    let mut redis = gateway.redis.clone();
    let announced: redis::RedisResult<i64> = redis::cmd("PUBLISH")
        .arg(gateway.purge_channel())
        .arg(&prefix)
        .query_async(&mut redis)
        .await;
    let instances_told = announced.map_err(|error| {
        tracing::warn!(%error, "a cache purge could not be announced to the other instances");
        Problem::unavailable("purged here, but the other instances could not be told", 1)
    })?;
    Ok(axum::Json(Purged {
        purged_here,
        instances_told,
    })
    .into_response())
}
