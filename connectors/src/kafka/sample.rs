//! The next records a consumer group would read, without joining the group
//! or committing anything (`tributary run --dry-run` on a Kafka source).
//!
//! Each partition of the source's topics is read from the group's committed
//! offset (or the source's `start` where the group has none), partitions in
//! turn, until `records` have been read or every partition is at its end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::KafkaError;
use super::consumer::{BatchBuilder, ConsumerSettings, StartPosition, TopicPartition};
use crate::source::RawBatch;

/// Up to `records` records, one batch per partition that had any.
pub fn sample(
    settings: &ConsumerSettings,
    records: usize,
    timeout: Duration,
) -> Result<Vec<RawBatch>, KafkaError> {
    if let Some(pattern) = settings.topics.iter().find(|t| t.starts_with('^')) {
        return Err(KafkaError::Unsupported(format!(
            "a dry run names its topics; the pattern {pattern} is not sampled"
        )));
    }
    let consumer = super::standalone_consumer(&settings.connection, &settings.group)?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    let committed = super::committed_offsets(&consumer, &settings.group, &topics, timeout)?;
    let mut assignment = TopicPartitionList::new();
    // partition → offset where it ends now.
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for element in committed.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(KafkaError::client(format!(
                "reading {topic}/{partition}'s offsets"
            )))?;
        let from = match element.offset() {
            Offset::Offset(o) => o,
            _ => match settings.start {
                StartPosition::Earliest => low,
                StartPosition::Latest => high,
            },
        };
        if from < high {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(from))
                .map_err(KafkaError::client("building the assignment"))?;
            ends.insert((topic.to_string(), partition), high);
        }
    }
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    consumer
        .assign(&assignment)
        .map_err(KafkaError::client("assigning the partitions"))?;
    let mut builders: BTreeMap<(String, i32), BatchBuilder> = BTreeMap::new();
    let mut read = 0;
    let mut last_message = Instant::now();
    while read < records && !ends.is_empty() && last_message.elapsed() < timeout {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.map_err(KafkaError::client("reading"))?;
        last_message = Instant::now();
        let key = (message.topic().to_string(), message.partition());
        if ends
            .get(&key)
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            ends.remove(&key);
        }
        builders
            .entry(key.clone())
            .or_insert_with(|| {
                BatchBuilder::new(
                    &TopicPartition {
                        topic: key.0.clone(),
                        partition: key.1,
                    },
                    Default::default(),
                )
            })
            .push(&message, last_message);
        read += 1;
    }
    Ok(builders
        .into_values()
        .filter(|b| !b.is_empty())
        .map(|mut b| b.finish())
        .collect())
}
