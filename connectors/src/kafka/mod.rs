//! Kafka in and out, over librdkafka (`rdkafka`).
//!
//! - [`consumer`]: a consumer-group member on its own thread that cuts each
//!   assigned partition's messages into [`RawBatch`](crate::source::RawBatch)es
//!   and hands them to one task per partition, with rebalance hooks so the
//!   engine can finish a partition's work before it is released.
//! - [`producer`]: idempotent producers for dead letters (original bytes,
//!   `tributary.*` context headers) and for records as JSON.
//! - [`dead_letters`]: a dead-letter topic read back, for inspection.
//! - [`sample`]: the next records a group would read, for dry runs.
//! - [`tail`]: a topic followed from its end by every process (broadcast).
//! - [`meta`]: message metadata (key, topic, partition, offset, timestamp,
//!   headers) as Arrow columns.

pub mod admin;
pub mod consumer;
pub mod dead_letters;
pub mod meta;
pub mod producer;
pub mod sample;
pub mod tail;

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

/// A Kafka client that cannot be created or used.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// librdkafka refused the configuration or the operation.
    #[error("kafka ({context}): {source}")]
    Client {
        /// What was being done.
        context: String,
        /// The cause.
        source: rdkafka::error::KafkaError,
    },
    /// A message was not acknowledged by the broker.
    #[error("kafka delivery to {topic}: {message}")]
    Delivery {
        /// The destination topic.
        topic: String,
        /// Why.
        message: String,
    },
    /// The consumer stopped: a fatal client error, or its thread could not
    /// start or panicked.
    #[error("kafka consumer of {topics}: {message}")]
    Consumer {
        /// The topics it reads.
        topics: String,
        /// Why.
        message: String,
    },
    /// The brokers know no such topic (or it has no partitions).
    #[error("kafka topic {topic}: no such topic (or it has no partitions)")]
    NoSuchTopic {
        /// The topic.
        topic: String,
    },
    /// The brokers refused to create a topic.
    #[error("kafka topic {topic}: creating it failed: {code}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The brokers' error code.
        code: String,
    },
    /// Reading a topic to its end stopped short: nothing arrived for too long.
    #[error("kafka topic {topic}: {message}")]
    Stalled {
        /// The topic.
        topic: String,
        /// How far it got.
        message: String,
    },
    /// A message of a dead-letter topic is not a letter that can be replayed.
    #[error("kafka topic {topic}, partition {partition}, offset {offset}: {message}")]
    BadLetter {
        /// The topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// What is wrong with it.
        message: String,
    },
    /// The request does not apply to Kafka sources as given.
    #[error("kafka: {0}")]
    Unsupported(String),
}

/// The partition ids of `topic`, as the brokers report them now (an error if it has none).
pub(crate) fn partitions_of<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: std::time::Duration,
) -> Result<Vec<i32>, KafkaError> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(KafkaError::client(format!(
            "reading the metadata of {topic}"
        )))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(KafkaError::NoSuchTopic {
            topic: topic.to_string(),
        });
    }
    Ok(partitions)
}

/// A consumer in `group` that commits nothing by itself: for reading from
/// chosen offsets with a plain assignment, without joining the group.
pub(crate) fn standalone_consumer(
    connection: &KafkaConnection,
    group: &str,
) -> Result<rdkafka::consumer::BaseConsumer, KafkaError> {
    connection
        .client_config(&[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "false"),
        ])
        .create()
        .map_err(KafkaError::client("creating a consumer"))
}

/// `group`'s committed offsets on every partition of `topics`
/// (`Offset::Invalid` where it has none).
pub(crate) fn committed_offsets(
    consumer: &rdkafka::consumer::BaseConsumer,
    group: &str,
    topics: &[&str],
    timeout: std::time::Duration,
) -> Result<rdkafka::TopicPartitionList, KafkaError> {
    use rdkafka::consumer::Consumer;
    let mut partitions = rdkafka::TopicPartitionList::new();
    for topic in topics {
        for partition in partitions_of(consumer.client(), topic, timeout)? {
            partitions
                .add_partition(topic, partition)
                .set_offset(rdkafka::Offset::Invalid)
                .map_err(KafkaError::client("building the partition list"))?;
        }
    }
    consumer
        .committed_offsets(partitions, timeout)
        .map_err(KafkaError::client(format!(
            "reading group {group}'s offsets"
        )))
}

impl KafkaError {
    pub(crate) fn client(
        context: impl Into<String>,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let context = context.into();
        move |source| KafkaError::Client { context, source }
    }
}

/// Connection settings shared by consumers and producers; `Debug` hides the
/// values of secret properties (`sasl.password`, …).
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaConnection {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// librdkafka properties, applied last (they override Tributary's defaults).
    pub properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let shown = if crate::secret::is_secret_property(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConnection")
            .field("brokers", &self.brokers)
            .field("properties", &properties)
            .finish()
    }
}

impl KafkaConnection {
    /// A client configuration with `defaults`, then the user's properties on top.
    pub(crate) fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config.set("client.id", "tributary");
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}
