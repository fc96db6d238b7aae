//! Turns a parsed pipeline file into runnable parts, checking everything that
//! can be checked before data flows: schema files, SQL against the schema the
//! previous stage emits, lookup tables, output settings. `tributary check`
//! is exactly this step.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use tributary_connectors::kafka::KafkaConnection;
use tributary_connectors::kafka::consumer::{ConsumerSettings, StartPosition};
use tributary_connectors::kafka::meta as kafka_meta;
use tributary_connectors::lookup::cache::CachedLookup;
use tributary_connectors::lookup::postgres::PostgresLookup;
use tributary_connectors::lookup::redis::{FieldType, RedisLookup, RedisValue};
use tributary_connectors::lookup::{FileFormat, FileLookup, KeyedSource, LookupSource};
use tributary_connectors::object_source::ObjectSource;
use tributary_connectors::parquet::{Codec, ParquetOptions, RowGroupBudget, file_schema};
use tributary_connectors::raw_zone;
use tributary_connectors::retry::{Exhausted, Retrier, RetryPolicy};
use tributary_connectors::source::{BatchLimits, FileSource, Source};
use tributary_connectors::store::{S3Settings, Storage};
use tributary_stages::Stage;
use tributary_stages::enrich::{Enrich, EnrichSpec, LookupTable, OnMiss, SharedTable};
use tributary_stages::transform::{MappingSpec, Transform, TransformSpec};
use tributary_stages::validate::{RuleSpec, Severity, Validate, ValidateSpec};

use crate::config::{
    CacheConfig, ConfigError, DeadLetterConfig, EnrichConfig, KafkaSourceConfig, Loaded,
    LookupFormat, LookupMode, OnMissConfig, OutputConfig, RedisFieldType, RedisValueConfig,
    SeverityConfig, SnowflakeOutputConfig, SourceConfig, StageConfig, StartConfig, Text,
    TimestampsConfig, TransformConfig, ValidateConfig, WhenExhausted,
};
use crate::runtime::ErrorRateAlert;
use tributary_connectors::snowflake::{
    Connection as SnowflakeConnection, Credentials, LoadTarget, TimestampKind,
};

/// A stage after validate, ready to run.
#[derive(Clone)]
pub struct PlannedStage {
    /// `transform` or `enrich`.
    pub kind: &'static str,
    /// The stage.
    pub stage: Arc<dyn Stage>,
    /// For an enrich stage looking up on demand: what to ask before each batch.
    pub keyed: Option<KeyedEnrich>,
}

