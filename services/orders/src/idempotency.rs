//! Idempotency keys on every POST, per the IETF draft
//! (draft-ietf-httpapi-idempotency-key-header): the first request with a
//! key runs and its answer is stored with a fingerprint of the request;
//! the same key and request again get the stored answer with
//! `Idempotent-Replayed: true`; the same key with another request is a
//! 422; while the first is still running, a 409 at once. Keys belong to
//! the caller (the token's user) and are forgotten after 24 hours.
//!
//! A handler whose request changes something stores its answer in its own
//! transaction ([`Lease::record`]), so that a crash can never leave the
//! change without the answer (and a retry that makes the change again).
//! Answers of requests that change nothing are stored after the handler.
//! Server errors are not stored: the key is freed for a retry. A request
//! that dies without an answer leaves its key in flight for 10 s, after
//! which a retry takes it over.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use tributary_kit::jwt::Verifier;
use uuid::Uuid;

use crate::db::Database;
use crate::error::OrdersError;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The header on a replayed answer.
pub const REPLAYED: &str = "idempotent-replayed";
/// How long a request may run before a retry may take its key over (a
/// request that has not answered by then died or is stuck on a lock).
const IN_FLIGHT: Duration = Duration::from_secs(10);
/// The largest body the layer reads.
const MAX_BODY: usize = 1024 * 1024;

/// A key held by the request running now.
#[derive(Debug, Clone)]
pub struct Lease {
    subject: String,
    key: String,
    token: Uuid,
}

/// Marks an answer its handler stored in its own transaction.
#[derive(Debug, Clone, Copy)]
pub struct Recorded;

impl Lease {
    /// Stores the answer in the caller's transaction. Fails with
    /// [`OrdersError::KeyInFlight`] when the lease was lost (the request
    /// ran past 10 s and a retry took the key): roll back.
    pub async fn record(
        &self,
        tx: &mut PgConnection,
        status: StatusCode,
        body: &[u8],
        location: Option<&str>,
    ) -> Result<(), OrdersError> {
        let stored = sqlx::query(
            "UPDATE idempotency_keys SET status = $4, content_type = $5, location = $6, body = $7, \
             in_flight_until = NULL, lease = NULL \
             WHERE subject = $1 AND key = $2 AND lease = $3 AND status IS NULL",
        )
        .bind(&self.subject)
        .bind(&self.key)
        .bind(self.token)
        .bind(status.as_u16() as i16)
        .bind(content_type(status))
        .bind(location)
        .bind(body)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if stored == 1 {
            Ok(())
        } else {
            Err(OrdersError::KeyInFlight)
        }
    }
}

fn content_type(status: StatusCode) -> &'static str {
    if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    }
}

/// What the layer needs.
#[derive(Debug, Clone)]
pub struct Keys {
    database: Database,
    db: PgPool,
    verifier: Verifier,
    ttl: Duration,
}

impl Keys {
    /// Keys in the primary's `idempotency_keys`, kept `ttl`, per
    /// `verifier`'s user.
    pub fn new(database: Database, verifier: Verifier, ttl: Duration) -> Self {
        Self {
            db: database.primary().clone(),
            database,
            verifier,
            ttl,
        }
    }

    /// Deletes keys older than the TTL, every minute.
    pub fn expire(&self) -> tokio::task::JoinHandle<()> {
        let keys = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let deleted = sqlx::query(
                    "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
                )
                .bind(keys.ttl.as_secs_f64())
                .execute(&keys.db)
                .await;
                if let Err(error) = deleted {
                    tracing::warn!(%error, "expiring idempotency keys failed");
                }
            }
        })
    }
}

/// A key's row: fingerprint, status, content type, location, body.
type StoredRow = (
    Vec<u8>,
    Option<i16>,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
);

enum Begin {
    Fresh(Lease),
    Replay {
        status: i16,
        content_type: Option<String>,
        location: Option<String>,
        body: Vec<u8>,
    },
    InFlight,
    Reused,
}

