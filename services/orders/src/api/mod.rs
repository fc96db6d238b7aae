//! The HTTP API: handlers that read the request, check the caller's
//! permissions, call the domain modules, and answer. Every route is in the
//! OpenAPI document at `/openapi.json`.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tributary_kit::Problem;
use tributary_kit::jwt::Claims;
use tributary_kit::openapi::BearerScheme;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::{AppState, SourceLabels};
use crate::cache::{Entry, Kind};
use crate::db::{ReadFrom, unreachable};
use crate::error::OrdersError;
use crate::idempotency::{self, Keys};

mod orders;
mod products;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tributary orders",
        description = "Catalogue, orders with idempotency keys, pricing rules that explain themselves, and the payment saga. Every POST needs an Idempotency-Key. Errors are RFC 9457 problem+json."
    ),
    components(schemas(Problem)),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// Every route, with the OpenAPI document served at `/openapi.json`; every
/// POST goes through the idempotency layer.
pub fn router(state: AppState, keys: Keys) -> Router {
    let (router, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(orders::create))
        .routes(routes!(orders::list))
        .routes(routes!(orders::get))
        .routes(routes!(orders::cancel))
        .routes(routes!(orders::fulfil))
        .routes(routes!(products::create))
        .routes(routes!(products::list))
        .routes(routes!(products::get))
        .routes(routes!(products::restock))
        .routes(routes!(products::set_prices))
        .routes(routes!(products::set_segment))
        .routes(routes!(products::purge))
        .with_state(state)
        .split_for_parts();
    let mut document = document;
    utoipa::Modify::modify(&tributary_kit::openapi::CommonProblems, &mut document);
    utoipa::Modify::modify(&IdempotencyProblems, &mut document);
    let document = serde_json::to_value(&document).unwrap_or_default();
    router
        .layer(axum::middleware::from_fn_with_state(
            keys,
            idempotency::layer,
        ))
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { axum::Json(document.clone()) }),
        )
}

/// Documents the idempotency layer's header and answers on every POST.
struct IdempotencyProblems;

impl utoipa::Modify for IdempotencyProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{
            ContentBuilder, Object, Ref, RefOr, Required, ResponseBuilder, Type,
        };
        for item in openapi.paths.paths.values_mut() {
            let Some(post) = item.post.as_mut() else {
                continue;
            };
            let parameter = ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::True)
                .description(Some(
                    "A new random value per operation (1 to 255 visible ASCII characters); the same value when retrying it",
                ))
                .schema(Some(
                    Object::builder()
                        .schema_type(Type::String)
                        .min_length(Some(1))
                        .max_length(Some(255))
                        .pattern(Some("^[!-~]+$")),
                ))
                .build();
            post.parameters
                .get_or_insert_with(Vec::new)
                .push(RefOr::T(parameter));
            for (status, description) in [
                (
                    "400",
                    "The Idempotency-Key is missing or malformed, or the body is not JSON",
                ),
                (
                    "409",
                    "A request with this Idempotency-Key is in flight, or the request conflicts with the state",
                ),
                ("413", "The body is too large"),
                (
                    "422",
                    "The Idempotency-Key was used for another request, or a field is invalid",
                ),
                ("503", "A dependency is down; retry"),
            ] {
                if post.responses.responses.contains_key(status) {
                    continue;
                }
                let content = ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build();
                post.responses.responses.insert(
                    status.to_string(),
                    RefOr::T(
                        ResponseBuilder::new()
                            .description(description)
                            .content("application/problem+json", content)
                            .build(),
                    ),
                );
            }
        }
    }
}

/// 403 unless the token grants `permission`.
fn require(claims: &Claims, permission: &str) -> Result<(), OrdersError> {
    claims.require(permission).map_err(OrdersError::Problem)
}

/// 403 unless the caller is an admin.
fn require_admin(claims: &Claims) -> Result<(), OrdersError> {
    if claims.has_role("admin") {
        Ok(())
    } else {
        Err(OrdersError::Problem(tributary_kit::jwt::forbidden(
            "this needs the `admin` role",
        )))
    }
}

