//! An enrich stage's `lookup:` a file, a PostgreSQL table or query, or Redis keys.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DurationText, SecretText, Text, exactly_one, one_of};

/// One value or a list of them.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// A list.
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    /// The values as a slice-like vector of references.
    pub fn iter(&self) -> Vec<&T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(ts) => ts.iter().collect(),
        }
    }
}

/// A reference table.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "LookupKeys")]
pub struct LookupConfig {
    /// Name used in messages and metrics (default: the file name, else the table).
    pub name: Option<String>,
    /// Where the table is.
    pub table: LookupTableConfig,
    /// Drop cached entries when `CacheInvalidated` events arrive on this topic.
    pub invalidate: Option<InvalidateConfig>,
    /// Format; by default from the extension.
    pub format: Option<LookupFormat>,
    /// Key columns, present in both the records and the table.
    pub key: OneOrMany<String>,
    /// Table columns to add (default: all but the key).
    pub columns: Vec<String>,
    /// Reload the table this often, without stopping the pipeline.
    pub refresh_interval: Option<DurationText>,
}

/// Where a reference table is.
#[derive(Debug, Clone)]
pub enum LookupTableConfig {
    /// A file (CSV with header, Parquet or NDJSON), relative to the pipeline file.
    Path(Text),
    /// A PostgreSQL table or query.
    Postgres(PostgresLookupConfig),
    /// Redis hashes or JSON values, one per key.
    Redis(RedisLookupConfig),
}

/// A reference table: exactly one of `path`, `postgres` or `redis`.
// Read as a `LookupConfig`: planning matches on the choice.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "LookupConfig", extend("oneOf" = one_of(&["path", "postgres", "redis"])))]
struct LookupKeys {
    /// Name used in messages and metrics (default: the file name, else the table).
    #[serde(default)]
    name: Option<String>,
    /// A file (CSV with header, Parquet or NDJSON), relative to the pipeline file.
    #[serde(default)]
    path: Option<Text>,
    /// A PostgreSQL table or query.
    #[serde(default)]
    postgres: Option<PostgresLookupConfig>,
    /// Redis hashes or JSON values, one per key.
    #[serde(default)]
    redis: Option<RedisLookupConfig>,
    /// Drop cached entries when `CacheInvalidated` events arrive on this topic.
    #[serde(default)]
    invalidate: Option<InvalidateConfig>,
    /// Format; by default from the extension.
    #[serde(default)]
    format: Option<LookupFormat>,
    /// Key columns, present in both the records and the table.
    key: OneOrMany<String>,
    /// Table columns to add (default: all but the key).
    #[serde(default)]
    columns: Vec<String>,
    /// Reload the table this often, without stopping the pipeline.
    #[serde(default)]
    refresh_interval: Option<DurationText>,
}

impl TryFrom<LookupKeys> for LookupConfig {
    type Error = String;

    fn try_from(k: LookupKeys) -> Result<Self, String> {
        use LookupTableConfig::{Path, Postgres, Redis};
        let table = exactly_one(
            "`path` (a file), `postgres` or `redis`",
            [
                k.path.map(Path),
                k.postgres.map(Postgres),
                k.redis.map(Redis),
            ],
        )?;
        Ok(LookupConfig {
            name: k.name,
            table,
            invalidate: k.invalidate,
            format: k.format,
            key: k.key,
            columns: k.columns,
            refresh_interval: k.refresh_interval,
        })
    }
}

/// A PostgreSQL lookup.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "PostgresLookupKeys")]
pub struct PostgresLookupConfig {
    /// `postgres://user:password@host:port/database` (use `${VAR}` for the password).
    pub url: SecretText,
    /// What is read.
    pub read: PostgresReadConfig,
    /// `snapshot` (default: load it all, refresh on `refresh_interval`) or `on_demand` (per batch, cached).
    pub mode: LookupMode,
    /// The cache of on-demand lookups.
    pub cache: CacheConfig,
}

/// What a PostgreSQL lookup reads.
#[derive(Debug, Clone)]
pub enum PostgresReadConfig {
    /// A table (or view), read whole.
    Table(String),
    /// A `SELECT`, read whole.
    Query(Text),
}

