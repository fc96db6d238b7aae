//! The orders service's settings: defaults here, then the file given with
//! `--config`, then `TRIBUTARY_ORDERS_*` variables (`__` for nesting) and
//! the conventional `DATABASE_URL`, `DATABASE_REPLICA_URLS`, `REDIS_URL`,
//! `KAFKA_BROKERS`, `TRIBUTARY_JWKS_URL` and `PAYMENT_PROVIDER_URL`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tributary_kit::Secret;
use tributary_kit::config::{self, ConfigError, Layers};
pub use tributary_kit::resilience::BreakerSettings;

/// Variables that set a key without the prefix.
pub const ALIASES: &[(&str, &str)] = &[
    ("DATABASE_URL", "database_url"),
    ("DATABASE_REPLICA_URLS", "database_replica_urls"),
    ("REDIS_URL", "redis_url"),
    ("KAFKA_BROKERS", "kafka_brokers"),
    ("TRIBUTARY_JWKS_URL", "auth.jwks_url"),
    ("PAYMENT_PROVIDER_URL", "payments.base_url"),
    ("PAYMENT_PROVIDER_KEY", "payments.api_key"),
];

/// Everything the service reads at start-up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The primary PostgreSQL; the database is created if missing.
    pub database_url: Secret,
    /// Streaming replicas of the primary that reads may go to
    /// (comma-separated in `DATABASE_REPLICA_URLS`).
    #[serde(deserialize_with = "comma_list")]
    pub database_replica_urls: Vec<Secret>,
    /// Connections per pool (the primary's and each replica's).
    pub database_connections: u32,
    /// Redis, for the cache and read-your-writes positions.
    pub redis_url: Secret,
    /// Prefix of every Redis key, so that several deployments share a server.
    pub redis_prefix: String,
    /// Kafka brokers: the outbox publishes to them and every instance
    /// follows cache invalidations on them. Without them events wait in the
    /// outbox and only this instance's writes invalidate its own cache.
    pub kafka_brokers: Option<String>,
    /// Topics.
    pub topics: Topics,
    /// The auth service's tokens.
    pub auth: AuthSettings,
    /// The payment provider.
    pub payments: PaymentSettings,
    /// Pricing.
    pub pricing: PricingSettings,
    /// Replicas.
    pub replicas: ReplicaSettings,
    /// The cache.
    pub cache: CacheSettings,
    /// The order saga.
    pub saga: SagaSettings,
    /// How long idempotency keys are kept.
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// JSON logs (the default) or text.
    pub json_logs: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            database_url: Secret::new("postgres://postgres@127.0.0.1:5432/tributary_orders"),
            database_replica_urls: Vec::new(),
            database_connections: 16,
            redis_url: Secret::new("redis://127.0.0.1:6379"),
            redis_prefix: "tributary:orders:".into(),
            kafka_brokers: None,
            topics: Topics::default(),
            auth: AuthSettings::default(),
            payments: PaymentSettings::default(),
            pricing: PricingSettings::default(),
            replicas: ReplicaSettings::default(),
            cache: CacheSettings::default(),
            saga: SagaSettings::default(),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            json_logs: true,
        }
    }
}

/// Where each event goes. The defaults are the topics the engine's shipped
/// pipelines read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    /// `OrderCreated`.
    pub orders: String,
    /// `PaymentProcessed`.
    pub payments: String,
    /// `CacheInvalidated`.
    pub cache: String,
    /// `ExternalAPICallFailed`.
    pub external_calls: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            orders: "orders".into(),
            payments: "payments".into(),
            cache: "cache-invalidations".into(),
            external_calls: "external-api-calls".into(),
        }
    }
}

/// How access tokens are checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// The auth service's JWKS.
    pub jwks_url: String,
    /// The required `iss`.
    pub issuer: String,
    /// The required `aud`.
    pub audience: String,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwks_url: "http://127.0.0.1:8081/.well-known/jwks.json".into(),
            issuer: "http://127.0.0.1:8081".into(),
            audience: "tributary".into(),
        }
    }
}

/// The payment provider and how it is called.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentSettings {
    /// Its base URL (`https://api.provider.example`).
    pub base_url: String,
    /// The secret API key sent as a bearer token.
    pub api_key: Secret,
    /// How long one call may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per call at most (the retry budget can allow fewer).
    pub max_attempts: u32,
    /// Retries allowed as a share of calls (0.2: one retry per five calls),
    /// on top of `retry_floor_per_second`.
    pub retry_ratio: f64,
    /// Retries always allowed per second.
    pub retry_floor_per_second: u32,
    /// The circuit breaker.
    pub breaker: BreakerSettings,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8090".into(),
            api_key: Secret::new("sk_test_local"),
            timeout: Duration::from_secs(5),
            max_attempts: 3,
            retry_ratio: 0.2,
            retry_floor_per_second: 10,
            breaker: BreakerSettings::default(),
        }
    }
}

/// The pricing rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingSettings {
    /// The rules file; without one, prices are the catalogue's and nothing else.
    pub rules_file: Option<PathBuf>,
    /// How often the file is checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_every: Duration,
}

impl Default for PricingSettings {
    fn default() -> Self {
        Self {
            rules_file: None,
            reload_every: Duration::from_secs(1),
        }
    }
}

/// When a replica serves reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicaSettings {
    /// A replica further behind than this is out of rotation.
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    /// How often each replica's position is read.
    #[serde(with = "humantime_serde")]
    pub check_every: Duration,
    /// How long a caller's last write position is remembered.
    #[serde(with = "humantime_serde")]
    pub remember_writes_for: Duration,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        Self {
            max_lag: Duration::from_secs(5),
            check_every: Duration::from_millis(250),
            remember_writes_for: Duration::from_secs(60),
        }
    }
}

/// The cache of products and orders.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// How long an entry lives.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Entries kept in each instance's memory in front of Redis.
    pub local_entries: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(15 * 60),
            local_entries: 10_000,
        }
    }
}

/// The order saga.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SagaSettings {
    /// How long a step may hold an order before another worker may take it.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How long a payment is retried before the order is given up and
    /// compensated.
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
    /// How often the worker looks for orders left half-way.
    #[serde(with = "humantime_serde")]
    pub poll_every: Duration,
    /// Sagas run at once per instance (at most half the primary's pool).
    pub concurrency: usize,
}

impl Default for SagaSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            give_up_after: Duration::from_secs(15 * 60),
            poll_every: Duration::from_secs(1),
            concurrency: 32,
        }
    }
}

/// `a,b,c` or a YAML list.
fn comma_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        List(Vec<String>),
    }
    Ok(match Either::deserialize(deserializer)? {
        Either::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Secret::new)
            .collect(),
        Either::List(list) => list.into_iter().map(Secret::new).collect(),
    })
}

impl Settings {
    /// Loads the settings from `file` (if any) and the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        config::load(&Layers {
            file,
            prefix: "TRIBUTARY_ORDERS",
            aliases: ALIASES,
        })
    }
}