impl Keys {
    async fn begin(&self, subject: &str, key: &str, fingerprint: &[u8]) -> sqlx::Result<Begin> {
        let token = Uuid::new_v4();
        // A new key, an expired one, or one whose request died in flight
        // (same request only) is taken; anything else is looked at.
        let taken: Option<i32> = sqlx::query_scalar(
            "INSERT INTO idempotency_keys (subject, key, fingerprint, in_flight_until, lease) \
             VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5) \
             ON CONFLICT (subject, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, status = NULL, \
               content_type = NULL, location = NULL, body = NULL, in_flight_until = EXCLUDED.in_flight_until, \
               lease = EXCLUDED.lease, created_at = now() \
             WHERE idempotency_keys.created_at < now() - make_interval(secs => $6) \
                OR (idempotency_keys.status IS NULL AND idempotency_keys.in_flight_until < now() \
                    AND idempotency_keys.fingerprint = EXCLUDED.fingerprint) \
             RETURNING 1",
        )
        .bind(subject)
        .bind(key)
        .bind(fingerprint)
        .bind(IN_FLIGHT.as_secs_f64())
        .bind(token)
        .bind(self.ttl.as_secs_f64())
        .fetch_optional(&self.db)
        .await?;
        if taken.is_some() {
            return Ok(Begin::Fresh(Lease {
                subject: subject.to_string(),
                key: key.to_string(),
                token,
            }));
        }
        let row: Option<StoredRow> = sqlx::query_as(
            "SELECT fingerprint, status, content_type, location, body FROM idempotency_keys \
                 WHERE subject = $1 AND key = $2",
        )
        .bind(subject)
        .bind(key)
        .fetch_optional(&self.db)
        .await?;
        Ok(match row {
            // Deleted between the two statements (freed after an error): busy.
            None => Begin::InFlight,
            Some((first, _, _, _, _)) if first != fingerprint => Begin::Reused,
            Some((_, Some(status), content_type, location, body)) => Begin::Replay {
                status,
                content_type,
                location,
                body: body.unwrap_or_default(),
            },
            Some(_) => Begin::InFlight,
        })
    }

    async fn store_after(
        &self,
        lease: &Lease,
        status: StatusCode,
        body: &[u8],
    ) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE idempotency_keys SET status = $4, content_type = $5, body = $6, \
             in_flight_until = NULL, lease = NULL \
             WHERE subject = $1 AND key = $2 AND lease = $3 AND status IS NULL",
        )
        .bind(&lease.subject)
        .bind(&lease.key)
        .bind(lease.token)
        .bind(status.as_u16() as i16)
        .bind(content_type(status))
        .bind(body)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    async fn free(&self, lease: &Lease) -> sqlx::Result<()> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE subject = $1 AND key = $2 AND lease = $3 AND status IS NULL",
        )
        .bind(&lease.subject)
        .bind(&lease.key)
        .bind(lease.token)
        .execute(&self.db)
        .await?;
        Ok(())
    }
}

/// The request's fingerprint: method, path and body (JSON canonicalised,
/// so key order and spacing do not matter).
fn fingerprint(method: &Method, path: &str, body: &[u8]) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(method.as_str().as_bytes());
    hash.update(b" ");
    hash.update(path.as_bytes());
    hash.update(b"\n");
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => hash.update(canonical(&value).as_bytes()),
        Err(_) => hash.update(body),
    }
    hash.finalize().to_vec()
}

fn canonical(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<_> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        serde_json::Value::from(k.as_str()),
                        canonical(&map[k])
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        serde_json::Value::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(canonical).collect::<Vec<_>>().join(",")
            )
        }
        other => other.to_string(),
    }
}