/// An enrich stage whose table is fetched per batch, for the batch's keys.
#[derive(Clone)]
pub struct KeyedEnrich {
    /// The stage (the same one as [`PlannedStage::stage`]).
    pub enrich: Arc<Enrich>,
    /// The cached source.
    pub lookup: Arc<CachedLookup>,
    /// The key column of the batches entering the stage.
    pub key_column: String,
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
    /// Whether this is the raw zone (messages as consumed, not processed records).
    pub raw: bool,
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

/// A Snowflake table loaded from a Parquet output's files.
#[derive(Debug, Clone)]
pub struct PlannedSnowflake {
    /// The output's name.
    pub name: String,
    /// The Parquet output whose files are loaded.
    pub from: String,
    /// Account and credentials.
    pub connection: SnowflakeConnection,
    /// Table, stage and file schema.
    pub target: LoadTarget,
    /// Files per load.
    pub max_files: usize,
    /// Longest wait before a load.
    pub max_wait: Duration,
    /// Files waiting before commits wait.
    pub max_backlog: usize,
    /// Whether the stage is created (with the output's URL) when absent.
    pub create_stage: bool,
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

/// The Kafka source, ready to join its group.
#[derive(Debug, Clone)]
pub struct PlannedKafkaSource {
    /// Consumer settings.
    pub settings: ConsumerSettings,
    /// How often each partition commits.
    pub commit_interval: Duration,
}

/// Where records come from.
pub enum PlannedSource {
    /// A bounded source of partitions (files).
    Bounded(Box<dyn Source>),
    /// Kafka topics.
    Kafka(PlannedKafkaSource),
}

/// A lookup: a snapshot with its source and refresh interval, or an on-demand cache.
#[derive(Clone)]
pub struct PlannedLookup {
    /// Name for logs, metrics and `CacheInvalidated` events.
    pub name: String,
    /// Key columns.
    pub keys: Vec<String>,
    /// Where snapshots come from (`None` for on-demand lookups).
    pub source: Option<Arc<dyn LookupSource>>,
    /// The handle the enrich stage reads.
    pub table: SharedTable,
    /// How often to reload, if at all.
    pub refresh: Option<Duration>,
    /// The on-demand cache, if the lookup is on demand.
    pub cache: Option<Arc<CachedLookup>>,
    /// Wakes the refresher to reload now (an invalidation arrived).
    pub reload: Arc<tokio::sync::Notify>,
    /// Where invalidation events come from.
    pub invalidate: Option<PlannedInvalidation>,
}

/// A topic of `CacheInvalidated` events.
#[derive(Debug, Clone)]
pub struct PlannedInvalidation {
    /// How to reach it.
    pub connection: KafkaConnection,
    /// The topic.
    pub topic: String,
}

/// Everything `run` needs.
pub struct Plan {
    /// Pipeline name.
    pub name: String,
    /// The pipeline file.
    pub file: PathBuf,
    /// The source.
    pub source: PlannedSource,
    /// Batch limits for readers.
    pub limits: BatchLimits,
    /// The first stage.
    pub validate: Arc<Validate>,
    /// The stages after validate.
    pub stages: Vec<PlannedStage>,
    /// Parquet outputs.
    pub outputs: Vec<PlannedOutput>,
    /// Kafka outputs.
    pub topic_outputs: Vec<PlannedTopicOutput>,
    /// Dead-letter destination.
    pub dlq: PlannedDeadLetter,
    /// Review destination.
    pub review: PlannedDeadLetter,
    /// Lookups to refresh.
    pub lookups: Vec<PlannedLookup>,
    /// Partitions processed at once.
    pub workers: usize,
    /// Schema of the records reaching the outputs.
    pub output_schema: SchemaRef,
    /// How remote stores are reached and retried.
    pub storage: Storage,
    /// Snowflake tables loaded from Parquet outputs.
    pub snowflake: Vec<PlannedSnowflake>,
    /// The error-rate alert, if configured.
    pub error_rate: Option<ErrorRateAlert>,
}

/// Builds the plan, refusing the pipeline at the first problem.
pub fn build(loaded: &Loaded) -> Result<Plan, ConfigError> {
    let p = &loaded.pipeline;
    let err = |span: Option<&crate::config::Span>, key: String, msg: String| {
        ConfigError::at(&loaded.file, span, key, msg)
    };

    if p.batch.max_records == 0 {
        return Err(err(
            None,
            "batch.max_records".into(),
            "must be at least 1".into(),
        ));
    }
    let limits = BatchLimits {
        max_records: p.batch.max_records,
        max_bytes: p.batch.max_bytes.as_usize().max(1),
    };
    let storage = build_storage(p);
    let source = match &p.source {
        SourceConfig::File(f) if f.path.as_str().starts_with("s3://") => {
            PlannedSource::Bounded(Box::new(ObjectSource::new(
                f.path.value.clone(),
                storage.clone(),
                f.max_line_bytes.as_usize(),
            )))
        }
        SourceConfig::File(f) => PlannedSource::Bounded(Box::new(FileSource::new(
            vec![loaded.resolve(f.path.as_str())],
            f.chunk_bytes.0,
            f.max_line_bytes.as_usize(),
        ))),
        SourceConfig::Kafka(k) => {
            PlannedSource::Kafka(build_kafka_source(loaded, k, limits, p.batch.max_wait.0)?)
        }
    };
    let source_brokers = match &p.source {
        SourceConfig::Kafka(k) => Some(k.brokers.value.clone()),
        SourceConfig::File(_) => None,
    };
    let topic = |at: &str,
                 brokers: &Option<Text>,
                 topic: &Text,
                 properties: &BTreeMap<String, Text>,
                 (partitions, replication_factor, max_message_bytes): (
        Option<u32>,
        Option<u32>,
        Option<usize>,
    )| {
        let brokers = match brokers {
            Some(b) => b.value.clone(),
            None => source_brokers.clone().ok_or_else(|| {
                err(
                    Some(&topic.span),
                    format!("{at}.brokers"),
                    "give `brokers`: the source is not Kafka, so there are none to reuse".into(),
                )
            })?,
        };
        if topic.value.trim().is_empty() {
            return Err(err(
                Some(&topic.span),
                format!("{at}.topic"),
                "the topic name is empty".into(),
            ));
        }
        Ok(PlannedTopic {
            connection: KafkaConnection {
                brokers,
                properties: properties
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value.clone()))
                    .collect(),
            },
            topic: topic.value.clone(),
            partitions: partitions.unwrap_or(1).max(1),
            replication_factor,
            max_message_bytes: max_message_bytes
                .unwrap_or(tributary_connectors::kafka::producer::DEFAULT_MAX_MESSAGE_BYTES),
        })
    };

