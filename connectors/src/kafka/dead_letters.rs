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

/// How long [`read_topic`] reads on once every partition reached the
/// high-water mark it had when reading began.
const PAST_THE_MARKS: Duration = Duration::from_secs(2);

/// Reads every message of `topic` present now, from `from` (partition →
/// first offset; the low-water mark where missing); gives up after `timeout`.
pub fn read_topic(
    connection: &KafkaConnection,
    topic: &str,
    from: &BTreeMap<i32, i64>,
    timeout: Duration,
) -> Result<Vec<TopicLetter>, KafkaError> {
    let consumer = super::standalone_consumer(connection, "tributary-dlq-read")?;
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
        let start = from.get(&partition).copied().unwrap_or(low).max(low);
        // Some brokers (tansu) report the base offset of the last record
        // batch as the high-water mark, so a partition whose mark equals the
        // start may still hold one batch: read it too, without waiting for it.
        if high >= start && high > low {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .map_err(KafkaError::client("building the assignment"))?;
            if high > start {
                remaining.insert(partition, high);
            }
        }
    }
    let mut letters = Vec::new();
    if assignment.count() == 0 {
        return Ok(letters);
    }
    consumer
        .assign(&assignment)
        .map_err(KafkaError::client(format!("assigning {topic}")))?;
    let deadline = Instant::now() + timeout;
    // Past the high-water marks, read on for a moment (see above), but not
    // until the topic is quiet: a live topic never is.
    let mut marks_reached = remaining.is_empty().then(Instant::now);
    while marks_reached.is_none_or(|at| at.elapsed() < PAST_THE_MARKS) {
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
        let message = message.map_err(KafkaError::client(format!("reading {topic}")))?;
        let partition = message.partition();
        if remaining
            .get(&partition)
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            remaining.remove(&partition);
            if remaining.is_empty() {
                marks_reached = Some(Instant::now());
            }
        }
        letters.push(TopicLetter {
            partition,
            offset: message.offset(),
            letter: letter(topic, &message),
        });
    }
    Ok(letters)
}

/// Drops every letter that repeats an earlier one's origin (pipeline, and
/// the topic, partition and offset it was consumed at), keeping the first.
/// A dead-letter topic is written at least once: letters are produced as
/// records are rejected, before the partition's commit, so a crash in
/// between produces them again. Returns how many were dropped.
pub fn dedupe_by_origin(letters: &mut Vec<TopicLetter>) -> usize {
    let before = letters.len();
    let mut seen = std::collections::HashSet::new();
    letters.retain(|l| match &l.letter.kafka {
        Some(origin) => seen.insert((
            l.letter.pipeline.clone(),
            origin.topic.clone(),
            origin.partition,
            origin.offset,
        )),
        None => true,
    });
    before - letters.len()
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
        let mut letters = vec![
            message(0, "5"),
            message(1, "6"),
            message(2, "5"),
            message(3, "6"),
            message(4, "7"),
        ];
        assert_eq!(dedupe_by_origin(&mut letters), 2);
        let kept: Vec<i64> = letters.iter().map(|l| l.offset).collect();
        assert_eq!(kept, vec![0, 1, 4]);
    }
}
