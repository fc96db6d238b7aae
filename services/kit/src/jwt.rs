//! Access tokens checked locally: the claims the auth service signs, and a
//! verifier that caches the auth service's JWKS, refetches it on an
//! unknown `kid` (at most once per `refetch_every`), refuses everything
//! RFC 8725 warns about (no `alg: none`, one algorithm per key so a public
//! key never verifies an HMAC, `typ` must be `at+jwt`, `iss`, `aud` and
//! `exp` required), and refuses tokens of revoked sessions as soon as the
//! revocation is published.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::problem::Problem;

/// The `typ` header of an access token (RFC 9068).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Claims {
    /// The user's id.
    pub user_id: String,
    /// The user's email.
    pub email: String,
    /// Roles (`admin`, `customer`).
    pub roles: Vec<String>,
    /// Permissions (`read:orders`).
    pub permissions: Vec<String>,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Expires at (seconds since the epoch).
    pub exp: i64,
    /// The issuer.
    pub iss: String,
    /// The audience.
    pub aud: String,
    /// This token's id.
    pub jti: String,
    /// The session (refresh token family) it belongs to.
    pub sid: String,
    /// How the user authenticated: `pwd`, `mfa`, `otp`, `ext`.
    pub amr: Vec<String>,
    /// When the user last authenticated (seconds since the epoch).
    pub auth_time: i64,
}

impl Claims {
    /// Whether the token grants `permission` (or the `admin` role).
    pub fn may(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission) || self.has_role("admin")
    }

    /// Whether the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// 403 unless the token grants `permission`.
    pub fn require(&self, permission: &str) -> Result<(), Problem> {
        if self.may(permission) {
            Ok(())
        } else {
            Err(forbidden(&format!(
                "this needs the `{permission}` permission"
            )))
        }
    }
}

/// 403 with `WWW-Authenticate: Bearer error="insufficient_scope"`.
pub fn forbidden(detail: &str) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
        .detail(detail)
        .header(
            header::WWW_AUTHENTICATE,
            &format!(
                "Bearer realm=\"tributary\", error=\"insufficient_scope\", error_description=\"{}\"",
                detail.replace('"', "'")
            ),
        )
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a JWT, or a header or claim that does not parse.
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// `typ` is not `at+jwt`.
    #[error("the token is not an access token (typ must be at+jwt)")]
    Type,
    /// No `kid`, or one the issuer does not publish.
    #[error("the token's key is unknown")]
    UnknownKey,
    /// `alg` is not the algorithm of the key it names.
    #[error("the token's algorithm is not allowed for its key")]
    Algorithm,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    Signature,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `iss` is not the issuer.
    #[error("the token's issuer is wrong")]
    Issuer,
    /// `aud` is not this audience.
    #[error("the token's audience is wrong")]
    Audience,
    /// A required claim is missing.
    #[error("the token lacks the `{0}` claim")]
    Missing(String),
    /// Its session was ended.
    #[error("the token's session was revoked")]
    Revoked,
}

/// Where keys come from and what tokens must say.
#[derive(Debug, Clone)]
pub struct VerifierSettings {
    /// The JWKS URL; `None` for keys given with [`Verifier::set_keys`] only.
    pub jwks_url: Option<String>,
    /// The required `iss`.
    pub issuer: String,
    /// The required `aud`.
    pub audience: String,
    /// The least time between two fetches caused by unknown `kid`s.
    pub refetch_every: Duration,
    /// How long a fetched JWKS is used before it is fetched again.
    pub max_age: Duration,
    /// Clock skew allowed on `exp`, in seconds.
    pub leeway_secs: u64,
}

impl VerifierSettings {
    /// Settings with the usual timings: refetch at most every 30 s, keys kept
    /// 5 minutes, 30 s of leeway.
    pub fn new(jwks_url: Option<String>, issuer: &str, audience: &str) -> Self {
        Self {
            jwks_url,
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            refetch_every: Duration::from_secs(30),
            max_age: Duration::from_secs(300),
            leeway_secs: 30,
        }
    }
}

struct VerifyKey {
    key: DecodingKey,
    algorithm: Algorithm,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    fetched: Option<Instant>,
}

/// Tokens already verified, so a repeated token costs a lookup, not a
/// signature check. Keyed by the whole token, so nothing but the exact
/// bytes that verified can hit. Bounded.
const VERIFIED_CAPACITY: usize = 100_000;

