//! Logging in through external OpenID Connect providers: the service is a
//! client using the authorization code flow with PKCE (S256), `state` and
//! `nonce`. Each provider's metadata comes from discovery on its issuer
//! URL; its ID tokens are checked against its JWKS (signature with an
//! asymmetric algorithm its key allows, `iss`, `aud`, `azp`, `exp`, `iat`,
//! `nonce`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::random;
use crate::settings::OidcProviderSettings;

/// How long a started login may take at the provider.
pub const FLOW_TTL_SECS: u64 = 600;
/// How long discovered metadata is kept.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// A provider's JWKS is refetched for an unknown `kid` at most this often.
const JWKS_REFETCH: Duration = Duration::from_secs(30);

/// Why an external login failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// No provider of that name is configured.
    #[error("no provider `{0}`")]
    UnknownProvider(String),
    /// The provider could not be reached or answered nonsense.
    #[error("the provider failed: {0}")]
    Provider(String),
    /// The provider refused (the user declined, for instance).
    #[error("the provider answered `{0}`")]
    Denied(String),
    /// The ID token failed a check.
    #[error("the ID token is invalid: {0}")]
    InvalidIdToken(String),
    /// `state` is unknown, used, expired, for another provider, or not this browser's.
    #[error("the login state is invalid or expired")]
    InvalidState,
    /// The provider does not vouch for the email.
    #[error("the provider has not verified the email")]
    UnverifiedEmail,
    /// Redis failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Provider metadata (OpenID Connect Discovery 1.0), the parts used.
#[derive(Debug, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    code_challenge_methods_supported: Vec<String>,
}

#[derive(Default)]
struct Cache {
    metadata: Option<(Instant, Arc<Metadata>)>,
    keys: Option<(Instant, Arc<JwkSet>)>,
}

struct Provider {
    settings: OidcProviderSettings,
    cache: Mutex<Cache>,
}

/// The configured providers.
#[derive(Clone)]
pub struct Providers {
    http: reqwest::Client,
    providers: Arc<HashMap<String, Provider>>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("names", &self.providers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Whether `url` is https, or http to this machine (development and tests).
fn acceptable_url(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    match parsed.scheme() {
        "https" => true,
        "http" => matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")),
        _ => false,
    }
}

/// A user as the provider vouches for them.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The provider's stable id of the user (`sub`).
    pub subject: String,
    /// Their email, if the provider shares it.
    pub email: Option<String>,
    /// Whether the provider verified it.
    pub email_verified: bool,
}

/// A login in progress, kept in Redis under its `state`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Flow {
    /// The provider it was started with.
    pub provider: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// The PKCE code verifier.
    pub verifier: String,
    /// The digest of the cookie that ties it to the browser that started it.
    pub browser: String,
}

impl Flow {
    /// A new flow for `provider` and its browser cookie's value.
    pub fn new(provider: &str, cookie: &str) -> Self {
        Self {
            provider: provider.to_string(),
            nonce: URL_SAFE_NO_PAD.encode(random::bytes::<24>()),
            verifier: URL_SAFE_NO_PAD.encode(random::bytes::<32>()),
            browser: random::digest(cookie),
        }
    }

