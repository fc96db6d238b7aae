//! Duplicate POSTs, across every instance (the IETF Idempotency-Key
//! draft): the first request with a key takes it in Redis (`SET NX`, for as
//! long as a request may take); a duplicate while it runs gets 409 at once,
//! one with another body (or path) gets 422, and one after it finished gets
//! the stored answer again with `Idempotent-Replayed: true`, for 24 hours.
//! Keys belong to the application (and the user, when there is one), so
//! two applications cannot collide. An answer that did not come from the
//! upstream (a timeout, a 5xx, a broken connection) frees the key: the
//! client may try again. With Redis away, requests pass without the check
//! (the upstream's own idempotency still holds) and the fact is logged.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on a replayed answer.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// How long a finished answer is kept.
const KEEP: Duration = Duration::from_secs(24 * 3600);
/// The largest answer kept for replay.
const MAX_STORED_BYTES: usize = 1024 * 1024;

/// Replaces (or, with no value, deletes) the key only while this request
/// still holds it: a request that outlived its hold must not touch the
/// next holder's key.
static IF_HELD: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

/// A stored answer.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    fingerprint: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// What the key says about a request.
#[derive(Debug)]
pub enum Claim {
    /// This request holds the key; [`Held::finish`] it.
    Held(Held),
    /// The same request is still running.
    InFlight,
    /// The key was used for another request.
    Mismatch,
    /// The stored answer of the same request.
    Replay(Response),
    /// Redis did not answer: go on unchecked.
    Unchecked,
}

/// A key this request holds.
#[derive(Debug)]
pub struct Held {
    redis: redis::aio::ConnectionManager,
    key: String,
    fingerprint: String,
}

/// The fingerprint of a request: method, target and body.
pub fn fingerprint(method: &http::Method, target: &str, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(method.as_str().as_bytes());
    hash.update([0]);
    hash.update(target.as_bytes());
    hash.update([0]);
    hash.update(body);
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Claims `key` (already scoped to its owner) for a request with
/// `fingerprint`, holding it for at most `hold`.
pub async fn claim(
    redis: &redis::aio::ConnectionManager,
    key: String,
    fingerprint: String,
    hold: Duration,
) -> Claim {
    let mut connection = redis.clone();
    let taken: redis::RedisResult<Option<String>> = redis::cmd("SET")
        .arg(&key)
        .arg(format!("p:{fingerprint}"))
        .arg("NX")
        .arg("PX")
        .arg(hold.as_millis() as u64)
        .query_async(&mut connection)
        .await;
    match taken {
        Ok(Some(_)) => {
            return Claim::Held(Held {
                redis: redis.clone(),
                key,
                fingerprint,
            });
        }
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(%error, "idempotency keys cannot be checked: Redis failed");
            return Claim::Unchecked;
        }
    }
    let current: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut connection)
        .await;
    match current {
        Ok(Some(value)) => {
            if let Some(running) = value.strip_prefix(b"p:") {
                if running == fingerprint.as_bytes() {
                    Claim::InFlight
                } else {
                    Claim::Mismatch
                }
            } else if let Some(done) = value.strip_prefix(b"d:") {
                match serde_json::from_slice::<Stored>(done) {
                    Ok(stored) if stored.fingerprint == fingerprint => {
                        Claim::Replay(replay(stored))
                    }
                    Ok(_) => Claim::Mismatch,
                    Err(_) => Claim::Unchecked,
                }
            } else {
                Claim::Unchecked
            }
        }
        // Freed between the two calls: the client may simply retry.
        Ok(None) => Claim::InFlight,
        Err(error) => {
            tracing::warn!(%error, "idempotency keys cannot be checked: Redis failed");
            Claim::Unchecked
        }
    }
}

fn replay(stored: Stored) -> Response {
    let mut response = Response::new(Body::from(stored.body));
    *response.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let headers: &mut HeaderMap = response.headers_mut();
    for (name, value) in stored.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.append(name, value);
        }
    }
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

impl Held {
    /// Stores the upstream's answer for replay (one too large to keep, or a
    /// 5xx, frees the key instead) and returns it.
    pub async fn finish(self, response: Response) -> Response {
        let (parts, body) = response.into_parts();
        if parts.status.is_server_error() {
            self.release().await;
            return Response::from_parts(parts, body);
        }
        let collected = http_body_util::Limited::new(body, MAX_STORED_BYTES)
            .collect()
            .await;
        let bytes: Bytes = match collected {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                tracing::warn!(%error, "an answer could not be kept for idempotent replay");
                self.release().await;
                let problem = crate::error::GatewayError::BadGateway {
                    upstream: "-".into(),
                    reason: "the answer was too large to keep for replay or broke off".into(),
                };
                return axum::response::IntoResponse::into_response(problem);
            }
        };
        let stored = Stored {
            fingerprint: self.fingerprint.clone(),
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .filter(|(name, _)| *name != http::header::CONTENT_LENGTH)
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                .collect(),
            body: bytes.to_vec(),
        };
        let mut value = b"d:".to_vec();
        value.extend(serde_json::to_vec(&stored).unwrap_or_default());
        if let Err(error) = self.replace(value).await {
            tracing::warn!(%error, "an answer could not be kept for idempotent replay");
        }
        Response::from_parts(parts, Body::from(bytes))
    }

    /// Frees the key (the request did not reach an answer worth keeping).
    pub async fn release(self) {
        if let Err(error) = self.replace(Vec::new()).await {
            tracing::warn!(%error, "an idempotency key could not be freed; it expires on its own");
        }
    }

    async fn replace(&self, value: Vec<u8>) -> redis::RedisResult<i64> {
        let mut connection = self.redis.clone();
        IF_HELD
            .key(&self.key)
            .arg(format!("p:{}", self.fingerprint))
            .arg(value)
            .arg(KEEP.as_millis() as u64)
            .invoke_async(&mut connection)
            .await
    }
}
