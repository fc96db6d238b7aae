//! `outputs:` Parquet, Kafka, raw zone and Snowflake, and the `dlq:` and `review:` destinations.

use schemars::JsonSchema;
use serde::Deserialize;

use super::{ByteSize, DurationText, Properties, SnowflakeOutputConfig, Text, exactly_one, one_of};

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

fn default_dead_letter_bytes() -> ByteSize {
    ByteSize(64 << 20)
}

written_as!(DeadLetterConfig => DeadLetterKeys);
