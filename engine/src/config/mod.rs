//! The pipeline file: what data engineers write, as typed Rust.
//!
//! Loading is strict: unknown keys, wrong types and malformed values are
//! refused with `file:line:column` and the key path. String values may
//! contain `${VAR}` or `${VAR:-default}`, replaced from the environment when
//! the file is read (after YAML parsing, so a value can never change the
//! file's structure); `$${` writes a literal `${`.

mod storage;
mod values;
mod warehouse;

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use storage::{RetryConfig, S3Config, StorageConfig, WhenExhausted};
pub use values::{ByteSize, DurationText, Located, Properties, SecretText, Text};
pub use warehouse::{AlertsConfig, ErrorRateConfig, SnowflakeOutputConfig, TimestampsConfig};

/// Where a problem in the pipeline file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
}

/// A pipeline file that cannot be used, with where and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}{}: {}{message}", file.display(), position(*line, *column), key_prefix(key_path))]
pub struct ConfigError {
    /// The pipeline file.
    pub file: PathBuf,
    /// 1-based line (0 when unknown).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
    /// Dotted key path, e.g. `stages[1].transform.sql`.
    pub key_path: String,
    /// What is wrong.
    pub message: String,
}

/// `:line:column`, or nothing when the position is unknown.
fn position(line: u64, column: u64) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}:{column}")
    }
}

fn key_prefix(path: &str) -> String {
    if path.is_empty() || path == "." {
        String::new()
    } else {
        format!("{path}: ")
    }
}

impl ConfigError {
    /// An error at `span` (if known) about the value at `key_path`.
    pub fn at(
        file: &Path,
        span: Option<&Span>,
        key_path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = span.map_or((0, 0), |s| (s.line, s.column));
        ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            key_path: key_path.into(),
            message: message.into(),
        }
    }
}

/// A whole pipeline.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// The pipeline's name, carried into dead letters and logs.
    pub name: String,
    /// Where records come from.
    pub source: SourceConfig,
    /// How records are grouped into batches.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Stages, applied in order.
    pub stages: Vec<Located<StageConfig>>,
    /// Where valid records go.
    pub outputs: Vec<Located<OutputConfig>>,
    /// Where invalid records go.
    pub dlq: DeadLetterConfig,
    /// Where ambiguous records go.
    pub review: DeadLetterConfig,
    /// Partitions processed at once (default: the number of cores).
    #[serde(default)]
    pub workers: Option<usize>,
    /// How remote stores (S3) are reached.
    #[serde(default)]
    pub storage: StorageConfig,
    /// How transient failures are retried.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Alerts.
    #[serde(default)]
    pub alerts: AlertsConfig,
}

/// The source, one kind at a time.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SourceConfig {
    /// Newline-delimited JSON files.
    File(FileSourceConfig),
    /// Kafka topics, read by a consumer group.
    Kafka(KafkaSourceConfig),
}

/// Kafka topics read by a consumer group.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// `host:port[,host:port…]`.
    pub brokers: Text,
    /// Topic names; an entry starting with `^` is a regular expression.
    pub topics: Vec<Text>,
    /// Consumer group; every process in it shares the partitions.
    pub group: Text,
    /// Where a group without committed offsets starts.
    #[serde(default)]
    pub start: StartConfig,
    /// How often each partition commits: its files are published and its offset committed.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: DurationText,
    /// Bytes of consumed records held at most across all assigned partitions.
    #[serde(default = "default_max_buffered")]
    pub max_buffered: ByteSize,
    /// librdkafka consumer properties, applied over Tributary's defaults.
    #[serde(default)]
    pub properties: Properties,
}

fn default_max_buffered() -> ByteSize {
    ByteSize(256 << 20)
}

fn default_commit_interval() -> DurationText {
    DurationText(std::time::Duration::from_secs(30))
}

/// Start position of a new consumer group.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StartConfig {
    /// The oldest retained record.
    #[default]
    Earliest,
    /// Records produced from now on.
    Latest,
}

impl From<StartConfig> for tributary_connectors::kafka::consumer::StartPosition {
    fn from(start: StartConfig) -> Self {
        match start {
            StartConfig::Earliest => Self::Earliest,
            StartConfig::Latest => Self::Latest,
        }
    }
}