/// A PostgreSQL lookup: exactly one of `table` or `query`.
// Read as a `PostgresLookupConfig`: planning matches on the choice.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "PostgresLookupConfig", extend("oneOf" = one_of(&["table", "query"])))]
struct PostgresLookupKeys {
    /// `postgres://user:password@host:port/database` (use `${VAR}` for the password).
    url: SecretText,
    /// A table (or view), read whole.
    #[serde(default)]
    table: Option<String>,
    /// A `SELECT`, read whole.
    #[serde(default)]
    query: Option<Text>,
    /// `snapshot` (load it all, refresh on `refresh_interval`) or `on_demand` (per batch, cached).
    #[serde(default)]
    mode: LookupMode,
    /// The cache of on-demand lookups.
    #[serde(default)]
    cache: CacheConfig,
}

impl TryFrom<PostgresLookupKeys> for PostgresLookupConfig {
    type Error = String;

    fn try_from(k: PostgresLookupKeys) -> Result<Self, String> {
        use PostgresReadConfig::{Query, Table};
        let read = exactly_one(
            "`table` or `query`",
            [k.table.map(Table), k.query.map(Query)],
        )?;
        Ok(PostgresLookupConfig {
            url: k.url,
            read,
            mode: k.mode,
            cache: k.cache,
        })
    }
}

/// How a database table is looked up.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LookupMode {
    /// Load the whole table; reload on the refresh interval.
    #[default]
    Snapshot,
    /// Ask for each batch's keys, through an LRU cache.
    OnDemand,
}

/// A Redis lookup.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisLookupConfig {
    /// `redis://host:port/db` (or `redis://:password@host:port/db`).
    pub url: SecretText,
    /// Prepended to each key (`customer:` → `customer:C000042`).
    #[serde(default)]
    pub key_prefix: String,
    /// `hash` (default: `HGETALL`) or `json` (a JSON object per key: `MGET`).
    #[serde(default)]
    pub value: RedisValueConfig,
    /// Field → type (`string`, `int`, `float`, `bool`): the columns looked up.
    pub fields: std::collections::BTreeMap<String, RedisFieldType>,
    /// The local cache.
    #[serde(default)]
    pub cache: CacheConfig,
}

/// How Redis stores a key's fields.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RedisValueConfig {
    /// A hash.
    #[default]
    Hash,
    /// A string holding a JSON object.
    Json,
}

impl From<RedisValueConfig> for tributary_connectors::lookup::redis::RedisValue {
    fn from(value: RedisValueConfig) -> Self {
        match value {
            RedisValueConfig::Hash => Self::Hash,
            RedisValueConfig::Json => Self::Json,
        }
    }
}

/// The type of a Redis field.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RedisFieldType {
    /// Text.
    String,
    /// 64-bit integer.
    Int,
    /// 64-bit float.
    Float,
    /// Boolean.
    Bool,
}

impl From<RedisFieldType> for tributary_connectors::lookup::redis::FieldType {
    fn from(field: RedisFieldType) -> Self {
        match field {
            RedisFieldType::String => Self::String,
            RedisFieldType::Int => Self::Int,
            RedisFieldType::Float => Self::Float,
            RedisFieldType::Bool => Self::Bool,
        }
    }
}

/// The cache in front of an on-demand lookup.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Keys kept (least recently used go first).
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
    /// How long an answer (or a miss) is trusted.
    #[serde(default = "default_cache_ttl")]
    pub ttl: DurationText,
    /// How long to retry a lookup source that does not answer before its records follow `on_error`.
    #[serde(default = "default_lookup_retry")]
    pub retry_for: DurationText,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: default_cache_entries(),
            ttl: default_cache_ttl(),
            retry_for: default_lookup_retry(),
        }
    }
}

fn default_cache_entries() -> usize {
    100_000
}

fn default_cache_ttl() -> DurationText {
    DurationText(std::time::Duration::from_secs(60))
}

fn default_lookup_retry() -> DurationText {
    DurationText(std::time::Duration::from_secs(5))
}

/// Where `CacheInvalidated` events come from.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvalidateConfig {
    /// Kafka brokers (default: the Kafka source's).
    #[serde(default)]
    pub brokers: Option<Text>,
    /// The topic of `CacheInvalidated` events.
    pub topic: Text,
}

/// Lookup file formats.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LookupFormat {
    /// CSV with a header row.
    Csv,
    /// Parquet.
    Parquet,
    /// Newline-delimited JSON.
    Ndjson,
}

impl From<LookupFormat> for tributary_connectors::lookup::FileFormat {
    fn from(format: LookupFormat) -> Self {
        match format {
            LookupFormat::Csv => Self::Csv,
            LookupFormat::Parquet => Self::Parquet,
            LookupFormat::Ndjson => Self::Ndjson,
        }
    }
}

written_as!(
    LookupConfig => LookupKeys,
    PostgresLookupConfig => PostgresLookupKeys,
);