    /// The PKCE S256 challenge of the verifier.
    pub fn challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.verifier.as_bytes()))
    }

    /// Keeps the flow under `state` for [`FLOW_TTL_SECS`].
    pub async fn save(
        &self,
        redis: &ConnectionManager,
        prefix: &str,
        state: &str,
    ) -> redis::RedisResult<()> {
        let mut connection = redis.clone();
        redis::cmd("SET")
            .arg(format!("{prefix}oidc-flow:{}", random::digest(state)))
            .arg(serde_json::to_string(self).unwrap_or_default())
            .arg("EX")
            .arg(FLOW_TTL_SECS)
            .query_async(&mut connection)
            .await
    }

    /// Takes the flow of `state` (once: a second callback finds nothing),
    /// if it was started for `provider` by the browser holding `cookie`.
    pub async fn take(
        redis: &ConnectionManager,
        prefix: &str,
        state: &str,
        provider: &str,
        cookie: Option<&str>,
    ) -> Result<Flow, OidcError> {
        if state.is_empty() || state.len() > 256 {
            return Err(OidcError::InvalidState);
        }
        let mut connection = redis.clone();
        let stored: Option<String> = redis::cmd("GETDEL")
            .arg(format!("{prefix}oidc-flow:{}", random::digest(state)))
            .query_async(&mut connection)
            .await?;
        let flow: Flow = stored
            .and_then(|s| serde_json::from_str(&s).ok())
            .ok_or(OidcError::InvalidState)?;
        let same_browser = cookie.is_some_and(|c| random::digest(c) == flow.browser);
        if flow.provider != provider || !same_browser {
            return Err(OidcError::InvalidState);
        }
        Ok(flow)
    }
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
    access_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(serde::de::IgnoredAny),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Flag {
    Bool(bool),
    Text(String),
}

#[derive(Debug, Deserialize)]
struct IdClaims {
    sub: String,
    aud: Audience,
    nonce: Option<String>,
    azp: Option<String>,
    email: Option<String>,
    email_verified: Option<Flag>,
}

