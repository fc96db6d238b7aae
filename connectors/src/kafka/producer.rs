//! Producing to Kafka: dead letters with context headers, records as JSON.
//!
//! Producers are idempotent (no duplicates or reordering from librdkafka's
//! own retries). Sends are asynchronous; [`TopicProducer::flush`] waits for
//! every acknowledgement, and the engine calls it before committing the
//! offsets of the records that were sent.
//!
//! Outages follow the pipeline's retry policy, as the stores do: under
//! `wait`, librdkafka redelivers without a deadline (in order, and without
//! duplicates, the producer being idempotent), and a delivery pending past
//! the budget counts as the target waiting, so the partitions writing to it
//! pause; under `fail`, a message not delivered within the budget fails its
//! partition.

use std::collections::VecDeque;
use std::time::Duration;

use arrow::array::RecordBatch;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

use super::{KafkaConnection, KafkaError};
use crate::dead_letter::DeadLetter;
use crate::retry::{Exhausted, Retrier, RetryPolicy, RetryTargets};

/// Sends beyond this many unacknowledged messages wait for the oldest.
const MAX_IN_FLIGHT: usize = 50_000;

/// The header names a dead letter carries, in the spirit of Kafka Connect's
/// `__connect.errors.*` context headers.
pub mod headers {
    /// Why the record was rejected.
    pub const REASON: &str = "tributary.errors.reason";
    /// The stage that rejected it.
    pub const STAGE: &str = "tributary.errors.stage";
    /// The rule or schema keyword that fired.
    pub const RULE: &str = "tributary.errors.rule";
    /// The topic it was read from.
    pub const TOPIC: &str = "tributary.errors.topic";
    /// The partition it was read from.
    pub const PARTITION: &str = "tributary.errors.partition";
    /// Its offset there.
    pub const OFFSET: &str = "tributary.errors.offset";
    /// The pipeline's name.
    pub const PIPELINE: &str = "tributary.errors.pipeline";
    /// When it was rejected (RFC 3339, UTC).
    pub const TIME: &str = "tributary.errors.time";
    /// Set when the letter was cut to fit the topic's message limit: what
    /// was cut, and where the whole record is kept.
    pub const TRUNCATED: &str = "tributary.errors.truncated";
    /// The original message's timestamp (ms since the epoch), when it had one.
    pub const TIMESTAMP: &str = "tributary.errors.timestamp";
}

/// A key longer than this is cut when its letter does not fit.
const MAX_TRUNCATED_KEY: usize = 1024;
/// Room left for the record and batch framing Kafka adds.
const FRAMING_BYTES: usize = 512;

/// An idempotent producer (one per destination; it is cheap to clone, and
/// clones share one client), with the retry policy its deliveries follow.
///
/// A client that hit a fatal error stays unusable (librdkafka's idempotent
/// producer, for one, gives up for good when a broker that lost its state
/// answers with an out-of-order sequence number). The next [`TopicProducer`]
/// made from it (a restarted partition's) replaces it with a new client, so
/// the partitions that failed with it resume instead of failing for ever.
#[derive(Clone)]
pub struct Producer {
    client: std::sync::Arc<std::sync::Mutex<FutureProducer>>,
    connection: std::sync::Arc<KafkaConnection>,
    brokers: std::sync::Arc<str>,
    policy: RetryPolicy,
    targets: RetryTargets,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("brokers", &self.brokers)
            .field("policy", &self.policy)
            .finish()
    }
}

/// Creates a producer to `connection`'s brokers whose deliveries follow
/// `policy`; its topics' retriers are listed in `targets`.
pub fn producer(
    connection: &KafkaConnection,
    policy: RetryPolicy,
    targets: &RetryTargets,
) -> Result<Producer, KafkaError> {
    Ok(Producer {
        client: std::sync::Arc::new(std::sync::Mutex::new(client(connection, policy)?)),
        connection: std::sync::Arc::new(connection.clone()),
        brokers: connection.brokers.as_str().into(),
        policy,
        targets: targets.clone(),
    })
}