/// A JSON body answered as is (`body` is already serialised).
fn json_bytes(status: StatusCode, body: Arc<[u8]>) -> Response {
    let mut response = (status, body.to_vec()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A cached body served while PostgreSQL cannot answer: marked stale with
/// `Warning: 110` and its `Age`.
fn stale(entry: &Entry) -> Response {
    let mut response = json_bytes(StatusCode::OK, entry.body.clone());
    let headers = response.headers_mut();
    headers.insert(
        header::WARNING,
        HeaderValue::from_static("110 tributary-orders \"Response is Stale\""),
    );
    if let Ok(age) = HeaderValue::from_str(&entry.age().to_string()) {
        headers.insert(header::AGE, age);
    }
    response
}

/// What a read found.
enum Read {
    /// The current JSON body.
    Fresh(Arc<[u8]>),
    /// A cached body while the database cannot answer.
    Stale(Entry),
}

impl Read {
    fn body(&self) -> &[u8] {
        match self {
            Self::Fresh(body) => body,
            Self::Stale(entry) => &entry.body,
        }
    }

    fn into_response(self) -> Response {
        match self {
            Self::Fresh(body) => json_bytes(StatusCode::OK, body),
            Self::Stale(entry) => stale(&entry),
        }
    }
}

/// Reads through the cache: a fresh entry, else the database (a replica
/// that has the caller's last write, else the primary), else, while the
/// database cannot answer, a stale entry. `load` returns the row's version
/// and its JSON, or `None`.
async fn read_through<F, Fut>(
    state: &AppState,
    kind: Kind,
    id: &str,
    subject: Option<&str>,
    load: F,
) -> Result<Read, OrdersError>
where
    F: Fn(sqlx::PgPool) -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<Option<(i64, Vec<u8>)>>>,
{
    let count = |source: &'static str| {
        state
            .metrics
            .reads
            .get_or_create(&SourceLabels { source })
            .inc();
    };
    let last_write = match subject {
        Some(subject) => state.positions.last(subject).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "reading the caller's last write position failed; reading from the primary");
            Some(u64::MAX)
        }),
        None => None,
    };
    if let Some(entry) = state.cache.get(kind, id, last_write.is_some()).await {
        if !state.db.primary_up() {
            // It cannot be checked against the database now: say so.
            count("stale_cache");
            return Ok(Read::Stale(entry));
        }
        count("cache");
        return Ok(Read::Fresh(entry.body));
    }
    let mut tries = Vec::new();
    if state.db.has_replicas() {
        let (pool, from) = state.db.reader(last_write);
        if from != ReadFrom::Primary {
            tries.push((pool.clone(), from));
        }
    }
    if state.db.primary_up() {
        tries.push((state.db.primary().clone(), ReadFrom::Primary));
    }
    let mut saturated = false;
    for (pool, from) in tries {
        match load(pool).await {
            Ok(found) => {
                count(if from == ReadFrom::Primary {
                    "primary"
                } else {
                    "replica"
                });
                let Some((version, body)) = found else {
                    return Err(OrdersError::NotFound(kind_name(kind)));
                };
                let body: Arc<[u8]> = body.into();
                state.cache.put(kind, id, version, body.clone()).await;
                return Ok(Read::Fresh(body));
            }
            Err(sqlx::Error::PoolTimedOut) => saturated = true,
            Err(error) if unreachable(&error) => {
                tracing::warn!(%error, ?from, "a read failed; trying elsewhere");
                match from {
                    ReadFrom::Primary => state.db.primary_failed(),
                    replica => state.db.replica_failed(replica),
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    if saturated {
        // The databases are up and busy: an old answer is not called for.
        return Err(OrdersError::Overloaded);
    }
    match state.cache.get_even_stale(kind, id).await {
        Some(entry) => {
            count("stale_cache");
            Ok(Read::Stale(entry))
        }
        None => Err(OrdersError::Unavailable(
            "no database answers and nothing is cached".into(),
        )),
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Products => "product",
        Kind::Orders => "order",
    }
}

/// Refuses a write at once while the primary is down.
fn writable(state: &AppState) -> Result<(), OrdersError> {
    if state.db.primary_up() {
        Ok(())
    } else {
        Err(OrdersError::PrimaryDown)
    }
}

/// A write's database error: marks the primary down if it is unreachable.
fn write_failed(state: &AppState, error: sqlx::Error) -> OrdersError {
    if unreachable(&error) {
        state.db.primary_failed();
        OrdersError::PrimaryDown
    } else {
        error.into()
    }
}