/// The asymmetric algorithms an ID token may use; never `none` or HMAC.
const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Providers {
    /// The providers of the settings; refuses an issuer or redirect URI
    /// that is neither https nor http to this machine.
    pub fn new(settings: &BTreeMap<String, OidcProviderSettings>) -> Result<Self, String> {
        let mut providers = HashMap::new();
        for (name, provider) in settings {
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !valid_name {
                return Err(format!(
                    "oidc.{name}: a provider's name is 1 to 64 letters, digits, `-` or `_` (it is part of URLs)"
                ));
            }
            for (key, url) in [
                ("issuer", &provider.issuer),
                ("redirect_uri", &provider.redirect_uri),
            ] {
                if !acceptable_url(url) {
                    return Err(format!(
                        "oidc.{name}.{key}: `{url}` must be an https URL (http only to localhost)"
                    ));
                }
            }
            providers.insert(
                name.clone(),
                Provider {
                    settings: provider.clone(),
                    cache: Mutex::new(Cache::default()),
                },
            );
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("the HTTP client: {e}"))?;
        Ok(Self {
            http,
            providers: Arc::new(providers),
        })
    }

    /// The issuer of provider `name`.
    pub fn issuer(&self, name: &str) -> Option<&str> {
        self.providers.get(name).map(|p| p.settings.issuer.as_str())
    }

    fn provider(&self, name: &str) -> Result<&Provider, OidcError> {
        self.providers
            .get(name)
            .ok_or_else(|| OidcError::UnknownProvider(name.to_string()))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, OidcError> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| OidcError::Provider(format!("GET {url}: {e}")))?;
        if !response.status().is_success() {
            return Err(OidcError::Provider(format!(
                "GET {url}: {}",
                response.status()
            )));
        }
        response
            .json()
            .await
            .map_err(|e| OidcError::Provider(format!("GET {url}: {e}")))
    }

    async fn metadata(&self, provider: &Provider) -> Result<Arc<Metadata>, OidcError> {
        if let Some((at, metadata)) = &lock(&provider.cache).metadata
            && at.elapsed() < METADATA_TTL
        {
            return Ok(metadata.clone());
        }
        let issuer = provider.settings.issuer.trim_end_matches('/');
        let url = format!("{issuer}/.well-known/openid-configuration");
        let metadata: Metadata = self.get_json(&url).await?;
        if metadata.issuer != provider.settings.issuer {
            return Err(OidcError::Provider(format!(
                "discovery names the issuer `{}`, not `{}`",
                metadata.issuer, provider.settings.issuer
            )));
        }
        let methods = &metadata.code_challenge_methods_supported;
        if !methods.is_empty() && !methods.iter().any(|m| m == "S256") {
            return Err(OidcError::Provider(
                "the provider does not support PKCE with S256".into(),
            ));
        }
        let metadata = Arc::new(metadata);
        lock(&provider.cache).metadata = Some((Instant::now(), metadata.clone()));
        Ok(metadata)
    }

    /// Where to send the browser to log in at `name`.
    pub async fn authorization_url(
        &self,
        name: &str,
        state: &str,
        flow: &Flow,
    ) -> Result<String, OidcError> {
        let provider = self.provider(name)?;
        let metadata = self.metadata(provider).await?;
        let settings = &provider.settings;
        let scope = settings.scopes.join(" ");
        let challenge = flow.challenge();
        let url = reqwest::Url::parse_with_params(
            &metadata.authorization_endpoint,
            [
                ("response_type", "code"),
                ("client_id", settings.client_id.as_str()),
                ("redirect_uri", settings.redirect_uri.as_str()),
                ("scope", scope.as_str()),
                ("state", state),
                ("nonce", flow.nonce.as_str()),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )
        .map_err(|e| OidcError::Provider(format!("the authorization endpoint: {e}")))?;
        Ok(url.into())
    }

    /// Exchanges `code` for tokens and checks the ID token.
    pub async fn finish(&self, flow: &Flow, code: &str) -> Result<Identity, OidcError> {
        let provider = self.provider(&flow.provider)?;
        let metadata = self.metadata(provider).await?;
        let settings = &provider.settings;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", settings.redirect_uri.as_str()),
            ("code_verifier", flow.verifier.as_str()),
        ];
        let mut request = self.http.post(&metadata.token_endpoint);
        match &settings.client_secret {
            // client_secret_basic: both parts form-encoded, then Basic.
            Some(secret) => {
                let encode = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                request =
                    request.basic_auth(encode(&settings.client_id), Some(encode(secret.expose())));
            }
            None => form.push(("client_id", settings.client_id.as_str())),
        }
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| OidcError::Provider(format!("the token endpoint: {e}")))?;
        let status = response.status();
        let answer: TokenAnswer = response
            .json()
            .await
            .map_err(|e| OidcError::Provider(format!("the token endpoint ({status}): {e}")))?;
        if let Some(error) = answer.error {
            let description = answer.error_description.unwrap_or_default();
            return Err(if status.is_client_error() {
                OidcError::Denied(format!("{error}: {description}"))
            } else {
                OidcError::Provider(format!("{error}: {description}"))
            });
        }
        let id_token = answer
            .id_token
            .ok_or_else(|| OidcError::Provider("the token answer has no id_token".into()))?;
        let identity = self
            .check_id_token(provider, &metadata, &id_token, &flow.nonce)
            .await?;
        if identity.email.is_some() {
            return Ok(identity);
        }
        // Providers may keep the scope's claims for the UserInfo endpoint
        // (OpenID Connect Core 5.4); its `sub` must be the ID token's (5.3.2).
        match (&metadata.userinfo_endpoint, &answer.access_token) {
            (Some(endpoint), Some(access_token)) => {
                self.user_info(endpoint, access_token, identity).await
            }
            _ => Ok(identity),
        }
    }

    async fn user_info(
        &self,
        endpoint: &str,
        access_token: &str,
        identity: Identity,
    ) -> Result<Identity, OidcError> {
        #[derive(Deserialize)]
        struct UserInfo {
            sub: String,
            email: Option<String>,
            email_verified: Option<Flag>,
        }
        let response = self
            .http
            .get(endpoint)
            .bearer_auth(access_token)
            .send()
            .await
            .map_err(|e| OidcError::Provider(format!("the UserInfo endpoint: {e}")))?;
        if !response.status().is_success() {
            return Err(OidcError::Provider(format!(
                "the UserInfo endpoint: {}",
                response.status()
            )));
        }
        let info: UserInfo = response
            .json()
            .await
            .map_err(|e| OidcError::Provider(format!("the UserInfo endpoint: {e}")))?;
        if info.sub != identity.subject {
            return Err(OidcError::InvalidIdToken(
                "the UserInfo `sub` is not the ID token's".into(),
            ));
        }
        Ok(Identity {
            subject: identity.subject,
            email: info.email,
            email_verified: verified(info.email_verified),
        })
    }

    async fn key(
        &self,
        provider: &Provider,
        metadata: &Metadata,
        kid: Option<&str>,
    ) -> Result<Jwk, OidcError> {
        let find = |set: &JwkSet| match kid {
            Some(kid) => set.find(kid).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        let cached = lock(&provider.cache).keys.clone();
        if let Some((_, set)) = &cached
            && let Some(key) = find(set)
        {
            return Ok(key);
        }
        if let Some((at, _)) = &cached
            && at.elapsed() < JWKS_REFETCH
        {
            return Err(OidcError::InvalidIdToken(format!("unknown key {kid:?}")));
        }
        let set: JwkSet = self.get_json(&metadata.jwks_uri).await?;
        let key = find(&set);
        lock(&provider.cache).keys = Some((Instant::now(), Arc::new(set)));
        key.ok_or_else(|| OidcError::InvalidIdToken(format!("unknown key {kid:?}")))
    }

    async fn check_id_token(
        &self,
        provider: &Provider,
        metadata: &Metadata,
        token: &str,
        nonce: &str,
    ) -> Result<Identity, OidcError> {
        let invalid = |what: String| OidcError::InvalidIdToken(what);
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
        if !ALLOWED.contains(&header.alg) {
            return Err(invalid(format!(
                "algorithm {:?} is not allowed",
                header.alg
            )));
        }
        let jwk = self.key(provider, metadata, header.kid.as_deref()).await?;
        if let Some(alg) = jwk.common.key_algorithm
            && format!("{alg:?}") != format!("{:?}", header.alg)
        {
            return Err(invalid(format!(
                "the key is for {alg:?}, the token says {:?}",
                header.alg
            )));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| invalid(format!("the key: {e}")))?;
        let settings = &provider.settings;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.client_id]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = 60;
        let claims = jsonwebtoken::decode::<IdClaims>(token, &key, &validation)
            .map_err(|e| invalid(e.to_string()))?
            .claims;
        if claims.nonce.as_deref() != Some(nonce) {
            return Err(invalid("the nonce does not match the login's".into()));
        }
        let audiences = match &claims.aud {
            Audience::One(_) => 1,
            Audience::Many(all) => all.len(),
        };
        if (audiences > 1 || claims.azp.is_some())
            && claims.azp.as_deref() != Some(settings.client_id.as_str())
        {
            return Err(invalid("`azp` is not this client".into()));
        }
        Ok(Identity {
            subject: claims.sub,
            email: claims.email,
            email_verified: verified(claims.email_verified),
        })
    }
}

/// `email_verified`, which some providers send as a string.
fn verified(flag: Option<Flag>) -> bool {
    match flag {
        Some(Flag::Bool(b)) => b,
        Some(Flag::Text(t)) => t == "true",
        None => false,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_is_accepted() {
        assert!(acceptable_url("https://accounts.example.com"));
        assert!(acceptable_url("http://127.0.0.1:3000"));
        assert!(acceptable_url("http://localhost/cb"));
        assert!(!acceptable_url("http://accounts.example.com"));
        assert!(!acceptable_url("ftp://localhost"));
        assert!(!acceptable_url("not a url"));
    }

    #[test]
    fn the_pkce_challenge_is_rfc_7636_s256() {
        // RFC 7636, appendix B.
        let flow = Flow {
            provider: "p".into(),
            nonce: "n".into(),
            verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into(),
            browser: String::new(),
        };
        assert_eq!(
            flow.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