impl Producer {
    /// The shared client, replaced first when it hit a fatal error (if a new
    /// one cannot be created, the old one is returned and sends fail again).
    fn live(&self) -> FutureProducer {
        let mut current = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((code, reason)) = current.client().fatal_error() {
            match client(&self.connection, self.policy) {
                Ok(fresh) => {
                    tracing::warn!(brokers = %self.brokers, ?code, %reason, "producer hit a fatal error; replaced it with a new one");
                    *current = fresh;
                }
                Err(error) => {
                    tracing::error!(brokers = %self.brokers, %error, "producer hit a fatal error and cannot be replaced")
                }
            }
        }
        current.clone()
    }
}

/// A librdkafka client for [`producer`].
fn client(connection: &KafkaConnection, policy: RetryPolicy) -> Result<FutureProducer, KafkaError> {
    // 0 is librdkafka's "no deadline": it redelivers until the brokers take
    // the message (or refuse it for good, as one over their size limit).
    let timeout = match policy.exhausted {
        Exhausted::Wait => 0,
        Exhausted::Fail => policy.max_elapsed.as_millis().max(1),
    };
    connection
        .client_config(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("compression.type", "lz4"),
            ("message.timeout.ms", &timeout.to_string()),
            // Above any topic's limit: what a topic accepts is the dead-letter
            // destination's `max_message_bytes` (see `DeadLetterTopic`).
            ("message.max.bytes", "67108864"),
        ])
        .create()
        .map_err(KafkaError::client("creating a producer"))
}

/// An idempotent producer to one topic, tracking unacknowledged sends.
pub struct TopicProducer {
    producer: FutureProducer,
    topic: String,
    in_flight: VecDeque<DeliveryFuture>,
    sent: u64,
    retrier: Retrier,
}

impl std::fmt::Debug for TopicProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicProducer")
            .field("topic", &self.topic)
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

impl TopicProducer {
    /// Sends to `topic` through `producer`.
    pub fn new(producer: Producer, topic: &str) -> Self {
        TopicProducer {
            retrier: producer.targets.retrier(
                format!("kafka://{}/{topic}", producer.brokers),
                producer.policy,
            ),
            producer: producer.live(),
            topic: topic.to_string(),
            in_flight: VecDeque::new(),
            sent: 0,
        }
    }

    /// The destination topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Queues one message; waits only when librdkafka's queue is full.
    pub async fn send(
        &mut self,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), KafkaError> {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.wait_oldest().await?;
        }
        let topic = self.topic.clone();
        let mut record = FutureRecord::<[u8], [u8]>::to(&topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.in_flight.push_back(delivery);
                    self.sent += 1;
                    return Ok(());
                }
                Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    if self.in_flight.is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    } else {
                        self.wait_oldest().await?;
                    }
                }
                Err((error, _)) => {
                    return Err(KafkaError::Delivery {
                        topic: self.topic.clone(),
                        message: error.to_string(),
                    });
                }
            }
        }
    }

    async fn wait_oldest(&mut self) -> Result<(), KafkaError> {
        let Some(delivery) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let failed = |message: String| KafkaError::Delivery {
            topic: self.topic.clone(),
            message,
        };
        match self.retrier.wait_out("deliver", delivery).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((error, _))) => Err(failed(error.to_string())),
            Err(_) => Err(failed("the producer was dropped".into())),
        }
    }

    /// Waits until every message sent so far is acknowledged; returns how many were sent since the last flush.
    pub async fn flush(&mut self) -> Result<u64, KafkaError> {
        let mut first_error = None;
        while !self.in_flight.is_empty() {
            if let Err(e) = self.wait_oldest().await {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(std::mem::take(&mut self.sent)),
        }
    }
}

/// Where a dead letter came from, for its headers.
#[derive(Debug, Clone, Copy)]
pub struct SourceMessage<'a> {
    /// The source topic.
    pub topic: &'a str,
    /// The source partition.
    pub partition: i32,
    /// The source offset.
    pub offset: u64,
    /// The original key.
    pub key: Option<&'a [u8]>,
    /// The original timestamp (ms since the epoch).
    pub timestamp: Option<i64>,
}

