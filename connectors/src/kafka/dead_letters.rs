//! Reading a dead-letter topic back (`tributary dlq inspect kafka://…`).
//!
//! Every partition is read from its low to its high-water mark as of the
//! start, without joining a group or committing anything, and each message
//! becomes a [`DeadLetter`] again from its `tributary.errors.*` headers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Offset, TopicPartitionList};

use super::producer::headers;
use super::{KafkaConnection, KafkaError};
use crate::dead_letter::DeadLetter;

/// Reads every message of `topic` present now; gives up after `timeout`.
pub fn read_topic(
    connection: &KafkaConnection,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<DeadLetter>, KafkaError> {
    let consumer: BaseConsumer = connection
        .client_config(&[
            ("group.id", "tributary-dlq-inspect"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
        ])
        .create()
        .map_err(KafkaError::client("creating a consumer"))?;
    let partitions = super::partitions_of(consumer.client(), topic, timeout)?;
    let mut assignment = TopicPartitionList::new();
    // partition → high-water mark still to reach.
    let mut remaining = BTreeMap::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(KafkaError::client(format!(
                "reading {topic}/{partition}'s offsets"
            )))?;
        if high > low {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(low))
                .map_err(KafkaError::client("building the assignment"))?;
            remaining.insert(partition, high);
        }
    }
    let mut letters = Vec::new();
    if remaining.is_empty() {
        return Ok(letters);
    }
    consumer
        .assign(&assignment)
        .map_err(KafkaError::client(format!("assigning {topic}")))?;
    let deadline = Instant::now() + timeout;
    // Some brokers (tansu) report the base offset of the last record batch as
    // the high-water mark: past it, read on until the topic stays quiet.
    let mut quiet_since = Instant::now();
    while !remaining.is_empty() || quiet_since.elapsed() < Duration::from_secs(1) {
        if Instant::now() > deadline {
            return Err(KafkaError::Delivery {
                topic: topic.to_string(),
                message: format!(
                    "read {} messages, but partitions {:?} did not reach their end within {timeout:?}",
                    letters.len(),
                    remaining.keys().collect::<Vec<_>>()
                ),
            });
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        quiet_since = Instant::now();
        let message = message.map_err(KafkaError::client(format!("reading {topic}")))?;
        let partition = message.partition();
        if remaining
            .get(&partition)
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            remaining.remove(&partition);
        }
        letters.push(letter(topic, &message));
    }
    Ok(letters)
}

fn letter(topic: &str, message: &impl Message) -> DeadLetter {
    let mut fields: BTreeMap<&str, String> = BTreeMap::new();
    if let Some(h) = message.headers() {
        for header in h.iter() {
            if header.key.starts_with("tributary.errors.") {
                let value = header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                fields.insert(header.key, value);
            }
        }
    }
    let mut take = |key: &str| fields.remove(key).unwrap_or_default();
    let (source_topic, partition, offset) = (
        take(headers::TOPIC),
        take(headers::PARTITION),
        take(headers::OFFSET),
    );
    let source = if source_topic.is_empty() {
        format!("{topic}/{}@{}", message.partition(), message.offset())
    } else {
        format!("{source_topic}/{partition}@{offset}")
    };
    DeadLetter {
        time: take(headers::TIME),
        pipeline: take(headers::PIPELINE),
        stage: take(headers::STAGE),
        rule: take(headers::RULE),
        reason: take(headers::REASON),
        position: offset.parse().unwrap_or(message.offset().max(0) as u64),
        source,
        byte_offset: None,
        original: None,
        original_base64: None,
    }
    .with_original(message.payload().unwrap_or_default())
}
