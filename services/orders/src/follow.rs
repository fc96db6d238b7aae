//! Every instance follows the `CacheInvalidated` events on Kafka (in its
//! own consumer group, from the newest offset) and drops the entries they
//! name from its memory, and again from Redis in case the writer died
//! before doing so itself. The time from the write to the invalidation is
//! a histogram.

use std::time::Duration;

use futures::StreamExt;
use prometheus_client::metrics::histogram::Histogram;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde::Deserialize;

use crate::cache::{Cache, Kind};

#[derive(Debug, Deserialize)]
struct Invalidation {
    occurred_at: chrono::DateTime<chrono::Utc>,
    cache: String,
    keys: Vec<String>,
}

/// The follower of one instance.
pub struct Follower {
    consumer: StreamConsumer,
    cache: Cache,
    delay: Histogram,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower").finish_non_exhaustive()
    }
}

impl Follower {
    /// A consumer of `topic` on `brokers`.
    pub fn new(
        brokers: &str,
        topic: &str,
        cache: Cache,
        metrics: &tributary_kit::observe::Metrics,
    ) -> Result<Self, String> {
        let group = format!("tributary-orders-cache-{}", uuid::Uuid::new_v4().simple());
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", &group)
            .set("client.id", "tributary-orders-cache")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest")
            .set("fetch.wait.max.ms", "50")
            .set("topic.metadata.refresh.interval.ms", "5000")
            .create()
            .map_err(|e| format!("a Kafka consumer for {brokers}: {e}"))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| format!("subscribing to {topic}: {e}"))?;
        let delay = Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        metrics.register(
            "cache_invalidation_delay_seconds",
            "Time from a write to this instance dropping its cached copy (through Kafka)",
            delay.clone(),
        );
        Ok(Self {
            consumer,
            cache,
            delay,
        })
    }

    /// Follows until the task is aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut stream = self.consumer.stream();
            while let Some(message) = stream.next().await {
                match message {
                    Ok(message) => {
                        if let Some(payload) = message.payload() {
                            self.apply(payload).await;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "following cache invalidations");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        })
    }

    async fn apply(&self, payload: &[u8]) {
        let Ok(event) = serde_json::from_slice::<Invalidation>(payload) else {
            tracing::warn!("an unreadable CacheInvalidated event; skipped");
            return;
        };
        let Some(kind) = Kind::from_name(&event.cache) else {
            return;
        };
        for key in &event.keys {
            if key == "*" {
                let _ = self.cache.purge(Some(kind), true).await;
                continue;
            }
            let Some((id, version)) = key.rsplit_once('@') else {
                continue;
            };
            let Ok(version) = version.parse::<i64>() else {
                continue;
            };
            if let Err(error) = self.cache.invalidate(kind, id, version).await {
                tracing::warn!(%error, "invalidating in Redis failed; this instance's copy is dropped");
            }
        }
        let delay = (chrono::Utc::now() - event.occurred_at).as_seconds_f64();
        self.delay.observe(delay.max(0.0));
    }
}
