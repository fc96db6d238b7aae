//! Reading a dead-letter topic back (`tributary dlq inspect kafka://…` and
//! `dlq replay kafka://…`).
//!
//! Every partition is read from a start offset (the low-water mark, or
//! where a replay group's checkpoint says) up to its end as of the start,
//! without joining a group, and each message becomes a [`DeadLetter`] again
//! from its `tributary.errors.*` headers, with its original key, timestamp
//! and headers as its [`KafkaOrigin`]. A replay then commits how far it got
//! for its group ([`save_checkpoint`]), so the next replay starts there.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::meta::{NativeHeaders, raw_headers};
use super::producer::headers;
use super::{KafkaConnection, KafkaError};
use crate::dead_letter::{DeadLetter, KafkaHeader, KafkaOrigin};

/// A dead letter and where it is in the dead-letter topic.
#[derive(Debug, Clone)]
pub struct TopicLetter {
    /// The dead-letter topic's partition.
    pub partition: i32,
    /// The offset there.
    pub offset: i64,
    /// The record.
    pub letter: DeadLetter,
}

/// Where `group` stopped on `topic` (partition → next offset); empty when it never committed.
pub fn checkpoint(
    connection: &KafkaConnection,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, KafkaError> {
    let consumer = super::standalone_consumer(connection, group)?;
    let committed = super::committed_offsets(&consumer, group, &[topic], timeout)?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// Commits `next` (partition → next offset) as `group`'s position on `topic`.
pub fn save_checkpoint(
    connection: &KafkaConnection,
    group: &str,
    topic: &str,
    next: &BTreeMap<i32, i64>,
) -> Result<(), KafkaError> {
    if next.is_empty() {
        return Ok(());
    }
    let consumer = super::standalone_consumer(connection, group)?;
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in next {
        offsets
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(KafkaError::client("building the offsets"))?;
    }
    consumer
        .commit(&offsets, CommitMode::Sync)
        .map_err(KafkaError::client(format!(
            "committing group {group}'s offsets on {topic}"
        )))
}

/// How long a [`TopicLetters`] read without end offsets reads on once every
/// partition reached the high-water mark it had when reading began.
const PAST_THE_MARKS: Duration = Duration::from_secs(2);

/// The letters of a dead-letter topic, read one at a time: memory stays at
/// what librdkafka prefetches, however long the topic.
///
/// Each partition is read from a start offset (the low-water mark, or where
/// `from` says) either up to its end as of opening (plus a moment past it:
/// some brokers report a stale high-water mark), or, given end offsets, up
/// to just before them.
pub struct TopicLetters {
    consumer: rdkafka::consumer::BaseConsumer,
    topic: String,
    /// Partition → the offset still to reach.
    remaining: BTreeMap<i32, i64>,
    /// Exclusive end offsets, when given: nothing at or past them is returned.
    ends: Option<BTreeMap<i32, i64>>,
    marks_reached: Option<Instant>,
    /// Whether any partition has something to read.
    assigned: bool,
    /// How long to wait for the next message before giving up.
    timeout: Duration,
    last_progress: Instant,
    read: usize,
}

impl std::fmt::Debug for TopicLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicLetters")
            .field("topic", &self.topic)
            .field("remaining", &self.remaining)
            .field("read", &self.read)
            .finish()
    }
}