/// A cheap-to-clone token verifier.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    settings: VerifierSettings,
    keys: RwLock<Keys>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    http: reqwest::Client,
    revoked: Mutex<HashMap<String, i64>>,
    verified: Mutex<HashMap<Box<str>, Arc<Claims>>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier with no keys yet.
    pub fn new(settings: VerifierSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                keys: RwLock::default(),
                last_fetch: tokio::sync::Mutex::new(None),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap_or_default(),
                revoked: Mutex::default(),
                verified: Mutex::default(),
            }),
        }
    }

    /// Replaces the keys (the auth service gives its own; others fetch).
    /// Keys that are not asymmetric signing keys with an `alg` are ignored.
    pub fn set_keys(&self, set: &JwkSet) {
        let by_kid: HashMap<String, Arc<VerifyKey>> = set
            .keys
            .iter()
            .filter_map(|jwk| Some((jwk.common.key_id.clone()?, Arc::new(usable(jwk)?))))
            .collect();
        let mut keys = self.inner.keys.write().unwrap_or_else(|p| p.into_inner());
        let dropped = keys.by_kid.keys().any(|kid| !by_kid.contains_key(kid));
        keys.by_kid = by_kid;
        keys.fetched = Some(Instant::now());
        drop(keys);
        if dropped {
            self.verified().clear();
        }
    }

    /// The kids currently known.
    pub fn kids(&self) -> Vec<String> {
        let keys = self.inner.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.by_kid.keys().cloned().collect()
    }

    /// Marks session `sid` revoked until `until` (seconds since the epoch,
    /// the expiry of the last token it could have).
    pub fn revoke(&self, sid: &str, until: i64) {
        let now = now();
        let mut revoked = self.inner.revoked.lock().unwrap_or_else(|p| p.into_inner());
        if revoked.len() > 10_000 {
            revoked.retain(|_, until| *until > now);
        }
        revoked.insert(sid.to_string(), until);
    }

    fn is_revoked(&self, sid: &str) -> bool {
        let revoked = self.inner.revoked.lock().unwrap_or_else(|p| p.into_inner());
        revoked.get(sid).is_some_and(|until| *until > now())
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Arc<Claims>>> {
        self.inner
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `token` and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, VerifyError> {
        let leeway = self.inner.settings.leeway_secs as i64;
        let cached = self.verified().get(token).cloned();
        if let Some(claims) = cached {
            if claims.exp + leeway < now() {
                self.verified().remove(token);
                return Err(VerifyError::Expired);
            }
            if self.is_revoked(&claims.sid) {
                return Err(VerifyError::Revoked);
            }
            return Ok(claims);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        let typ_ok = header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE)
                || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if !typ_ok {
            return Err(VerifyError::Type);
        }
        let kid = header.kid.ok_or(VerifyError::UnknownKey)?;
        let key = self.key(&kid).await.ok_or(VerifyError::UnknownKey)?;
        if header.alg != key.algorithm {
            return Err(VerifyError::Algorithm);
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&self.inner.settings.issuer]);
        validation.set_audience(&[&self.inner.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
        validation.leeway = self.inner.settings.leeway_secs;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(refused)?;
        let claims = Arc::new(data.claims);
        if self.is_revoked(&claims.sid) {
            return Err(VerifyError::Revoked);
        }
        let mut verified = self.verified();
        if verified.len() >= VERIFIED_CAPACITY {
            let now = now();
            verified.retain(|_, c| c.exp + leeway >= now);
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
        }
        verified.insert(token.into(), claims.clone());
        Ok(claims)
    }

    /// The key for `kid`, fetching the JWKS when it is unknown or stale.
    async fn key(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        let (found, stale) = {
            let keys = self.inner.keys.read().unwrap_or_else(|p| p.into_inner());
            let stale = keys
                .fetched
                .is_none_or(|at| at.elapsed() > self.inner.settings.max_age);
            (keys.by_kid.get(kid).cloned(), stale)
        };
        if found.is_some() && !(stale && self.inner.settings.jwks_url.is_some()) {
            return found;
        }
        self.refetch(found.is_some()).await;
        let keys = self.inner.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.by_kid.get(kid).cloned()
    }

    /// Fetches the JWKS unless one was fetched within `refetch_every`
    /// (`max_age` when the key was found and only stale).
    async fn refetch(&self, only_stale: bool) {
        let Some(url) = &self.inner.settings.jwks_url else {
            return;
        };
        let mut last = self.inner.last_fetch.lock().await;
        let least = if only_stale {
            self.inner.settings.max_age
        } else {
            self.inner.settings.refetch_every
        };
        if last.is_some_and(|at| at.elapsed() < least) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch(url).await {
            Ok(set) => self.set_keys(&set),
            Err(error) => {
                tracing::warn!(%url, %error, "fetching the JWKS failed; keeping the keys known")
            }
        }
    }

    async fn fetch(&self, url: &str) -> Result<JwkSet, reqwest::Error> {
        self.inner
            .http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json::<JwkSet>()
            .await
    }

    /// Follows the revocations the auth service publishes on Redis (the
    /// sorted set `key` for those already made, the channel `key` for new
    /// ones), reconnecting until the process ends.
    pub fn follow_revocations(
        &self,
        redis: redis::Client,
        key: String,
    ) -> tokio::task::JoinHandle<()> {
        let verifier = self.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                match verifier.follow_once(&redis, &key).await {
                    Ok(()) => pause = Duration::from_millis(100),
                    Err(error) => {
                        tracing::warn!(%error, "following session revocations failed; retrying");
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
                tokio::time::sleep(pause).await;
            }
        })
    }

    async fn follow_once(&self, redis: &redis::Client, key: &str) -> redis::RedisResult<()> {
        use futures::StreamExt;
        let mut pubsub = redis.get_async_pubsub().await?;
        pubsub.subscribe(key).await?;
        // Subscribed first, then read what was already revoked: nothing falls between.
        let mut connection = redis.get_multiplexed_async_connection().await?;
        let known: Vec<(String, i64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(key)
            .arg(now())
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(&mut connection)
            .await?;
        for (sid, until) in known {
            self.revoke(&sid, until);
        }
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let payload: String = message.get_payload()?;
            if let Some((sid, until)) = payload.split_once(' ')
                && let Ok(until) = until.parse::<i64>()
            {
                self.revoke(sid, until);
            }
        }
        Ok(())
    }
}

/// A JWK this verifier accepts: an asymmetric key naming its algorithm.
fn usable(jwk: &Jwk) -> Option<VerifyKey> {
    use jsonwebtoken::jwk::KeyAlgorithm as Named;
    let algorithm = match jwk.common.key_algorithm? {
        Named::EdDSA => Algorithm::EdDSA,
        Named::ES256 => Algorithm::ES256,
        Named::ES384 => Algorithm::ES384,
        Named::RS256 => Algorithm::RS256,
        Named::RS384 => Algorithm::RS384,
        Named::RS512 => Algorithm::RS512,
        Named::PS256 => Algorithm::PS256,
        Named::PS384 => Algorithm::PS384,
        Named::PS512 => Algorithm::PS512,
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey { key, algorithm })
}

fn refused(error: jsonwebtoken::errors::Error) -> VerifyError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => VerifyError::Expired,
        ErrorKind::InvalidIssuer => VerifyError::Issuer,
        ErrorKind::InvalidAudience => VerifyError::Audience,
        ErrorKind::InvalidSignature => VerifyError::Signature,
        ErrorKind::InvalidAlgorithm => VerifyError::Algorithm,
        ErrorKind::MissingRequiredClaim(claim) => VerifyError::Missing(claim.clone()),
        // The claims are read into `Claims` before the required ones are
        // checked, so a missing one surfaces as serde's error.
        ErrorKind::Json(json) => {
            let text = json.to_string();
            match text
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split_once('`'))
            {
                Some((claim, _)) => VerifyError::Missing(claim.to_string()),
                None => VerifyError::Malformed(text),
            }
        }
        _ => VerifyError::Malformed(error.to_string()),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A request's verified access token (`Authorization: Bearer …`); a