    let Some(StageConfig::Validate(first)) = p.stages.first().map(|s| &s.value) else {
        return Err(err(
            p.stages.first().map(|s| &s.span),
            "stages[0]".into(),
            "the first stage must be `validate`: it turns raw JSON into typed columns".into(),
        ));
    };
    let validate = Arc::new(build_validate(loaded, first)?);
    let mut schema = validate.output_schema();
    if let PlannedSource::Kafka(_) = &source {
        // Kafka metadata columns are appended right after validation.
        schema = kafka_meta::extend_schema(&schema);
    }
    let mut stages = Vec::new();
    let mut lookups = Vec::new();
    let mut keyed = None;
    for (i, located) in p.stages.iter().enumerate().skip(1) {
        let stage = &located.value;
        let key = format!("stages[{i}].{}", stage.kind());
        let planned: Arc<dyn Stage> = match stage {
            StageConfig::Validate(_) => {
                return Err(err(
                    Some(&located.span),
                    key,
                    "validate may only be the first stage".into(),
                ));
            }
            StageConfig::Transform(t) => {
                Arc::new(build_transform(loaded, t, &schema, &key, &located.span)?)
            }
            StageConfig::Enrich(e) => {
                let kafka = match &source {
                    PlannedSource::Kafka(k) => Some(&k.settings.connection),
                    PlannedSource::Bounded(_) => None,
                };
                let (enrich, lookup) = build_enrich(loaded, e, &schema, &key, kafka)?;
                let enrich = Arc::new(enrich);
                keyed = lookup.cache.clone().map(|cache| KeyedEnrich {
                    enrich: enrich.clone(),
                    lookup: cache,
                    key_column: lookup.keys[0].clone(),
                });
                lookups.push(lookup);
                enrich
            }
        };
        schema = planned.output_schema();
        stages.push(PlannedStage {
            kind: stage.kind(),
            stage: planned,
            keyed: keyed.take(),
        });
    }