impl TopicLetters {
    /// Every letter of `topic` present now, from `from` (partition → first
    /// offset; the low-water mark where missing). Gives up when no message
    /// arrives for `timeout` while some partition has not reached its end.
    pub fn open(
        connection: &KafkaConnection,
        topic: &str,
        from: &BTreeMap<i32, i64>,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let consumer = super::standalone_consumer(connection, "tributary-dlq-read")?;
        let partitions = super::partitions_of(consumer.client(), topic, timeout)?;
        let mut assignment = TopicPartitionList::new();
        let mut remaining = BTreeMap::new();
        for partition in partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(KafkaError::client(format!(
                    "reading {topic}/{partition}'s offsets"
                )))?;
            let start = from.get(&partition).copied().unwrap_or(low).max(low);
            // Some brokers (tansu) report the base offset of the last record
            // batch as the high-water mark, so a partition whose mark equals
            // the start may still hold one batch: read it too, without
            // waiting for it.
            if high >= start && high > low {
                assignment
                    .add_partition_offset(topic, partition, Offset::Offset(start))
                    .map_err(KafkaError::client("building the assignment"))?;
                if high > start {
                    remaining.insert(partition, high);
                }
            }
        }
        let mut letters = Self::assigned(consumer, topic, assignment, remaining, None, timeout)?;
        letters.marks_reached = letters.remaining.is_empty().then(Instant::now);
        Ok(letters)
    }

    /// The letters of one partition at offsets `start..end` (as found by an
    /// earlier read).
    pub fn range(
        connection: &KafkaConnection,
        topic: &str,
        partition: i32,
        (start, end): (i64, i64),
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let consumer = super::standalone_consumer(connection, "tributary-dlq-read")?;
        let mut assignment = TopicPartitionList::new();
        let mut remaining = BTreeMap::new();
        if end > start {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .map_err(KafkaError::client("building the assignment"))?;
            remaining.insert(partition, end);
        }
        let ends = BTreeMap::from([(partition, end)]);
        Self::assigned(consumer, topic, assignment, remaining, Some(ends), timeout)
    }

    fn assigned(
        consumer: rdkafka::consumer::BaseConsumer,
        topic: &str,
        assignment: TopicPartitionList,
        remaining: BTreeMap<i32, i64>,
        ends: Option<BTreeMap<i32, i64>>,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let assigned = assignment.count() > 0;
        if assigned {
            consumer
                .assign(&assignment)
                .map_err(KafkaError::client(format!("assigning {topic}")))?;
        }
        Ok(TopicLetters {
            consumer,
            topic: topic.to_string(),
            remaining,
            ends,
            marks_reached: None,
            assigned,
            timeout,
            last_progress: Instant::now(),
            read: 0,
        })
    }

    /// Whether every partition reached its end.
    fn done(&self) -> bool {
        if !self.assigned {
            return true;
        }
        if self.ends.is_some() {
            return self.remaining.is_empty();
        }
        self.marks_reached
            .is_some_and(|at| at.elapsed() >= PAST_THE_MARKS)
    }

    /// The next letter, or `None` once every partition reached its end.
    pub fn next_letter(&mut self) -> Result<Option<TopicLetter>, KafkaError> {
        loop {
            if self.done() {
                return Ok(None);
            }
            if self.marks_reached.is_none() && self.last_progress.elapsed() > self.timeout {
                return Err(KafkaError::Stalled {
                    topic: self.topic.clone(),
                    message: format!(
                        "read {} messages, then nothing for {:?} while partitions {:?} had not reached their end",
                        self.read,
                        self.timeout,
                        self.remaining.keys().collect::<Vec<_>>()
                    ),
                });
            }
            let Some(message) = self.consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.map_err(KafkaError::client(format!("reading {}", self.topic)))?;
            self.last_progress = Instant::now();
            let (partition, offset) = (message.partition(), message.offset());
            let end = self.ends.as_ref().and_then(|e| e.get(&partition)).copied();
            if self
                .remaining
                .get(&partition)
                .is_some_and(|mark| offset + 1 >= *mark)
            {
                self.remaining.remove(&partition);
                if self.remaining.is_empty() {
                    self.marks_reached = Some(Instant::now());
                }
            }
            if end.is_some_and(|end| offset >= end) {
                continue;
            }
            self.read += 1;
            return Ok(Some(TopicLetter {
                partition,
                offset,
                letter: letter(&self.topic, &message),
            }));
        }
    }
}

