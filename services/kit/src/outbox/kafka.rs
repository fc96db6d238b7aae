//! Delivers outbox rows to Kafka with an idempotent producer.

use std::sync::Mutex;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{Pending, Sink};

/// A Kafka producer made on first use and replaced after a failure (an
/// idempotent producer's failure can be fatal to it).
pub struct KafkaSink {
    brokers: String,
    client_id: String,
    producer: Mutex<Option<FutureProducer>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// A sink to `brokers` (`host:port,…`), named `client_id` to them.
    pub fn new(brokers: &str, client_id: &str) -> Self {
        Self {
            brokers: brokers.to_string(),
            client_id: client_id.to_string(),
            producer: Mutex::new(None),
        }
    }

    fn producer(&self) -> Result<FutureProducer, String> {
        let mut slot = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(producer) = slot.as_ref() {
            return Ok(producer.clone());
        }
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // The outbox keeps the row: give up soon and let the relay retry.
            .set("message.timeout.ms", "10000")
            .create()
            .map_err(|e| format!("creating a Kafka producer for {}: {e}", self.brokers))?;
        *slot = Some(producer.clone());
        Ok(producer)
    }

    fn replace_producer(&self) {
        *self.producer.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Sink for KafkaSink {
    async fn deliver(&self, batch: &[Pending]) -> Vec<Result<(), String>> {
        let producer = match self.producer() {
            Ok(producer) => producer,
            Err(error) => return vec![Err(error); batch.len()],
        };
        let mut sent = Vec::with_capacity(batch.len());
        for row in batch {
            let Some(topic) = row.topic.as_deref() else {
                sent.push(Err(format!("outbox row {} has no topic", row.id)));
                continue;
            };
            let mut record = FutureRecord::<str, [u8]>::to(topic).payload(&row.payload);
            if let Some(key) = row.key.as_deref() {
                record = record.key(key);
            }
            sent.push(
                producer
                    .send_result(record)
                    .map_err(|(error, _)| error.to_string()),
            );
        }
        let mut results = Vec::with_capacity(batch.len());
        let mut unplaced = 0;
        for delivery in sent {
            results.push(match delivery {
                Ok(future) => match future.await {
                    Ok(Ok(delivery)) => {
                        unplaced += usize::from(delivery.offset < 0);
                        Ok(())
                    }
                    Ok(Err((error, _))) => Err(error.to_string()),
                    Err(_) => Err("the producer was dropped".to_string()),
                },
                Err(error) => Err(error),
            });
        }
        if unplaced > 0 {
            // librdkafka reports a retried batch the broker calls a duplicate
            // (DUPLICATE_SEQUENCE_NUMBER) as delivered, with no offset: the
            // first record of such a batch has offset -1. A broker that
            // advances its sequence before its append is durable (tansu
            // does) has then lost the batch. Which rows were in it is
            // unknown, so every row of this call goes again under a new
            // producer id; consumers drop the copies by event id.
            tracing::warn!(
                unplaced,
                rows = batch.len(),
                "the broker acknowledged records as duplicates without an offset; sending them again"
            );
            for result in &mut results {
                if result.is_ok() {
                    *result = Err(
                        "acknowledged as a duplicate without an offset: sent again".to_string()
                    );
                }
            }
        }
        if results.iter().any(Result::is_err) {
            self.replace_producer();
        }
        results
    }
}
