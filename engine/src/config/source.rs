//! `source:` (files or Kafka topics) and `batch:`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ByteSize, DurationText, Properties, Text};

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
