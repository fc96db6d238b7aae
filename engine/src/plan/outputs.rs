//! `outputs:`, `dlq:` and `review:`: where records go. Nothing is opened here.

use arrow::datatypes::SchemaRef;
use tributary_connectors::kafka::KafkaConnection;
use tributary_connectors::parquet::{Codec, ParquetOptions, RowGroupBudget, file_schema};
use tributary_connectors::raw_zone;

use super::context::{Cx, Origin};
use super::source::PlannedSource;
use crate::config::{
    ByteSize, ConfigError, DeadLetterConfig, KafkaTopicConfig, Loaded, OutputConfig,
    SnowflakeOutputConfig, Span, Text,
};

/// What a Parquet output holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// The records leaving the stages.
    Records,
    /// The raw zone: messages as consumed, before any stage.
    Raw,
}

/// A Parquet output, ready to open.
#[derive(Debug, Clone)]
pub struct PlannedOutput {
    /// Table name.
    pub name: String,
    /// Root location.
    pub path: String,
    /// File options.
    pub options: ParquetOptions,
    /// Whether it holds processed records or the raw zone.
    pub kind: OutputKind,
    /// Where the pipeline file gives it.
    pub origin: Origin,
}

impl PlannedOutput {
    /// Whether this is the raw zone (messages as consumed, not processed records).
    pub fn is_raw(&self) -> bool {
        self.kind == OutputKind::Raw
    }
}

/// A Kafka topic to produce to.
#[derive(Debug, Clone)]
pub struct PlannedTopic {
    /// Brokers and producer properties.
    pub connection: KafkaConnection,
    /// The topic.
    pub topic: String,
    /// Partitions, when Tributary creates the topic.
    pub partitions: u32,
    /// Replication factor, when Tributary creates the topic; `None`: not
    /// given, 1 is used (and `check` warns).
    pub replication_factor: Option<u32>,
    /// The topic's message limit: larger dead letters are cut to fit.
    pub max_message_bytes: usize,
}

/// A Kafka output: records as JSON.
#[derive(Debug, Clone)]
pub struct PlannedTopicOutput {
    /// Name in the summary.
    pub name: String,
    /// The topic.
    pub topic: PlannedTopic,
}

/// A DLQ or review destination.
#[derive(Debug, Clone)]
pub enum PlannedDeadLetter {
    /// NDJSON files under a root.
    Files {
        /// Root location.
        path: String,
        /// Files roll at about this size.
        max_file_bytes: usize,
    },
    /// A Kafka topic.
    Topic(PlannedTopic),
}

impl PlannedDeadLetter {
    /// Where dead letters go, for messages.
    pub fn describe(&self) -> String {
        match self {
            PlannedDeadLetter::Files { path, .. } => path.clone(),
            PlannedDeadLetter::Topic(t) => {
                format!("kafka topic {} at {}", t.topic, t.connection.brokers)
            }
        }
    }
}

/// Every destination of a plan, as [`outputs`] finds them.
pub(super) struct Destinations<'a> {
    pub(super) outputs: Vec<PlannedOutput>,
    pub(super) topic_outputs: Vec<PlannedTopicOutput>,
    /// Snowflake outputs, with their index in `outputs:`.
    pub(super) snowflake: Vec<(usize, &'a SnowflakeOutputConfig)>,
    pub(super) dlq: PlannedDeadLetter,
    pub(super) review: PlannedDeadLetter,
}