/// Dead letters to a topic: value = the original bytes, key = the original key,
/// headers = the original headers plus `tributary.errors.*`.
///
/// A letter larger than the topic's message limit would be refused by the
/// broker on every attempt and stop its partition: it is cut to fit instead
/// (the key to 1 KiB, the value to what remains), with a
/// `tributary.errors.truncated` header saying what was cut and where the
/// whole record is kept (the caller stores it first).
#[derive(Debug)]
pub struct DeadLetterTopic {
    producer: TopicProducer,
    max_message_bytes: usize,
}

impl DeadLetterTopic {
    /// Dead letters to `topic`, whose messages may be `max_message_bytes` long.
    pub fn new(producer: Producer, topic: &str, max_message_bytes: usize) -> Self {
        DeadLetterTopic {
            producer: TopicProducer::new(producer, topic),
            max_message_bytes,
        }
    }

    /// Whether a letter of this record exceeds the topic's message limit
    /// (then [`send`](Self::send) cuts it and must be told where the whole record is).
    pub fn oversized(
        &self,
        letter: &DeadLetter,
        original: &[u8],
        key: Option<&[u8]>,
        original_headers: &[(String, Option<Vec<u8>>)],
    ) -> bool {
        letter_bytes(original, key, original_headers) + context_bytes(letter)
            > self.max_message_bytes
    }

    /// Sends one rejected record; `kept_at` names where the whole record is
    /// stored when it is [`oversized`](Self::oversized).
    pub async fn send(
        &mut self,
        letter: &DeadLetter,
        original: &[u8],
        source: Option<SourceMessage<'_>>,
        original_headers: &[(String, Option<Vec<u8>>)],
        kept_at: Option<&str>,
    ) -> Result<(), KafkaError> {
        let mut h = OwnedHeaders::new_with_capacity(original_headers.len() + 8);
        for (name, value) in original_headers {
            h = h.insert(Header {
                key: name,
                value: value.as_deref(),
            });
        }
        let text = |h: OwnedHeaders, key: &str, value: &str| {
            h.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        };
        h = text(h, headers::REASON, &letter.reason);
        h = text(h, headers::STAGE, &letter.stage);
        h = text(h, headers::RULE, &letter.rule);
        h = text(h, headers::PIPELINE, &letter.pipeline);
        h = text(h, headers::TIME, &letter.time);
        let mut key = source.and_then(|s| s.key);
        if let Some(s) = source {
            h = text(h, headers::TOPIC, s.topic);
            h = text(h, headers::PARTITION, &s.partition.to_string());
            h = text(h, headers::OFFSET, &s.offset.to_string());
            if let Some(ms) = s.timestamp {
                h = text(h, headers::TIMESTAMP, &ms.to_string());
            }
        }
        let mut value = original;
        if self.oversized(letter, original, key, original_headers) {
            // The truncation header itself takes about 300 bytes.
            let context = context_bytes(letter) + 300;
            let mut cut = Vec::new();
            if let Some(k) = key
                && k.len() > MAX_TRUNCATED_KEY
            {
                cut.push(format!(
                    "key cut from {} to {MAX_TRUNCATED_KEY} bytes",
                    k.len()
                ));
                key = Some(&k[..MAX_TRUNCATED_KEY]);
            }
            let room = self
                .max_message_bytes
                .saturating_sub(letter_bytes(&[], key, original_headers) + context);
            if value.len() > room {
                cut.push(format!("value cut from {} to {room} bytes", value.len()));
                value = &value[..room];
            }
            let kept = kept_at.unwrap_or("nowhere (no file destination)");
            h = text(
                h,
                headers::TRUNCATED,
                &format!(
                    "{} to fit the topic's {}-byte limit; the whole record is at {kept}",
                    cut.join(", "),
                    self.max_message_bytes
                ),
            );
        }
        self.producer.send(key, value, Some(h)).await
    }

    /// Waits for every acknowledgement; returns how many were sent since the last flush.
    pub async fn flush(&mut self) -> Result<u64, KafkaError> {
        self.producer.flush().await
    }
}