/// The identity of the record a letter is about: its pipeline and the
/// topic, partition and offset it was consumed at (`None` for records that
/// did not come from Kafka). A dead-letter topic is written at least once:
/// letters are produced as records are rejected, before the partition's
/// commit, so a crash in between produces them again, with the same origin.
/// Kept as a 128-bit hash, so remembering every letter's origin costs 16
/// bytes a letter.
pub fn origin_key(letter: &DeadLetter) -> Option<u128> {
    use sha2::Digest;
    let origin = letter.kafka.as_ref()?;
    let mut hash = sha2::Sha256::new();
    for part in [letter.pipeline.as_bytes(), origin.topic.as_bytes()] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hash.update(origin.partition.to_le_bytes());
    hash.update(origin.offset.to_le_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    Some(u128::from_le_bytes(first))
}

fn letter<M: Message>(topic: &str, message: &M) -> DeadLetter
where
    M::Headers: NativeHeaders,
{
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut original_headers = Vec::new();
    if let Some(h) = message.headers() {
        // Names are read as bytes: a letter of a record whose header name is
        // not UTF-8 must not stop the reader.
        for header in raw_headers(h) {
            let name = String::from_utf8_lossy(header.name).into_owned();
            if name.starts_with("tributary.errors.") {
                let value = header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                fields.insert(name, value);
            } else {
                original_headers.push(KafkaHeader {
                    name,
                    value: header.value.map(<[u8]>::to_vec),
                });
            }
        }
    }
    let mut take = |key: &str| fields.remove(key).unwrap_or_default();
    let (source_topic, partition, offset, timestamp) = (
        take(headers::TOPIC),
        take(headers::PARTITION),
        take(headers::OFFSET),
        take(headers::TIMESTAMP),
    );
    // Where the record was consumed, when the headers say (they always do
    // for letters Tributary wrote from a Kafka source).
    let kafka = match (partition.parse(), offset.parse()) {
        (Ok(partition), Ok(offset)) if !source_topic.is_empty() => Some(KafkaOrigin {
            topic: source_topic.clone(),
            partition,
            offset,
            timestamp_ms: timestamp.parse().ok(),
            key: message.key().map(<[u8]>::to_vec),
            headers: original_headers,
        }),
        _ => None,
    };
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
        kafka,
    }
    .with_original(message.payload().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    #[test]
    fn a_dead_letter_message_gives_back_its_reason_and_its_original_message() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "trace",
                value: Some("t7"),
            })
            .insert(Header {
                key: headers::REASON,
                value: Some("/total: type"),
            })
            .insert(Header {
                key: headers::RULE,
                value: Some("type"),
            })
            .insert(Header {
                key: headers::TOPIC,
                value: Some("orders"),
            })
            .insert(Header {
                key: headers::PARTITION,
                value: Some("2"),
            })
            .insert(Header {
                key: headers::OFFSET,
                value: Some("41"),
            })
            .insert(Header {
                key: headers::TIMESTAMP,
                value: Some("1700000000000"),
            });
        let message = OwnedMessage::new(
            Some(b"{\"total\":\"x\"}".to_vec()),
            Some(b"k1".to_vec()),
            "orders.dlq".into(),
            Timestamp::CreateTime(1_800_000_000_000),
            0,
            9,
            Some(headers),
        );
        let letter = letter("orders.dlq", &message);
        assert_eq!(letter.source, "orders/2@41");
        assert_eq!((letter.rule.as_str(), letter.position), ("type", 41));
        let origin = letter.kafka.unwrap();
        assert_eq!((origin.partition, origin.offset), (2, 41));
        assert_eq!(origin.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(origin.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(origin.headers.len(), 1, "only the original headers");
        assert_eq!(origin.headers[0].value.as_deref(), Some(&b"t7"[..]));
    }

    #[test]
    fn letters_repeated_after_a_crash_are_kept_once_per_origin() {
        let message = |dlq_offset: i64, origin_offset: &str| {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: headers::PIPELINE,
                    value: Some("orders"),
                })
                .insert(Header {
                    key: headers::TOPIC,
                    value: Some("orders"),
                })
                .insert(Header {
                    key: headers::PARTITION,
                    value: Some("0"),
                })
                .insert(Header {
                    key: headers::OFFSET,
                    value: Some(origin_offset),
                });
            let m = OwnedMessage::new(
                Some(b"{".to_vec()),
                None,
                "orders.dlq".into(),
                Timestamp::NotAvailable,
                0,
                dlq_offset,
                Some(headers),
            );
            TopicLetter {
                partition: 0,
                offset: dlq_offset,
                letter: letter("orders.dlq", &m),
            }
        };
        // Records 5 and 6 rejected, a crash, the same two rejected again, then 7.
        let letters = [
            message(0, "5"),
            message(1, "6"),
            message(2, "5"),
            message(3, "6"),
            message(4, "7"),
        ];
        let mut seen = std::collections::HashSet::new();
        let kept: Vec<i64> = letters
            .iter()
            .filter(|l| origin_key(&l.letter).is_none_or(|k| seen.insert(k)))
            .map(|l| l.offset)
            .collect();
        assert_eq!(kept, vec![0, 1, 4]);
        let mut elsewhere = letters[0].letter.clone();
        elsewhere.pipeline = "other".into();
        assert_ne!(origin_key(&elsewhere), origin_key(&letters[0].letter));
    }
}