/// A Kafka topic to produce to.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaTopicConfig {
    /// Brokers; by default the Kafka source's.
    #[serde(default)]
    pub brokers: Option<Text>,
    /// The topic.
    pub topic: Text,
    /// librdkafka producer properties, applied over Tributary's defaults.
    #[serde(default)]
    pub properties: Properties,
    /// Partitions of the topic when Tributary creates it (default 1).
    #[serde(default)]
    pub partitions: Option<u32>,
    /// Replication factor of the topic when Tributary creates it (default 1,
    /// which `check` warns about: one broker lost loses what it holds).
    #[serde(default)]
    pub replication_factor: Option<u32>,
    /// The topic's message limit (its `max.message.bytes`): larger dead
    /// letters are cut to fit, and kept whole beside the output.
    #[serde(default)]
    pub max_message_bytes: Option<ByteSize>,
}

/// NDJSON files.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// A path or glob (`data/*.ndjson`), relative to the pipeline file.
    pub path: Text,
    /// Large files are cut into partitions of about this size.
    #[serde(default = "default_chunk")]
    pub chunk_bytes: ByteSize,
    /// Lines longer than this stop the partition (they cannot be held in memory).
    #[serde(default = "default_max_line")]
    pub max_line_bytes: ByteSize,
}

fn default_chunk() -> ByteSize {
    ByteSize(32 << 20)
}

fn default_max_line() -> ByteSize {
    ByteSize(256 << 20)
}

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

/// Batching.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// A batch closes at this many records.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// A batch closes at about this many payload bytes.
    #[serde(default = "default_batch_bytes")]
    pub max_bytes: ByteSize,
    /// A batch closes this long after its first record (streaming sources).
    #[serde(default = "default_max_wait")]
    pub max_wait: DurationText,
}

fn default_max_records() -> usize {
    8192
}

fn default_batch_bytes() -> ByteSize {
    ByteSize(16 << 20)
}

fn default_max_wait() -> DurationText {
    DurationText(std::time::Duration::from_millis(500))
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_records: default_max_records(),
            max_bytes: default_batch_bytes(),
            max_wait: default_max_wait(),
        }
    }
}

/// A stage: a map with exactly one key naming its kind.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum StageConfig {
    /// JSON Schema validation and data-quality rules.
    Validate(ValidateConfig),
    /// SQL or mapping.
    Transform(TransformConfig),
    /// Lookup join and derived fields.
    Enrich(Box<EnrichConfig>),
}

impl StageConfig {
    /// `validate`, `transform` or `enrich`.
    pub fn kind(&self) -> &'static str {
        match self {
            StageConfig::Validate(_) => "validate",
            StageConfig::Transform(_) => "transform",
            StageConfig::Enrich(_) => "enrich",
        }
    }
}

/// The validate stage.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// JSON Schema (draft 2020-12) file, relative to the pipeline file.
    pub schema: Text,
    /// Payloads larger than this go to the DLQ unread.
    #[serde(default = "default_max_record")]
    pub max_record_bytes: ByteSize,
    /// Data-quality rules.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

fn default_max_record() -> ByteSize {
    ByteSize(1 << 20)
}

/// A data-quality rule.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Reported with each failing record.
    pub name: String,
    /// Boolean SQL over the validated columns; records where it is not true fail.
    pub sql: Text,
    /// `error` → DLQ, `warn` → review queue.
    #[serde(default)]
    pub severity: SeverityConfig,
}

/// Rule severity.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SeverityConfig {
    /// To the DLQ.
    #[default]
    Error,
    /// To the review queue.
    Warn,
}

impl From<SeverityConfig> for tributary_stages::validate::Severity {
    fn from(severity: SeverityConfig) -> Self {
        match severity {
            SeverityConfig::Error => Self::Error,
            SeverityConfig::Warn => Self::Warn,
        }
    }
}

/// The transform stage: SQL or a mapping.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "TransformKeys")]
pub enum TransformConfig {
    /// `SELECT … FROM input`.
    Sql(Text),
    /// Declarative column operations.
    Mapping(MappingConfig),
}

/// The transform stage: exactly one of `sql` or `mapping`.
// Read as a `TransformConfig`: planning matches on the choice.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "TransformConfig", extend("oneOf" = one_of(&["sql", "mapping"])))]
struct TransformKeys {
    /// `SELECT <expressions> FROM input` (DataFusion SQL; one row per input row).
    #[serde(default)]
    sql: Option<Text>,
    /// Declarative column operations.
    #[serde(default)]
    mapping: Option<MappingConfig>,
}

impl TryFrom<TransformKeys> for TransformConfig {
    type Error = String;

    fn try_from(keys: TransformKeys) -> Result<Self, String> {
        exactly_one(
            "`sql` or `mapping`",
            [keys.sql.map(Self::Sql), keys.mapping.map(Self::Mapping)],
        )
    }
}