/// `outputs:`, `dlq:` and `review:`.
pub(super) fn outputs<'a>(
    cx: Cx,
    loaded: &'a Loaded,
    source: &PlannedSource,
) -> Result<Destinations<'a>, ConfigError> {
    let p = &loaded.pipeline;
    let topics = Topics {
        cx,
        source: source.kafka(),
    };
    let mut outputs = Vec::new();
    let mut topic_outputs = Vec::new();
    let mut snowflake = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for (i, output) in p.outputs.iter().enumerate() {
        let at = Some(&output.span);
        let name = output.value.name();
        if names.contains(&name) || matches!(name, "dlq" | "review") {
            return Err(cx.at(
                at,
                format!("outputs[{i}]"),
                format!("output name {name:?} is used twice (dlq and review are taken)"),
            ));
        }
        names.push(name);
        match &output.value {
            OutputConfig::Snowflake(sf) => snowflake.push((i, &**sf)),
            OutputConfig::Raw(r) => {
                let key = format!("outputs[{i}].raw");
                if source.kafka().is_none() {
                    return Err(cx.at(
                        at,
                        key,
                        "the raw zone archives Kafka messages; the source is not Kafka",
                    ));
                }
                outputs.push(PlannedOutput {
                    name: r.name.clone(),
                    path: loaded.resolve(r.path.as_str()),
                    options: ParquetOptions {
                        partition_by: vec![raw_zone::DATE_COLUMN.to_string()],
                        compression: codec(cx, &r.compression, &key)?,
                        max_rows: r.roll.max_rows.max(1),
                        max_bytes: r.roll.max_bytes.as_usize().max(1),
                        max_age: r.roll.max_age.map(|d| d.0),
                        row_group_rows: 128 * 1024,
                        max_open_files: 8,
                        budget: row_group_budget(cx, r.max_buffered, at, &key)?,
                    },
                    kind: OutputKind::Raw,
                    origin: Origin {
                        key,
                        span: output.span.clone(),
                    },
                });
            }
            OutputConfig::Kafka(k) => topic_outputs.push(PlannedTopicOutput {
                name: k.name.clone(),
                topic: topics.planned(&format!("outputs[{i}].kafka"), &k.topic_config())?,
            }),
            OutputConfig::Parquet(o) => {
                let key = format!("outputs[{i}].parquet");
                outputs.push(PlannedOutput {
                    name: o.name.clone(),
                    path: loaded.resolve(o.path.as_str()),
                    options: ParquetOptions {
                        partition_by: o.partition_by.clone(),
                        compression: codec(cx, &o.compression, &key)?,
                        max_rows: o.roll.max_rows.max(1),
                        max_bytes: o.roll.max_bytes.as_usize().max(1),
                        max_age: o.roll.max_age.map(|d| d.0),
                        row_group_rows: o.row_group_rows.max(1),
                        max_open_files: o.max_open_files.max(1),
                        budget: row_group_budget(cx, o.max_buffered, at, &key)?,
                    },
                    kind: OutputKind::Records,
                    origin: Origin {
                        key,
                        span: output.span.clone(),
                    },
                });
            }
        }
    }
    if outputs.is_empty() && topic_outputs.is_empty() {
        return Err(cx.at(None, "outputs", "at least one output is needed"));
    }
    let dead_letter = |key: &str, c: &DeadLetterConfig| match c {
        DeadLetterConfig::Files {
            path,
            max_file_bytes,
        } => Ok::<_, ConfigError>(PlannedDeadLetter::Files {
            path: loaded.resolve(path.as_str()),
            max_file_bytes: max_file_bytes.as_usize().max(1),
        }),
        DeadLetterConfig::Kafka(k) => Ok(PlannedDeadLetter::Topic(
            topics.planned(&format!("{key}.kafka"), k)?,
        )),
    };
    let dlq = dead_letter("dlq", &p.dlq)?;
    let review = dead_letter("review", &p.review)?;
    if let Some((key, message)) = shared_root(&outputs, &dlq, &review) {
        return Err(cx.at(None, key, message));
    }
    if source.kafka().is_some()
        && outputs.is_empty()
        && !matches!(dlq, PlannedDeadLetter::Files { .. })
        && !matches!(review, PlannedDeadLetter::Files { .. })
    {
        return Err(cx.at(
            None,
            "outputs",
            "a Kafka source keeps its commit log in a file destination (a Parquet output, or a DLQ or review path); there is none",
        ));
    }
    Ok(Destinations {
        outputs,
        topic_outputs,
        snowflake,
        dlq,
        review,
    })
}

/// Checks what depends on the records' schema: every output's partition
/// columns are columns of the records reaching it.
pub(super) fn check_columns(
    cx: Cx,
    outputs: &[PlannedOutput],
    schema: &SchemaRef,
) -> Result<(), ConfigError> {
    for o in outputs.iter().filter(|o| !o.is_raw()) {
        file_schema(schema, &o.options.partition_by).map_err(|e| {
            cx.at(
                Some(&o.origin.span),
                format!("{}.partition_by", o.origin.key),
                format!(
                    "{e}; the records reaching the output have: {}",
                    super::column_names(schema)
                ),
            )
        })?;
    }
    Ok(())
}