/// A valid key: 1 to 255 visible ASCII characters (a quoted string as the
/// draft's structured field is accepted and unquoted).
fn parse_key(value: &HeaderValue) -> Result<String, OrdersError> {
    let invalid = |detail: &str| OrdersError::InvalidHeader {
        header: "Idempotency-Key",
        detail: detail.to_string(),
    };
    let text = value
        .to_str()
        .map_err(|_| invalid("must be visible ASCII"))?;
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if text.is_empty() || text.len() > 255 {
        return Err(invalid("must be 1 to 255 characters long"));
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("must be visible ASCII without spaces"));
    }
    Ok(text.to_string())
}

/// The layer: applies to every POST of the routes it wraps.
pub async fn layer(State(keys): State<Keys>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let token = bearer(&request);
    let subject = match token {
        Some(token) => keys
            .verifier
            .verify(&token)
            .await
            .ok()
            .map(|c| c.user_id.clone()),
        None => None,
    };
    let Some(subject) = subject else {
        // The handler answers 401.
        return next.run(request).await;
    };
    let key = match request.headers().get(HEADER) {
        Some(value) => match parse_key(value) {
            Ok(key) => key,
            Err(error) => return error.into_response(),
        },
        None => {
            return OrdersError::InvalidHeader {
                header: "Idempotency-Key",
                detail: "every POST needs one (a new random value per operation; the same value when retrying it)".into(),
            }
            .into_response();
        }
    };
    if !keys.database.primary_up() {
        return OrdersError::PrimaryDown.into_response();
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return tributary_kit::Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "The body is too large",
            )
            .detail(format!("at most {MAX_BODY} bytes"))
            .into_response();
        }
    };
    let print = fingerprint(&parts.method, parts.uri.path(), &bytes);
    let lease = match keys.begin(&subject, &key, &print).await {
        Ok(Begin::Fresh(lease)) => lease,
        Ok(Begin::Replay {
            status,
            content_type,
            location,
            body,
        }) => return replay(status, content_type, location, body),
        Ok(Begin::InFlight) => return OrdersError::KeyInFlight.into_response(),
        Ok(Begin::Reused) => return OrdersError::KeyReused.into_response(),
        Err(error) => {
            if crate::db::unreachable(&error) {
                keys.database.primary_failed();
                return OrdersError::PrimaryDown.into_response();
            }
            return OrdersError::from(error).into_response();
        }
    };
    let mut request = Request::from_parts(parts, Body::from(bytes));
    request.extensions_mut().insert(lease.clone());
    let response = next.run(request).await;
    if response.extensions().get::<Recorded>().is_some() {
        return response;
    }
    let status = response.status();
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        if let Err(error) = keys.free(&lease).await {
            tracing::warn!(%error, "freeing an idempotency key failed; it frees itself in 10 s");
        }
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    if let Err(error) = keys.store_after(&lease, status, &bytes).await {
        tracing::warn!(%error, "storing an idempotent answer failed; a retry runs again");
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn bearer(request: &Request) -> Option<String> {
    let (scheme, token) = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

fn replay(
    status: i16,
    content_type: Option<String>,
    location: Option<String>,
    body: Vec<u8>,
) -> Response {
    let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    if let Some(value) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Some(value) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_ignore_key_order_and_spacing_but_not_values() {
        let a = fingerprint(&Method::POST, "/o", br#"{"a":1,"b":[1,{"c":2,"d":3}]}"#);
        let b = fingerprint(
            &Method::POST,
            "/o",
            br#"{ "b": [1, {"d":3, "c":2}], "a": 1 }"#,
        );
        let c = fingerprint(&Method::POST, "/o", br#"{"a":2,"b":[1,{"c":2,"d":3}]}"#);
        let d = fingerprint(&Method::POST, "/p", br#"{"a":1,"b":[1,{"c":2,"d":3}]}"#);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        let ok = |s: &str| parse_key(&HeaderValue::from_str(s).unwrap());
        assert_eq!(ok("abc-123").unwrap(), "abc-123");
        assert_eq!(ok("\"8e03978e-40d5\"").unwrap(), "8e03978e-40d5");
        assert!(ok("").is_err());
        assert!(ok("a b").is_err());
        assert!(ok(&"x".repeat(256)).is_err());
    }
}
