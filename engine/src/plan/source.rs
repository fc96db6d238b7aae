//! `source:` and `batch:`: where records come from and how they are batched.

use std::time::Duration;

use tributary_connectors::kafka::KafkaConnection;
use tributary_connectors::kafka::consumer::ConsumerSettings;
use tributary_connectors::object_source::ObjectSource;
use tributary_connectors::source::{BatchLimits, FileSource, Source};
use tributary_connectors::store::Storage;

use super::context::Cx;
use crate::config::{ConfigError, KafkaSourceConfig, Loaded, SourceConfig, Text};

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

impl PlannedSource {
    /// The Kafka connection, for a Kafka source.
    pub fn kafka(&self) -> Option<&KafkaConnection> {
        match self {
            PlannedSource::Kafka(k) => Some(&k.settings.connection),
            PlannedSource::Bounded(_) => None,
        }
    }
}

/// `batch:`: records and bytes per batch.
pub(super) fn limits(cx: Cx, loaded: &Loaded) -> Result<BatchLimits, ConfigError> {
    let batch = &loaded.pipeline.batch;
    if batch.max_records == 0 {
        return Err(cx.at(None, "batch.max_records", "must be at least 1"));
    }
    Ok(BatchLimits {
        max_records: batch.max_records,
        max_bytes: batch.max_bytes.as_usize().max(1),
    })
}

/// `source:`: files (local or `s3://`) or Kafka topics. Nothing is opened.
pub(super) fn source(
    cx: Cx,
    loaded: &Loaded,
    limits: BatchLimits,
    storage: &Storage,
) -> Result<PlannedSource, ConfigError> {
    let p = &loaded.pipeline;
    Ok(match &p.source {
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
        SourceConfig::Kafka(k) => PlannedSource::Kafka(kafka(cx, k, limits, p.batch.max_wait.0)?),
    })
}

fn kafka(
    cx: Cx,
    config: &KafkaSourceConfig,
    limits: BatchLimits,
    max_wait: Duration,
) -> Result<PlannedKafkaSource, ConfigError> {
    let at = |text: &Text, key: &str, message: &str| {
        cx.at(Some(&text.span), format!("source.kafka.{key}"), message)
    };
    if config.brokers.value.trim().is_empty() {
        return Err(at(&config.brokers, "brokers", "no brokers given"));
    }
    if config.group.value.trim().is_empty() {
        return Err(at(&config.group, "group", "the consumer group is empty"));
    }
    if config.topics.is_empty() {
        return Err(cx.at(None, "source.kafka.topics", "list at least one topic"));
    }
    for (i, topic) in config.topics.iter().enumerate() {
        let key = format!("topics[{i}]");
        if let Some(pattern) = topic.value.strip_prefix('^') {
            regex::Regex::new(&format!("^{pattern}"))
                .map_err(|e| at(topic, &key, &format!("invalid topic pattern: {e}")))?;
        } else if topic.value.trim().is_empty() {
            return Err(at(topic, &key, "empty topic name"));
        }
    }
    if config.commit_interval.0.is_zero() {
        return Err(cx.at(
            None,
            "source.kafka.commit_interval",
            "must be longer than zero",
        ));
    }
    if config.max_buffered.0 == 0 {
        return Err(cx.at(
            None,
            "source.kafka.max_buffered",
            "must be more than zero bytes",
        ));
    }
    Ok(PlannedKafkaSource {
        settings: ConsumerSettings {
            connection: KafkaConnection {
                brokers: config.brokers.value.clone(),
                properties: config.properties.values(),
            },
            topics: config.topics.iter().map(|t| t.value.clone()).collect(),
            group: config.group.value.clone(),
            start: config.start.into(),
            limits,
            max_wait,
            max_buffered: config.max_buffered.0 as usize,
        },
        commit_interval: config.commit_interval.0,
    })
}