/// Declarative column operations (applied: flatten, defaults, cast, rename, drop).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// Struct columns to spread into `<column>_<field>` columns.
    #[serde(default)]
    pub flatten: Vec<String>,
    /// Column → value used where the column is null.
    #[serde(default)]
    pub defaults: std::collections::BTreeMap<String, serde_json::Value>,
    /// Column → SQL type.
    #[serde(default)]
    pub cast: std::collections::BTreeMap<String, String>,
    /// Old name → new name.
    #[serde(default)]
    pub rename: std::collections::BTreeMap<String, String>,
    /// Columns to leave out.
    #[serde(default)]
    pub drop: Vec<String>,
}

/// The enrich stage.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// The reference table.
    pub lookup: LookupConfig,
    /// What to do with records whose key is not in the table.
    #[serde(default)]
    pub on_miss: OnMissConfig,
    /// What to do with records whose lookup cannot be answered (the database or cache is down).
    #[serde(default)]
    pub on_error: OnMissConfig,
    /// Derived fields, in order.
    #[serde(default)]
    pub derive: Vec<DeriveConfig>,
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

/// Policy for lookup misses.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnMissConfig {
    /// Keep the record with nulls.
    Null,
    /// Review queue.
    #[default]
    Review,
    /// Dead-letter queue.
    Dlq,
}

impl From<OnMissConfig> for tributary_stages::enrich::OnMiss {
    fn from(policy: OnMissConfig) -> Self {
        match policy {
            OnMissConfig::Null => Self::Null,
            OnMissConfig::Review => Self::Review,
            OnMissConfig::Dlq => Self::Dlq,
        }
    }
}

/// A derived field.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeriveConfig {
    /// Column name.
    pub name: String,
    /// SQL expression over the joined columns.
    pub sql: Text,
}

/// An output, one kind per entry.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum OutputConfig {
    /// Parquet files.
    Parquet(ParquetOutputConfig),
    /// A Kafka topic, one JSON message per record.
    Kafka(KafkaOutputConfig),
    /// A Snowflake table loaded from a Parquet output's files.
    Snowflake(Box<SnowflakeOutputConfig>),
    /// The raw zone: every consumed message as is, in Parquet partitioned by date.
    Raw(RawOutputConfig),
}

/// The raw zone (Kafka sources): messages exactly as consumed, under the same exactly-once commits.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOutputConfig {
    /// The output's name.
    pub name: String,
    /// Root directory or `s3://bucket/prefix`; files go under `date=YYYY-MM-DD/`.
    pub path: Text,
    /// `zstd` (default, level 3), `zstd(N)`, `snappy` or `none`.
    #[serde(default)]
    pub compression: Option<Text>,
    /// When files are closed.
    #[serde(default)]
    pub roll: RollConfig,
    /// Row-group bytes held in memory by every open file of this output
    /// together, across all the partitions a process holds.
    #[serde(default = "default_output_buffered")]
    pub max_buffered: ByteSize,
}

impl OutputConfig {
    /// The output's name (its table name for `tributary query`).
    pub fn name(&self) -> &str {
        match self {
            OutputConfig::Parquet(p) => &p.name,
            OutputConfig::Kafka(k) => &k.name,
            OutputConfig::Snowflake(s) => &s.name,
            OutputConfig::Raw(r) => &r.name,
        }
    }
}

/// Records to a Kafka topic as JSON, keyed by the source record's key.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaOutputConfig {
    /// Name in messages and the summary.
    pub name: String,
    /// Brokers; by default the Kafka source's.
    #[serde(default)]
    pub brokers: Option<Text>,
    /// The topic.
    pub topic: Text,
    /// librdkafka producer properties, applied over Tributary's defaults.
    #[serde(default)]
    pub properties: Properties,
    /// Partitions of the topic when Tributary creates it (default 1).
    #[serde(default)]
    pub partitions: Option<u32>,
    /// Replication factor of the topic when Tributary creates it (default 1,
    /// which `check` warns about: one broker lost loses what it holds).
    #[serde(default)]
    pub replication_factor: Option<u32>,
}

impl KafkaOutputConfig {
    /// The topic this output produces to, as a DLQ topic would be given.
    pub fn topic_config(&self) -> KafkaTopicConfig {
        KafkaTopicConfig {
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
            properties: self.properties.clone(),
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            max_message_bytes: None,
        }
    }
}