/// Topics to produce to; their brokers default to the Kafka source's.
struct Topics<'a> {
    cx: Cx<'a>,
    source: Option<&'a KafkaConnection>,
}

impl Topics<'_> {
    fn planned(&self, at: &str, t: &KafkaTopicConfig) -> Result<PlannedTopic, ConfigError> {
        let topic = &t.topic;
        let brokers = match (&t.brokers, self.source) {
            (Some(b), _) => b.value.clone(),
            (None, Some(source)) => source.brokers.clone(),
            (None, None) => {
                return Err(self.cx.at(
                    Some(&topic.span),
                    format!("{at}.brokers"),
                    "give `brokers`: the source is not Kafka, so there are none to reuse",
                ));
            }
        };
        if topic.value.trim().is_empty() {
            return Err(self.cx.at(
                Some(&topic.span),
                format!("{at}.topic"),
                "the topic name is empty",
            ));
        }
        Ok(PlannedTopic {
            connection: KafkaConnection {
                brokers,
                properties: t.properties.values(),
            },
            topic: topic.value.clone(),
            partitions: t.partitions.unwrap_or(1).max(1),
            replication_factor: t.replication_factor,
            max_message_bytes: t.max_message_bytes.map_or(
                tributary_connectors::kafka::producer::DEFAULT_MAX_MESSAGE_BYTES,
                |b| b.as_usize(),
            ),
        })
    }
}

/// An output's row-group budget; zero bytes is refused.
fn row_group_budget(
    cx: Cx,
    max_buffered: ByteSize,
    at: Option<&Span>,
    key: &str,
) -> Result<RowGroupBudget, ConfigError> {
    if max_buffered.0 == 0 {
        return Err(cx.at(
            at,
            format!("{key}.max_buffered"),
            "must be more than zero bytes",
        ));
    }
    Ok(RowGroupBudget::new(max_buffered.as_usize()))
}

/// `compression:` (zstd at level 3 when not given).
fn codec(cx: Cx, text: &Option<Text>, key: &str) -> Result<Codec, ConfigError> {
    match text {
        None => Ok(Codec::Zstd(3)),
        Some(text) => parse_codec(text.as_str())
            .map_err(|m| cx.at(Some(&text.span), format!("{key}.compression"), m)),
    }
}

fn parse_codec(text: &str) -> Result<Codec, String> {
    let t = text.trim().to_ascii_lowercase();
    match t.as_str() {
        "zstd" => Ok(Codec::Zstd(3)),
        "snappy" => Ok(Codec::Snappy),
        "none" | "uncompressed" => Ok(Codec::Uncompressed),
        _ => match t.strip_prefix("zstd(").and_then(|r| r.strip_suffix(')')) {
            Some(level) => match level.parse::<i32>() {
                Ok(l) if (1..=22).contains(&l) => Ok(Codec::Zstd(l)),
                _ => Err(format!("zstd level must be 1 to 22, found {level:?}")),
            },
            None => Err(format!(
                "unknown compression {text:?} (use zstd, zstd(N), snappy or none)"
            )),
        },
    }
}

/// Two file destinations with one root, or one inside another, would stage
/// and publish files under the same names and read each other's files: the
/// first such pair, as (key, message).
fn shared_root(
    outputs: &[PlannedOutput],
    dlq: &PlannedDeadLetter,
    review: &PlannedDeadLetter,
) -> Option<(String, String)> {
    let mut roots: Vec<(String, &str)> = outputs
        .iter()
        .enumerate()
        .map(|(i, o)| (format!("outputs[{i}].path"), o.path.as_str()))
        .collect();
    for (key, destination) in [("dlq", dlq), ("review", review)] {
        if let PlannedDeadLetter::Files { path, .. } = destination {
            roots.push((format!("{key}.path"), path.as_str()));
        }
    }
    let dir = |p: &str| format!("{}/", p.trim_start_matches("file://").trim_end_matches('/'));
    for (i, (first_key, first)) in roots.iter().enumerate() {
        for (key, other) in &roots[i + 1..] {
            let (a, b) = (dir(first), dir(other));
            if a.starts_with(&b) || b.starts_with(&a) {
                let how = if a == b {
                    "is the same directory as"
                } else {
                    "overlaps"
                };
                return Some((
                    key.clone(),
                    format!(
                        "{other} {how} {first_key} ({first}): their files would collide; give each destination its own directory"
                    ),
                ));
            }
        }
    }
    None
}
