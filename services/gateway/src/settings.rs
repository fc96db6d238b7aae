//! The gateway's settings: defaults here, then the file given with
//! `--config`, then `TRIBUTARY_GATEWAY_*` variables (`__` for nesting) and
//! the conventional `DATABASE_URL`, `REDIS_URL` and `TRIBUTARY_JWKS_URL`.
//! The routes live in their own file (`--routes`), reloaded on change.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tributary_kit::Secret;
use tributary_kit::config::{self, ConfigError, Layers};

/// Variables that set a key without the prefix.
pub const ALIASES: &[(&str, &str)] = &[
    ("DATABASE_URL", "database_url"),
    ("REDIS_URL", "redis_url"),
    ("TRIBUTARY_JWKS_URL", "auth.jwks_url"),
];

/// Everything the gateway reads at start-up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where `/healthz`, `/readyz`, `/metrics` and the admin API listen.
    pub admin_listen: SocketAddr,
    /// The routes file.
    pub routes: PathBuf,
    /// How often the routes file is checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_every: Duration,
    /// PostgreSQL, where API keys are kept (hashed).
    pub database_url: Secret,
    /// Connections in the key store's pool.
    pub database_connections: u32,
    /// Redis, for rate limits and revoked sessions.
    pub redis_url: Secret,
    /// Prefix of every Redis key, so that several deployments share a server.
    pub redis_prefix: String,
    /// The auth service's tokens.
    pub auth: AuthSettings,
    /// API keys.
    pub keys: KeySettings,
    /// Rate limits.
    pub rate_limit: RateLimitSettings,
    /// Request limits.
    pub limits: Limits,
    /// The response cache of routes that have one.
    pub cache: CacheSettings,
    /// Peers whose `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded`
    /// are kept (a load balancer in front); everyone else's are replaced.
    pub trusted_proxies: Vec<IpAddr>,
    /// Threads serving the proxy listener, each with its own runtime
    /// (0: one per core).
    pub workers: usize,
    /// One log line per request (target `access`).
    pub access_log: bool,
    /// JSON logs (the default) or text.
    pub json_logs: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9080)),
            routes: PathBuf::from("services/gateway/routes.yaml"),
            reload_every: Duration::from_secs(1),
            database_url: Secret::new("postgres://postgres@127.0.0.1:5432/tributary_gateway"),
            database_connections: 4,
            redis_url: Secret::new("redis://127.0.0.1:6379"),
            redis_prefix: "tributary:gateway:".into(),
            auth: AuthSettings::default(),
            keys: KeySettings::default(),
            rate_limit: RateLimitSettings::default(),
            limits: Limits::default(),
            cache: CacheSettings::default(),
            trusted_proxies: Vec::new(),
            workers: 0,
            access_log: true,
            json_logs: true,
        }
    }
}

/// The auth service's tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// The auth service's JWKS.
    pub jwks_url: String,
    /// The required `iss`.
    pub issuer: String,
    /// The required `aud`.
    pub audience: String,
    /// The Redis key the auth service publishes revoked sessions under.
    pub revocations_key: String,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwks_url: "http://127.0.0.1:8081/.well-known/jwks.json".into(),
            issuer: "http://127.0.0.1:8081".into(),
            audience: "tributary".into(),
            revocations_key: "tributary:auth:revoked".into(),
        }
    }
}

/// API keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySettings {
    /// The header a key arrives in (also accepted as `Authorization: ApiKey …`).
    pub header: String,
    /// How long a looked-up key is trusted before it is looked up again
    /// (the longest a revocation takes to reach every instance).
    #[serde(with = "humantime_serde")]
    pub cache_for: Duration,
    /// The limit of a key issued without one.
    pub default_limit_per_minute: u32,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            header: "x-api-key".into(),
            cache_for: Duration::from_secs(5),
            default_limit_per_minute: 1000,
        }
    }
}

/// Rate limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// How many gateway instances share the limits: with Redis unreachable
    /// each one admits this share of a limit on its own.
    pub instances: u32,
    /// How long a Redis call may take before the local limiter answers.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            instances: 1,
            redis_timeout: Duration::from_millis(250),
        }
    }
}

/// Request limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The largest request body, streamed or not.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 * 1024 * 1024,
        }
    }
}

/// The response cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Memory the cache may hold; the least recently used goes first.
    pub max_bytes: usize,
    /// The largest answer kept.
    pub max_entry_bytes: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            max_entry_bytes: 8 * 1024 * 1024,
        }
    }
}

impl Settings {
    /// The proxy's worker threads: as set, else one per core.
    pub fn workers(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    /// Defaults, then `file`, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        config::load(&Self::layers(file))
    }

    /// As [`Settings::load`], with the given variables instead of the
    /// process environment.
    pub fn load_with(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        config::load_with(&Self::layers(file), vars)
    }

    fn layers(file: Option<&Path>) -> Layers<'_> {
        Layers {
            file,
            prefix: "TRIBUTARY_GATEWAY",
            aliases: ALIASES,
        }
    }
}