/// Parquet files under a directory.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParquetOutputConfig {
    /// Table name for queries.
    pub name: String,
    /// Root directory (or `file://` URL), relative to the pipeline file.
    pub path: Text,
    /// Hive partition columns.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// `zstd` (default), `zstd(N)`, `snappy` or `none`.
    #[serde(default)]
    pub compression: Option<Text>,
    /// When files roll.
    #[serde(default)]
    pub roll: RollConfig,
    /// Rows per row group.
    #[serde(default = "default_row_group")]
    pub row_group_rows: usize,
    /// Files open at once per source partition.
    #[serde(default = "default_open_files")]
    pub max_open_files: usize,
    /// Row-group bytes held in memory by every open file of this output
    /// together, across all the partitions a process holds.
    #[serde(default = "default_output_buffered")]
    pub max_buffered: ByteSize,
}

fn default_output_buffered() -> ByteSize {
    ByteSize(tributary_connectors::parquet::DEFAULT_ROW_GROUP_BUDGET as u64)
}

fn default_row_group() -> usize {
    128 * 1024
}

fn default_open_files() -> usize {
    32
}

/// File rolling.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollConfig {
    /// Rows per file.
    #[serde(default = "default_roll_rows")]
    pub max_rows: usize,
    /// Bytes per file (approximate).
    #[serde(default = "default_roll_bytes")]
    pub max_bytes: ByteSize,
    /// Age of an open file (streaming sources only; file sources roll deterministically).
    #[serde(default)]
    pub max_age: Option<DurationText>,
}

fn default_roll_rows() -> usize {
    1_000_000
}

fn default_roll_bytes() -> ByteSize {
    ByteSize(128 << 20)
}

impl Default for RollConfig {
    fn default() -> Self {
        RollConfig {
            max_rows: default_roll_rows(),
            max_bytes: default_roll_bytes(),
            max_age: None,
        }
    }
}

/// A DLQ or review destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "DeadLetterKeys")]
pub enum DeadLetterConfig {
    /// NDJSON files under a directory.
    Files {
        /// Directory (or `file://` or `s3://` URL), relative to the pipeline file.
        path: Text,
        /// Files roll at about this size.
        max_file_bytes: ByteSize,
    },
    /// A topic: each record's original bytes and key, with `tributary.errors.*` headers.
    Kafka(KafkaTopicConfig),
}

/// A DLQ or review destination: exactly one of `path` (NDJSON files) or `kafka` (a topic).
// Read as a `DeadLetterConfig`: planning matches on the choice.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DeadLetterConfig", extend("oneOf" = one_of(&["path", "kafka"])))]
struct DeadLetterKeys {
    /// NDJSON files under this directory (or `file://` or `s3://` URL), relative to the pipeline file.
    #[serde(default)]
    path: Option<Text>,
    /// A topic: each record's original bytes and key, with `tributary.errors.*` headers.
    #[serde(default)]
    kafka: Option<KafkaTopicConfig>,
    /// Files roll at about this size.
    #[serde(default = "default_dead_letter_bytes")]
    max_file_bytes: ByteSize,
}

impl TryFrom<DeadLetterKeys> for DeadLetterConfig {
    type Error = String;

    fn try_from(k: DeadLetterKeys) -> Result<Self, String> {
        let files = |path| DeadLetterConfig::Files {
            path,
            max_file_bytes: k.max_file_bytes,
        };
        exactly_one(
            "`path` (NDJSON files) or `kafka` (a topic)",
            [k.path.map(files), k.kafka.map(DeadLetterConfig::Kafka)],
        )
    }
}

/// A type read through `TryFrom` its written form has the written form's schema.
macro_rules! written_as {
    ($($read:ty => $written:ty),* $(,)?) => {$(
        impl JsonSchema for $read {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                <$written>::schema_name()
            }

            fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                <$written>::json_schema(generator)
            }
        }
    )*};
}

written_as!(
    TransformConfig => TransformKeys,
    LookupConfig => LookupKeys,
    PostgresLookupConfig => PostgresLookupKeys,
    DeadLetterConfig => DeadLetterKeys,
);

/// The one choice given, or why there is not exactly one; `names` lists them for the message.
fn exactly_one<T, const N: usize>(names: &str, given: [Option<T>; N]) -> Result<T, String> {
    let given: Vec<T> = given.into_iter().flatten().collect();
    let count = given.len();
    <[T; 1]>::try_from(given)
        .map(|[one]| one)
        .map_err(|_| match count {
            0 => format!("give exactly one of {names} (there is none)"),
            _ => format!("give exactly one of {names}, not {count}"),
        })
}