    let mut outputs = Vec::new();
    let mut topic_outputs = Vec::new();
    let mut snowflake = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for (i, output) in p.outputs.iter().enumerate() {
        let at = Some(&output.span);
        let name = output.value.name();
        if names.contains(&name) || matches!(name, "dlq" | "review") {
            return Err(err(
                at,
                format!("outputs[{i}]"),
                format!("output name {name:?} is used twice (dlq and review are taken)"),
            ));
        }
        names.push(name);
        let o = match &output.value {
            OutputConfig::Parquet(o) => o,
            OutputConfig::Snowflake(sf) => {
                snowflake.push((i, sf));
                continue;
            }
            OutputConfig::Raw(r) => {
                if !matches!(source, PlannedSource::Kafka(_)) {
                    return Err(err(
                        at,
                        format!("outputs[{i}].raw"),
                        "the raw zone archives Kafka messages; the source is not Kafka".into(),
                    ));
                }
                let compression = match &r.compression {
                    None => Codec::Zstd(3),
                    Some(text) => parse_codec(text.as_str()).map_err(|m| {
                        err(Some(&text.span), format!("outputs[{i}].raw.compression"), m)
                    })?,
                };
                outputs.push(PlannedOutput {
                    name: r.name.clone(),
                    path: loaded.resolve(r.path.as_str()),
                    options: ParquetOptions {
                        partition_by: vec![raw_zone::DATE_COLUMN.to_string()],
                        compression,
                        max_rows: r.roll.max_rows.max(1),
                        max_bytes: r.roll.max_bytes.as_usize().max(1),
                        max_age: r.roll.max_age.map(|d| d.0),
                        row_group_rows: 128 * 1024,
                        max_open_files: 8,
                        budget: row_group_budget(r.max_buffered)
                            .map_err(|m| err(at, format!("outputs[{i}].raw.max_buffered"), m))?,
                    },
                    raw: true,
                });
                continue;
            }
            OutputConfig::Kafka(k) => {
                topic_outputs.push(PlannedTopicOutput {
                    name: k.name.clone(),
                    topic: topic(
                        &format!("outputs[{i}].kafka"),
                        &k.brokers,
                        &k.topic,
                        &k.properties,
                        (k.partitions, k.replication_factor, None),
                    )?,
                });
                continue;
            }
        };
        let key = format!("outputs[{i}].parquet");
        file_schema(&schema, &o.partition_by).map_err(|e| {
            err(
                at,
                format!("{key}.partition_by"),
                format!(
                    "{e}; the records reaching the output have: {}",
                    column_names(&schema)
                ),
            )
        })?;
        let compression = match &o.compression {
            None => Codec::Zstd(3),
            Some(text) => parse_codec(text.as_str())
                .map_err(|m| err(Some(&text.span), format!("{key}.compression"), m))?,
        };
        outputs.push(PlannedOutput {
            name: o.name.clone(),
            path: loaded.resolve(o.path.as_str()),
            options: ParquetOptions {
                partition_by: o.partition_by.clone(),
                compression,
                max_rows: o.roll.max_rows.max(1),
                max_bytes: o.roll.max_bytes.as_usize().max(1),
                max_age: o.roll.max_age.map(|d| d.0),
                row_group_rows: o.row_group_rows.max(1),
                max_open_files: o.max_open_files.max(1),
                budget: row_group_budget(o.max_buffered)
                    .map_err(|m| err(at, format!("{key}.max_buffered"), m))?,
            },
            raw: false,
        });
    }
    let snowflake = snowflake
        .into_iter()
        .map(|(i, sf)| build_snowflake(loaded, i, sf, &p.outputs, &outputs, &schema))
        .collect::<Result<Vec<_>, _>>()?;
    if outputs.is_empty() && topic_outputs.is_empty() {
        return Err(err(
            None,
            "outputs".into(),
            "at least one output is needed".into(),
        ));
    }
    let dead_letter = |key: &str, c: &DeadLetterConfig| match (&c.path, &c.kafka) {
        (Some(path), None) => Ok(PlannedDeadLetter::Files {
            path: loaded.resolve(path.as_str()),
            max_file_bytes: c.max_file_bytes.as_usize().max(1),
        }),
        (None, Some(k)) => Ok(PlannedDeadLetter::Topic(topic(
            &format!("{key}.kafka"),
            &k.brokers,
            &k.topic,
            &k.properties,
            (
                k.partitions,
                k.replication_factor,
                k.max_message_bytes.as_ref().map(|b| b.as_usize()),
            ),
        )?)),
        _ => Err(err(
            None,
            key.into(),
            "give exactly one of `path` (NDJSON files) or `kafka` (a topic)".into(),
        )),
    };
    let dlq = dead_letter("dlq", &p.dlq)?;
    let review = dead_letter("review", &p.review)?;
    if let Some((key, message)) = shared_root(&outputs, &dlq, &review) {
        return Err(err(None, key, message));
    }
    if let PlannedSource::Kafka(_) = &source
        && outputs.is_empty()
        && !matches!(dlq, PlannedDeadLetter::Files { .. })
        && !matches!(review, PlannedDeadLetter::Files { .. })
    {
        return Err(err(
            None,
            "outputs".into(),
            "a Kafka source keeps its commit log in a file destination (a Parquet output, or a DLQ or review path); there is none".into(),
        ));
    }
    let workers = match p.workers {
        Some(0) => return Err(err(None, "workers".into(), "must be at least 1".into())),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    Ok(Plan {
        name: p.name.clone(),
        file: loaded.file.clone(),
        source,
        limits,
        validate,
        stages,
        outputs,
        topic_outputs,
        dlq,
        review,
        lookups,
        workers,
        output_schema: schema,
        storage,
        snowflake,
        error_rate: build_error_rate(loaded)?,
    })
}

fn build_error_rate(loaded: &Loaded) -> Result<Option<ErrorRateAlert>, ConfigError> {
    let Some(e) = &loaded.pipeline.alerts.error_rate else {
        return Ok(None);
    };
    if !(0.0..1.0).contains(&e.threshold) {
        return Err(ConfigError::at(
            &loaded.file,
            None,
            "alerts.error_rate.threshold",
            format!("{} is not a fraction in [0, 1) (5 % is 0.05)", e.threshold),
        ));
    }
    if let Some(url) = &e.webhook
        && !(url.value.starts_with("http://") || url.value.starts_with("https://"))
    {
        return Err(ConfigError::at(
            &loaded.file,
            Some(&url.span),
            "alerts.error_rate.webhook",
            format!("{:?} is not an http(s) URL", url.value),
        ));
    }
    Ok(Some(ErrorRateAlert {
        threshold: e.threshold,
        window: e.window.0.max(std::time::Duration::from_secs(1)),
        min_records: e.min_records,
        webhook: e.webhook.as_ref().map(|w| w.value.clone()),
    }))
}

/// Checks a `snowflake` output: its Parquet output exists, credentials are usable, its columns map.
fn build_snowflake(
    loaded: &Loaded,
    index: usize,
    sf: &SnowflakeOutputConfig,
    configs: &[crate::config::Located<OutputConfig>],
    outputs: &[PlannedOutput],
    schema: &SchemaRef,
) -> Result<PlannedSnowflake, ConfigError> {
    let key = format!("outputs[{index}].snowflake");
    let span = Some(&configs[index].span);
    let err = |k: &str, m: String| ConfigError::at(&loaded.file, span, format!("{key}.{k}"), m);
    let Some(from) = outputs.iter().find(|o| o.name == sf.from) else {
        return Err(err(
            "from",
            format!(
                "{:?} is not a Parquet output; the Parquet outputs are: {}",
                sf.from,
                outputs
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    let password = sf
        .password
        .as_ref()
        .map(|t| t.value.clone())
        .or_else(|| std::env::var("SNOWFLAKE_PASSWORD").ok());
    let key_path = sf
        .private_key_path
        .as_ref()
        .map(|t| loaded.resolve(t.as_str()))
        .or_else(|| std::env::var("SNOWFLAKE_PRIVATE_KEY_PATH").ok());
    let credentials = match (password, key_path) {
        (_, Some(path)) => {
            let pem = std::fs::read_to_string(&path)
                .map_err(|e| err("private_key_path", format!("{path}: {e}")))?;
            tributary_connectors::snowflake::public_key_fingerprint(&pem)
                .map_err(|e| err("private_key_path", format!("{path}: {e}")))?;
            Credentials::KeyPair {
                private_key_pem: pem,
            }
        }
        (Some(password), None) => Credentials::Password(password),
        (None, None) => {
            return Err(err(
                "password",
                "give `private_key_path` (key-pair JWT) or `password` (or set SNOWFLAKE_PRIVATE_KEY_PATH / SNOWFLAKE_PASSWORD)".into(),
            ));
        }
    };
    let file_columns =
        file_schema(schema, &from.options.partition_by).map_err(|e| err("from", e.to_string()))?;
    let timestamps = match sf.timestamps {
        TimestampsConfig::Auto => TimestampKind::Auto,
        TimestampsConfig::Ntz => TimestampKind::Ntz,
        TimestampsConfig::Tz => TimestampKind::Tz,
    };
    for field in file_columns.fields() {
        if tributary_connectors::snowflake::column_type(field.data_type(), timestamps).is_none() {
            return Err(err(
                "from",
                format!(
                    "column {} ({}) has no Snowflake type",
                    field.name(),
                    field.data_type()
                ),
            ));
        }
    }
    let text = |t: &Option<Text>| t.as_ref().map(|t| t.value.clone());
    let account = sf.account.value.clone();
    Ok(PlannedSnowflake {
        name: sf.name.clone(),
        from: sf.from.clone(),
        connection: SnowflakeConnection {
            url: text(&sf.url)
                .unwrap_or_else(|| format!("https://{account}.snowflakecomputing.com"))
                .trim_end_matches('/')
                .to_string(),
            account,
            user: sf.user.value.clone(),
            credentials,
            database: sf.database.value.clone(),
            schema: sf.schema.value.clone(),
            warehouse: text(&sf.warehouse),
            role: text(&sf.role),
            session_parameters: sf
                .session_parameters
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect(),
        },
        target: LoadTarget {
            table: sf.table.value.clone(),
            stage: sf.stage.value.clone(),
            stage_url: None,
            storage_integration: text(&sf.storage_integration),
            schema: file_columns,
            timestamps,
        },
        max_files: sf.max_files.max(1),
        max_wait: sf.max_wait.0,
        max_backlog: sf.max_backlog.max(1),
        create_stage: sf.create_stage,
    })
}

/// S3 settings and the retry policy, from `storage:` and `retry:`.
fn build_storage(p: &crate::config::PipelineFile) -> Storage {
    let text = |t: &Option<Text>| t.as_ref().map(|t| t.value.clone());
    let s3 = &p.storage.s3;
    Storage {
        s3: S3Settings {
            region: text(&s3.region),
            endpoint: text(&s3.endpoint),
            path_style: s3.path_style,
            access_key_id: text(&s3.access_key_id),
            secret_access_key: text(&s3.secret_access_key),
            session_token: text(&s3.session_token),
            profile: text(&s3.profile),
        },
        retry: retry_policy(&p.retry),
    }
}

/// The pipeline's retry policy.
pub fn retry_policy(r: &crate::config::RetryConfig) -> RetryPolicy {
    RetryPolicy {
        initial_delay: r.initial_delay.0,
        max_delay: r.max_delay.0.max(r.initial_delay.0),
        max_elapsed: r.max_elapsed.0,
        exhausted: match r.when_exhausted {
            WhenExhausted::Wait => Exhausted::Wait,
            WhenExhausted::Fail => Exhausted::Fail,
        },
    }
}

fn build_kafka_source(
    loaded: &Loaded,
    config: &KafkaSourceConfig,
    limits: BatchLimits,
    max_wait: Duration,
) -> Result<PlannedKafkaSource, ConfigError> {
    let at = |text: &Text, key: &str, message: String| {
        ConfigError::at(
            &loaded.file,
            Some(&text.span),
            format!("source.kafka.{key}"),
            message,
        )
    };
    if config.brokers.value.trim().is_empty() {
        return Err(at(&config.brokers, "brokers", "no brokers given".into()));
    }
    if config.group.value.trim().is_empty() {
        return Err(at(
            &config.group,
            "group",
            "the consumer group is empty".into(),
        ));
    }
    if config.topics.is_empty() {
        return Err(ConfigError::at(
            &loaded.file,
            None,
            "source.kafka.topics",
            "list at least one topic",
        ));
    }
    for (i, topic) in config.topics.iter().enumerate() {
        if let Some(pattern) = topic.value.strip_prefix('^') {
            regex::Regex::new(&format!("^{pattern}")).map_err(|e| {
                at(
                    topic,
                    &format!("topics[{i}]"),
                    format!("invalid topic pattern: {e}"),
                )
            })?;
        } else if topic.value.trim().is_empty() {
            return Err(at(
                topic,
                &format!("topics[{i}]"),
                "empty topic name".into(),
            ));
        }
    }
    if config.commit_interval.0.is_zero() {
        return Err(ConfigError::at(
            &loaded.file,
            None,
            "source.kafka.commit_interval",
            "must be longer than zero",
        ));
    }
    if config.max_buffered.0 == 0 {
        return Err(ConfigError::at(
            &loaded.file,
            None,
            "source.kafka.max_buffered",
            "must be more than zero bytes",
        ));
    }
    Ok(PlannedKafkaSource {
        settings: ConsumerSettings {
            connection: KafkaConnection {
                brokers: config.brokers.value.clone(),
                properties: config
                    .properties
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value.clone()))
                    .collect(),
            },
            topics: config.topics.iter().map(|t| t.value.clone()).collect(),
            group: config.group.value.clone(),
            start: match config.start {
                StartConfig::Earliest => StartPosition::Earliest,
                StartConfig::Latest => StartPosition::Latest,
            },
            limits,
            max_wait,
            max_buffered: config.max_buffered.0 as usize,
        },
        commit_interval: config.commit_interval.0,
    })
}

fn column_names(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An output's row-group budget; zero bytes is refused.
fn row_group_budget(max_buffered: crate::config::ByteSize) -> Result<RowGroupBudget, String> {
    if max_buffered.0 == 0 {
        return Err("must be more than zero bytes".into());
    }
    Ok(RowGroupBudget::new(max_buffered.as_usize()))
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

fn build_validate(loaded: &Loaded, config: &ValidateConfig) -> Result<Validate, ConfigError> {
    let key = "stages[0].validate";
    let schema_path = loaded.resolve(config.schema.as_str());
    let at = |text: &Text, key: String, message: String| {
        ConfigError::at(&loaded.file, Some(&text.span), key, message)
    };
    let raw = std::fs::read_to_string(&schema_path).map_err(|e| {
        at(
            &config.schema,
            format!("{key}.schema"),
            format!("cannot read schema file {schema_path}: {e}"),
        )
    })?;
    let document: serde_json::Value = serde_json::from_str(&raw).map_err(|e| {
        at(
            &config.schema,
            format!("{key}.schema"),
            format!("{schema_path}:{}:{}: not JSON: {e}", e.line(), e.column()),
        )
    })?;
    let rules = config
        .rules
        .iter()
        .map(|r| RuleSpec {
            name: r.name.clone(),
            sql: r.sql.value.clone(),
            severity: match r.severity {
                SeverityConfig::Error => Severity::Error,
                SeverityConfig::Warn => Severity::Warn,
            },
        })
        .collect();
    let spec = ValidateSpec {
        schema: document,
        max_record_bytes: config.max_record_bytes.as_usize(),
        rules,
    };
    Validate::new(spec).map_err(|e| match &e {
        tributary_stages::validate::ValidateError::Rule { index, .. } => {
            let rule = &config.rules[*index];
            at(
                &rule.sql,
                format!("{key}.rules[{index}].sql"),
                e.to_string(),
            )
        }
        _ => at(
            &config.schema,
            format!("{key}.schema"),
            format!("{schema_path}: {e}"),
        ),
    })
}

fn build_transform(
    loaded: &Loaded,
    config: &TransformConfig,
    input: &SchemaRef,
    key: &str,
    stage_span: &crate::config::Span,
) -> Result<Transform, ConfigError> {
    let (spec, span, sub) = match (&config.sql, &config.mapping) {
        (Some(sql), None) => (
            TransformSpec::Sql(sql.value.clone()),
            Some(&sql.span),
            "sql",
        ),
        (None, Some(m)) => (
            TransformSpec::Mapping(MappingSpec {
                flatten: m.flatten.clone(),
                defaults: m.defaults.clone().into_iter().collect(),
                cast: m.cast.clone().into_iter().collect(),
                rename: m.rename.clone().into_iter().collect(),
                drop: m.drop.clone(),
            }),
            Some(stage_span),
            "mapping",
        ),
        _ => {
            return Err(ConfigError::at(
                &loaded.file,
                Some(stage_span),
                key,
                "give exactly one of `sql` or `mapping`",
            ));
        }
    };
    Transform::new(&spec, input).map_err(|e| {
        ConfigError::at(
            &loaded.file,
            span,
            format!("{key}.{sub}"),
            format!("{e}\n  input columns: {}", describe_schema(input)),
        )
    })
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

fn describe_schema(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn build_enrich(
    loaded: &Loaded,
    config: &EnrichConfig,
    input: &SchemaRef,
    key: &str,
    kafka: Option<&KafkaConnection>,
) -> Result<(Enrich, PlannedLookup), ConfigError> {
    let l = &config.lookup;
    let keys: Vec<String> = l.key.iter().into_iter().cloned().collect();
    let lookup_at = |span: Option<&crate::config::Span>, sub: &str, message: String| {
        ConfigError::at(&loaded.file, span, format!("{key}.lookup{sub}"), message)
    };
    let kinds = [l.path.is_some(), l.postgres.is_some(), l.redis.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(lookup_at(
            None,
            "",
            "give exactly one of `path` (a file), `postgres` or `redis`".into(),
        ));
    }
    let mut snapshot: Option<Arc<dyn LookupSource>> = None;
    let mut cache = None;
    let (table, name) = if let Some(path_text) = &l.path {
        let path = PathBuf::from(loaded.resolve(path_text.as_str()));
        let at_path = |message: String| lookup_at(Some(&path_text.span), ".path", message);
        let format = l.format.map(|f| match f {
            LookupFormat::Csv => FileFormat::Csv,
            LookupFormat::Parquet => FileFormat::Parquet,
            LookupFormat::Ndjson => FileFormat::Ndjson,
        });
        let source = FileLookup::new(path.clone(), format).map_err(|e| at_path(e.to_string()))?;
        let batch = source
            .load_blocking()
            .map_err(|e| at_path(format!("lookup table cannot be read: {e}")))?;
        snapshot = Some(Arc::new(source));
        let name = l.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "lookup".into())
        });
        (
            LookupTable::new(batch, &keys).map_err(|e| at_path(e.to_string()))?,
            name,
        )
    } else if let Some(pg) = &l.postgres {
        let at = |message: String| lookup_at(Some(&pg.url.span), ".postgres", message);
        let query = match (&pg.table, &pg.query) {
            (Some(table), None) => format!("SELECT * FROM {table}"),
            (None, Some(query)) => query.value.trim().trim_end_matches(';').to_string(),
            _ => return Err(at("give exactly one of `table` or `query`".into())),
        };
        let name = l
            .name
            .clone()
            .or_else(|| pg.table.clone())
            .unwrap_or_else(|| "lookup".into());
        let on_demand = pg.mode == LookupMode::OnDemand;
        let by_key = match (on_demand, keys.as_slice()) {
            (false, _) => None,
            (true, [one]) => Some(one.as_str()),
            (true, _) => return Err(at("on-demand lookups take exactly one key column".into())),
        };
        let source = block_on_io(PostgresLookup::connect(
            &name,
            pg.url.as_str(),
            &query,
            by_key,
        ))
        .map_err(|e| at(format!("{e}")))?;
        if on_demand {
            check_key_type(input, &keys[0]).map_err(at)?;
            let table = LookupTable::new(RecordBatch::new_empty(source.schema()), &keys)
                .map_err(|e| at(e.to_string()))?;
            cache = Some(cached(Arc::new(source), &name, &pg.cache));
            (table, name)
        } else {
            let batch = block_on_io(source.load_now())
                .map_err(|e| at(format!("lookup table cannot be read: {e}")))?;
            snapshot = Some(Arc::new(source));
            (
                LookupTable::new(batch, &keys).map_err(|e| at(e.to_string()))?,
                name,
            )
        }
    } else if let Some(redis) = &l.redis {
        let at = |message: String| lookup_at(Some(&redis.url.span), ".redis", message);
        let [one] = keys.as_slice() else {
            return Err(at("Redis lookups take exactly one key column".into()));
        };
        check_key_type(input, one).map_err(at)?;
        let name = l.name.clone().unwrap_or_else(|| "lookup".into());
        let fields = redis
            .fields
            .iter()
            .map(|(f, t)| {
                (
                    f.clone(),
                    match t {
                        RedisFieldType::String => FieldType::String,
                        RedisFieldType::Int => FieldType::Int,
                        RedisFieldType::Float => FieldType::Float,
                        RedisFieldType::Bool => FieldType::Bool,
                    },
                )
            })
            .collect();
        let value = match redis.value {
            RedisValueConfig::Hash => RedisValue::Hash,
            RedisValueConfig::Json => RedisValue::Json,
        };
        let source = RedisLookup::new(
            &name,
            redis.url.as_str(),
            &redis.key_prefix,
            value,
            one,
            fields,
        )
        .map_err(|e| at(e.to_string()))?;
        block_on_io(source.ping_now()).map_err(|e| at(e.to_string()))?;
        let table = LookupTable::new(RecordBatch::new_empty(source.schema()), &keys)
            .map_err(|e| at(e.to_string()))?;
        cache = Some(cached(Arc::new(source), &name, &redis.cache));
        (table, name)
    } else {
        unreachable!("exactly one lookup kind was checked above")
    };
    let invalidate = match &l.invalidate {
        None => None,
        Some(inv) => {
            let connection = match (&inv.brokers, kafka) {
                (Some(brokers), _) => KafkaConnection {
                    brokers: brokers.value.clone(),
                    properties: Default::default(),
                },
                (None, Some(kafka)) => kafka.clone(),
                (None, None) => {
                    return Err(lookup_at(
                        Some(&inv.topic.span),
                        ".invalidate.brokers",
                        "name the brokers of the invalidation topic (the source is not Kafka)"
                            .into(),
                    ));
                }
            };
            Some(PlannedInvalidation {
                connection,
                topic: inv.topic.value.clone(),
            })
        }
    };
    let table = SharedTable::new(table);
    let spec = EnrichSpec {
        name: name.clone(),
        keys: keys.iter().map(|k| (k.clone(), k.clone())).collect(),
        columns: l.columns.clone(),
        on_miss: on_miss(config.on_miss),
        on_error: on_miss(config.on_error),
        derive: config
            .derive
            .iter()
            .map(|d| (d.name.clone(), d.sql.value.clone()))
            .collect(),
    };
    let enrich = Enrich::new(spec, table.clone(), input).map_err(|e| {
        let (span, sub) = match &e {
            tributary_stages::enrich::EnrichError::Derive { name, .. } => {
                let i = config
                    .derive
                    .iter()
                    .position(|d| &d.name == name)
                    .unwrap_or(0);
                (
                    config.derive.get(i).map(|d| &d.sql.span),
                    format!("derive[{i}].sql"),
                )
            }
            _ => (None, "lookup".to_string()),
        };
        ConfigError::at(
            &loaded.file,
            span,
            format!("{key}.{sub}"),
            format!("{e}\n  input columns: {}", describe_schema(input)),
        )
    })?;
    Ok((
        enrich,
        PlannedLookup {
            name,
            keys,
            source: snapshot,
            table,
            refresh: l.refresh_interval.map(|d| d.0),
            cache,
            reload: Arc::default(),
            invalidate,
        },
    ))
}

fn on_miss(policy: OnMissConfig) -> OnMiss {
    match policy {
        OnMissConfig::Null => OnMiss::Null,
        OnMissConfig::Review => OnMiss::Review,
        OnMissConfig::Dlq => OnMiss::Dlq,
    }
}

/// An on-demand source behind its cache; it retries for `retry_for`, then its records follow `on_error`.
fn cached(source: Arc<dyn KeyedSource>, name: &str, cache: &CacheConfig) -> Arc<CachedLookup> {
    let retrier = Retrier::new(
        format!("lookup {name}"),
        RetryPolicy {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            max_elapsed: cache.retry_for.0,
            exhausted: Exhausted::Fail,
        },
    );
    Arc::new(CachedLookup::new(
        source,
        cache.max_entries,
        cache.ttl.0,
        retrier,
    ))
}

/// On-demand keys travel as text: the batch's key column must render as one.
fn check_key_type(input: &SchemaRef, key: &str) -> Result<(), String> {
    use arrow::datatypes::DataType::*;
    let field = input.field_with_name(key).map_err(|_| {
        format!(
            "key {key:?} is not a column of the input ({})",
            describe_schema(input)
        )
    })?;
    match field.data_type() {
        Utf8 | LargeUtf8 | Utf8View | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32
        | UInt64 => Ok(()),
        other => Err(format!(
            "key {key:?} is {other}; on-demand lookups take text or integer keys (cast it in a transform)"
        )),
    }
}

/// Runs `future` to completion on a runtime of its own, on a thread of its
/// own (planning happens before, and sometimes inside, the run's runtime).
fn block_on_io<T: Send>(future: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|runtime| runtime.block_on(future))
            })
            .join()
    })
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    .unwrap_or_else(|e| panic!("cannot start a runtime to reach a lookup source: {e}"))
}
