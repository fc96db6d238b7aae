//! Following a topic from its end, outside any consumer group: every
//! process sees every message published after it started (broadcast, as
//! cache invalidations need), and nothing is committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaConnection, KafkaError};

/// A topic followed from the high-water marks it had when [`Tail::start`] returned.
pub struct Tail {
    consumer: BaseConsumer,
    topic: String,
}

impl Tail {
    /// Assigns every partition of `topic` at its current end.
    pub fn start(connection: &KafkaConnection, topic: &str) -> Result<Tail, KafkaError> {
        let consumer: BaseConsumer = connection
            .client_config(&[
                ("group.id", "tributary-tail"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
            ])
            .create()
            .map_err(KafkaError::client("creating a consumer"))?;
        let timeout = Duration::from_secs(10);
        let mut assignment = TopicPartitionList::new();
        for partition in super::partitions_of(consumer.client(), topic, timeout)? {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(KafkaError::client(format!(
                    "reading {topic}/{partition}'s offsets"
                )))?;
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(high))
                .map_err(KafkaError::client("building the assignment"))?;
        }
        consumer
            .assign(&assignment)
            .map_err(KafkaError::client(format!("assigning {topic}")))?;
        Ok(Tail {
            consumer,
            topic: topic.to_string(),
        })
    }

    /// Hands each message's payload to `on_message` until `stop` is set.
    pub fn follow(&self, stop: &AtomicBool, mut on_message: impl FnMut(&[u8])) {
        while !stop.load(Ordering::Relaxed) {
            match self.consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Ok(message)) => on_message(message.payload().unwrap_or_default()),
                Some(Err(error)) => {
                    tracing::warn!(topic = %self.topic, %error, "reading the topic failed; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }
}
