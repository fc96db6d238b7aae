//! The admin API, on the admin listener beside `/healthz`, `/readyz` and
//! `/metrics`: issue, list and revoke API keys, and see the routes in use.
//! Every call needs an access token with the `admin` role.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Deserialize;
use tributary_kit::jwt::{Bearer, forbidden};
use tributary_kit::{Json, Path, Problem};
use uuid::Uuid;

use crate::app::Gateway;

/// What the admin handlers reach.
#[derive(Debug, Clone)]
pub struct Admin(Arc<Gateway>);

impl axum::extract::FromRef<Admin> for tributary_kit::jwt::Verifier {
    fn from_ref(admin: &Admin) -> Self {
        admin.0.verifier.clone()
    }
}

/// The admin routes.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let gateway = Admin(gateway);
    Router::new()
        .route("/admin/keys", get(list_keys).post(issue_key))
        .route("/admin/keys/{id}", delete(revoke_key))
        .route("/admin/routes", get(routes))
        .route("/admin/cache/purge", axum::routing::post(purge))
        .with_state(gateway)
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueKey {
    name: String,
    limit_per_minute: Option<u32>,
}

async fn issue_key(
    State(Admin(gateway)): State<Admin>,
    bearer: Bearer,
    Json(body): Json<IssueKey>,
) -> Result<Response, Problem> {
    admin(&bearer)?;
    let name = body.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(Problem::invalid("/name", "must be 1 to 200 characters"));
    }
    if body.limit_per_minute == Some(0) {
        return Err(Problem::invalid("/limit_per_minute", "must be above zero"));
    }
    let limit = body
        .limit_per_minute
        .unwrap_or(gateway.settings.keys.default_limit_per_minute);
    let (key, text) = gateway
        .keys
        .issue(name, limit)
        .await
        .map_err(store_failed)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({
            "id": key.id,
            "name": key.name,
            "prefix": key.prefix,
            "limit_per_minute": key.limit_per_minute,
            "key": text,
        })),
    )
        .into_response())
}

async fn list_keys(
    State(Admin(gateway)): State<Admin>,
    bearer: Bearer,
) -> Result<Response, Problem> {
    admin(&bearer)?;
    let keys = gateway.keys.list().await.map_err(store_failed)?;
    Ok(axum::Json(keys).into_response())
}

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

async fn routes(State(Admin(gateway)): State<Admin>, bearer: Bearer) -> Result<Response, Problem> {
    admin(&bearer)?;
    let table = gateway.table.load();
    let routes: Vec<&str> = table.routes().iter().map(|r| &*r.name).collect();
    Ok(axum::Json(serde_json::json!({ "digest": table.digest, "routes": routes })).into_response())
}

/// What to purge.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Purge {
    /// Answers to paths starting with this; all without it.
    path_prefix: Option<String>,
}

async fn purge(
    State(Admin(gateway)): State<Admin>,
    bearer: Bearer,
    Json(body): Json<Purge>,
) -> Result<Response, Problem> {
    admin(&bearer)?;
    let prefix = body.path_prefix.unwrap_or_default();
    let here = gateway
        .cache
        .purge((!prefix.is_empty()).then_some(prefix.as_str()));
    // Every other instance purges on the announcement.
    let mut redis = gateway.redis.clone();
    let announced: redis::RedisResult<i64> = redis::cmd("PUBLISH")
        .arg(gateway.purge_channel())
        .arg(&prefix)
        .query_async(&mut redis)
        .await;
    let instances = announced.map_err(|error| {
        tracing::warn!(%error, "a cache purge could not be announced to the other instances");
        Problem::unavailable("purged here, but the other instances could not be told", 1)
    })?;
    Ok(
        axum::Json(serde_json::json!({ "purged_here": here, "instances_told": instances }))
            .into_response(),
    )
}