/// The JSON Schema of "exactly one of these keys" (the others stay optional).
fn one_of(keys: &[&str]) -> serde_json::Value {
    keys.iter()
        .map(|key| serde_json::json!({ "required": [key] }))
        .collect()
}

fn default_dead_letter_bytes() -> ByteSize {
    ByteSize(64 << 20)
}

/// A parsed pipeline file with where it was read from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The pipeline.
    pub pipeline: PipelineFile,
    /// The file it came from.
    pub file: PathBuf,
    /// Its directory, against which relative paths resolve.
    pub base_dir: PathBuf,
}

impl Loaded {
    /// `path` resolved against the pipeline file's directory (URLs and absolute paths unchanged).
    pub fn resolve(&self, path: &str) -> String {
        if path.contains("://") || Path::new(path).is_absolute() {
            return path.to_string();
        }
        // Lexically drop `.` and `dir/..` so paths in messages read naturally.
        let mut parts: Vec<std::path::Component> = Vec::new();
        let full = self.base_dir.join(path);
        for component in full.components() {
            match component {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir
                    if matches!(parts.last(), Some(std::path::Component::Normal(_))) =>
                {
                    parts.pop();
                }
                c => parts.push(c),
            }
        }
        let joined: PathBuf = parts.iter().collect();
        if joined.as_os_str().is_empty() {
            ".".into()
        } else {
            joined.display().to_string()
        }
    }
}

/// The JSON Schema (draft 2020-12) of pipeline files, generated from the
/// types above; `schemas/pipeline.schema.json` is this, pretty-printed
/// (`tributary schema` prints it).
pub fn json_schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<PipelineFile>();
    schema.insert(
        "$id".into(),
        "https://tributary.dev/schemas/pipeline.schema.json".into(),
    );
    schema.insert("title".into(), "Tributary pipeline file".into());
    schema.insert(
        "description".into(),
        "A Tributary pipeline: source, batching, stages, outputs, DLQ and review destinations. \
         Text values may hold `${VAR}` or `${VAR:-default}`, replaced from the environment. \
         Generated from the engine's types by `tributary schema`; see docs/pipeline.md."
            .into(),
    );
    schema.to_value()
}

/// Reads and parses a pipeline file.
pub fn load(file: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        ConfigError::at(
            file,
            None,
            "",
            format!("cannot read the pipeline file: {e}"),
        )
    })?;
    parse(&text, file)
}

/// Parses pipeline text; `file` names it in errors and anchors relative paths.
pub fn parse(text: &str, file: &Path) -> Result<Loaded, ConfigError> {
    let mut key_path = None;
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, PipelineFile>(de).map_err(|e| {
            key_path = Some(e.path().to_string());
            e.into_inner()
        })
    });
    let pipeline = result.map_err(|e| from_yaml(file, key_path, &e))?;
    let base_dir = file
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Ok(Loaded {
        pipeline,
        file: file.to_path_buf(),
        base_dir,
    })
}

fn from_yaml(file: &Path, key_path: Option<String>, error: &serde_saphyr::Error) -> ConfigError {
    let (line, column) = error.location().map_or((0, 0), |l| (l.line(), l.column()));
    let message = plain_message(error);
    ConfigError {
        file: file.to_path_buf(),
        line,
        column,
        key_path: key_path.as_deref().map(file_key_path).unwrap_or_default(),
        message,
    }
}

/// serde-saphyr renders errors with a source snippet; keep the first line, without its own location suffix.
fn plain_message(error: &serde_saphyr::Error) -> String {
    let rendered = error.to_string();
    let first = rendered.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let first = match first.find(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    // A custom error (a bad duration, a second choice) starts with its
    // location, which the error already gives as file:line:column.
    without_location(first).to_string()
}

/// `text` without a leading `line N column M: `.
fn without_location(text: &str) -> &str {
    let rest = text.strip_prefix("line ").and_then(|r| {
        let (line, r) = r.split_once(" column ")?;
        let (column, r) = r.split_once(": ")?;
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        (digits(line) && digits(column)).then_some(r)
    });
    rest.unwrap_or(text)
}

/// A key path as the file reads (`stages[1].transform`), without the
/// `value` step that location-keeping wrappers add.
fn file_key_path(path: &str) -> String {
    let path = path.replace("].value.", "].");
    match path.strip_suffix("].value") {
        Some(indexed) => format!("{indexed}]"),
        None => path,
    }
}

#[cfg(test)]
mod tests;