/// missing or refused token is a 401 problem with `WWW-Authenticate`.
#[derive(Debug, Clone)]
pub struct Bearer(pub Arc<Claims>);

impl<S> FromRequestParts<S> for Bearer
where
    Verifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| unauthorized(None))?;
        let verifier = Verifier::from_ref(state);
        match verifier.verify(token).await {
            Ok(claims) => Ok(Bearer(claims)),
            Err(error) => Err(unauthorized(Some(&error))),
        }
    }
}

/// 401 with the RFC 6750 challenge.
pub fn unauthorized(error: Option<&VerifyError>) -> Problem {
    let problem = Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized");
    match error {
        None => problem
            .detail("send an access token: Authorization: Bearer <token>")
            .header(header::WWW_AUTHENTICATE, "Bearer realm=\"tributary\""),
        Some(error) => problem.detail(error.to_string()).header(
            header::WWW_AUTHENTICATE,
            &format!(
                "Bearer realm=\"tributary\", error=\"invalid_token\", error_description=\"{error}\""
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};

    const ISSUER: &str = "https://auth.test";
    const AUDIENCE: &str = "tributary";

    struct Key {
        kid: String,
        x: Vec<u8>,
        encoding: EncodingKey,
    }

    fn key(kid: &str) -> Key {
        let seed: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(31) ^ kid.len() as u8);
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&seed);
        Key {
            kid: kid.to_string(),
            x: signing.verifying_key().to_bytes().to_vec(),
            encoding: EncodingKey::from_ed_der(&der),
        }
    }

    fn jwks(keys: &[&Key]) -> JwkSet {
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| {
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                    "kid": k.kid, "x": URL_SAFE_NO_PAD.encode(&k.x)})
            })
            .collect();
        serde_json::from_value(serde_json::json!({ "keys": keys })).unwrap()
    }

    fn claims() -> serde_json::Value {
        let now = now();
        serde_json::json!({
            "user_id": "u1", "email": "a@b.c", "roles": ["customer"], "permissions": [],
            "iat": now, "exp": now + 3600, "iss": ISSUER, "aud": AUDIENCE, "jti": "j1",
            "sid": "s1", "amr": ["pwd"], "auth_time": now,
        })
    }

    fn header(key: &Key) -> Header {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYPE.into());
        header.kid = Some(key.kid.clone());
        header
    }

    fn sign(header: &Header, claims: &serde_json::Value, key: &EncodingKey) -> String {
        jsonwebtoken::encode(header, claims, key).unwrap()
    }

    fn verifier(keys: &[&Key]) -> Verifier {
        let verifier = Verifier::new(VerifierSettings::new(None, ISSUER, AUDIENCE));
        verifier.set_keys(&jwks(keys));
        verifier
    }

    #[tokio::test]
    async fn a_good_token_verifies_and_every_rfc_8725_trap_is_refused() {
        let good = key("good");
        let verifier = verifier(&[&good]);
        let token = sign(&header(&good), &claims(), &good.encoding);
        assert_eq!(verifier.verify(&token).await.unwrap().user_id, "u1");
        // Again, from the cache.
        assert_eq!(verifier.verify(&token).await.unwrap().sid, "s1");

        let body = token.split('.').nth(1).unwrap().to_string();
        let none = format!(
            "{}.{body}.",
            URL_SAFE_NO_PAD.encode(format!(
                r#"{{"alg":"none","typ":"at+jwt","kid":"{}"}}"#,
                good.kid
            ))
        );
        assert!(matches!(
            verifier.verify(&none).await,
            Err(VerifyError::Malformed(_))
        ));

        let mut hs = Header::new(Algorithm::HS256);
        hs.typ = Some(ACCESS_TOKEN_TYPE.into());
        hs.kid = Some(good.kid.clone());
        let confused = sign(&hs, &claims(), &EncodingKey::from_secret(&good.x));
        assert_eq!(
            verifier.verify(&confused).await.unwrap_err(),
            VerifyError::Algorithm
        );

        let mut wrong = claims();
        wrong["iss"] = "https://evil.test".into();
        let token = sign(&header(&good), &wrong, &good.encoding);
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            VerifyError::Issuer
        );

        let mut wrong = claims();
        wrong["aud"] = "someone-else".into();
        let token = sign(&header(&good), &wrong, &good.encoding);
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            VerifyError::Audience
        );

        let mut wrong = claims();
        wrong.as_object_mut().unwrap().remove("exp");
        let token = sign(&header(&good), &wrong, &good.encoding);
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            VerifyError::Missing("exp".into())
        );

        let mut wrong = claims();
        wrong["exp"] = (now() - 120).into();
        let token = sign(&header(&good), &wrong, &good.encoding);
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            VerifyError::Expired
        );

        let stranger = key("stranger");
        let token = sign(&header(&stranger), &claims(), &stranger.encoding);
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            VerifyError::UnknownKey
        );

        // A known kid, but signed by another key.
        let mut forged = header(&stranger);
        forged.kid = Some(good.kid.clone());
        let token = sign(&forged, &claims(), &stranger.encoding);
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            VerifyError::Signature
        );

        let mut typ = header(&good);
        typ.typ = Some("JWT".into());
        let token = sign(&typ, &claims(), &good.encoding);
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            VerifyError::Type
        );

        let mut no_kid = header(&good);
        no_kid.kid = None;
        let token = sign(&no_kid, &claims(), &good.encoding);
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            VerifyError::UnknownKey
        );

        // A tampered payload with the good signature.
        let token = sign(&header(&good), &claims(), &good.encoding);
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let mut altered = claims();
        altered["roles"] = serde_json::json!(["admin"]);
        parts[1] = URL_SAFE_NO_PAD.encode(altered.to_string());
        assert_eq!(
            verifier.verify(&parts.join(".")).await.unwrap_err(),
            VerifyError::Signature
        );
    }

    #[tokio::test]
    async fn a_revoked_session_is_refused_even_from_the_cache() {
        let good = key("good");
        let verifier = verifier(&[&good]);
        let token = sign(&header(&good), &claims(), &good.encoding);
        verifier.verify(&token).await.unwrap();
        verifier.revoke("s1", now() + 60);
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            VerifyError::Revoked
        );
    }

    #[tokio::test]
    async fn dropping_a_key_drops_the_tokens_it_verified() {
        let old = key("old");
        let new = key("new!");
        let verifier = verifier(&[&old, &new]);
        let token = sign(&header(&old), &claims(), &old.encoding);
        verifier.verify(&token).await.unwrap();
        verifier.set_keys(&jwks(&[&new]));
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            VerifyError::UnknownKey
        );
    }
}