/// About how many bytes a letter of this record takes, before the context headers.
fn letter_bytes(
    original: &[u8],
    key: Option<&[u8]>,
    original_headers: &[(String, Option<Vec<u8>>)],
) -> usize {
    let headers: usize = original_headers
        .iter()
        .map(|(name, value)| name.len() + value.as_ref().map_or(0, Vec::len) + 8)
        .sum();
    original.len() + key.map_or(0, <[u8]>::len) + headers + FRAMING_BYTES
}

/// About how many bytes the `tributary.errors.*` headers of `letter` take.
fn context_bytes(letter: &DeadLetter) -> usize {
    letter.reason.len()
        + letter.stage.len()
        + letter.rule.len()
        + letter.pipeline.len()
        + letter.time.len()
        + 400
}

/// Kafka's default limit on a message (`max.message.bytes` of a topic).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// Records to a topic as JSON objects, one message per row.
#[derive(Debug)]
pub struct JsonTopic {
    producer: TopicProducer,
    buffer: Vec<u8>,
}

impl JsonTopic {
    /// Rows to `topic`.
    pub fn new(producer: Producer, topic: &str) -> Self {
        JsonTopic {
            producer: TopicProducer::new(producer, topic),
            buffer: Vec::new(),
        }
    }

    /// Sends every row of `batch`; `keys[i]` is row i's key.
    pub async fn write(
        &mut self,
        batch: &RecordBatch,
        keys: &[Option<&[u8]>],
    ) -> Result<(), JsonTopicError> {
        self.buffer.clear();
        {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut self.buffer);
            writer.write(batch)?;
            writer.finish()?;
        }
        let buffer = std::mem::take(&mut self.buffer);
        let lines = buffer.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        for (row, line) in lines.enumerate() {
            let key = keys.get(row).copied().flatten();
            self.producer.send(key, line, None).await?;
        }
        self.buffer = buffer;
        Ok(())
    }

    /// Waits for every acknowledgement; returns how many were sent since the last flush.
    pub async fn flush(&mut self) -> Result<u64, KafkaError> {
        self.producer.flush().await
    }
}

/// A JSON topic output that failed.
#[derive(Debug, thiserror::Error)]
pub enum JsonTopicError {
    /// Encoding a row failed.
    #[error("encoding JSON: {0}")]
    Encode(#[from] arrow::error::ArrowError),
    /// Producing failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

#[cfg(test)]
mod fatal_tests {
    use super::*;
    use rdkafka::bindings as rd;
    use rdkafka::mocking::MockCluster;

    /// Puts `producer`'s client in librdkafka's fatal state, as a broker
    /// answering an idempotent producer with an out-of-order sequence does.
    #[allow(unsafe_code)] // librdkafka's test hook; see the SAFETY note.
    fn make_fatal(producer: &Producer) {
        let client = producer.live();
        let reason = c"injected by the test";
        // SAFETY: the client is alive for the call; the reason is a
        // NUL-terminated string librdkafka copies.
        unsafe {
            rd::rd_kafka_test_fatal_error(
                client.client().native_ptr(),
                rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
        assert!(client.client().fatal_error().is_some());
    }

    #[tokio::test]
    async fn a_producer_that_hit_a_fatal_error_is_replaced_for_the_next_topic_producer() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("letters", 1, 1).unwrap();
        let connection = KafkaConnection {
            brokers: cluster.bootstrap_servers(),
            properties: Default::default(),
        };
        let producer = producer(
            &connection,
            RetryPolicy::default(),
            &RetryTargets::default(),
        )
        .unwrap();
        let mut before = TopicProducer::new(producer.clone(), "letters");
        before.send(Some(b"k"), b"first", None).await.unwrap();
        assert_eq!(before.flush().await.unwrap(), 1);

        make_fatal(&producer);
        // The partition holding the dead client fails...
        let sent = before.send(Some(b"k"), b"lost", None).await;
        let failed = match sent {
            Err(e) => Err(e),
            Ok(()) => before.flush().await.map(|_| ()),
        };
        assert!(failed.is_err(), "a fatal client still delivered");
        // ...and its restart gets a working one.
        let mut after = TopicProducer::new(producer.clone(), "letters");
        after.send(Some(b"k"), b"again", None).await.unwrap();
        assert_eq!(after.flush().await.unwrap(), 1);
        let _ = producer.live().flush(Duration::from_secs(5));
    }
}
