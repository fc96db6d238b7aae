//! Topic administration the CLI needs (creating the topics it publishes to).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::{KafkaConnection, KafkaError};

/// Creates `topic` with `partitions` partitions, each on `replication`
/// brokers, unless it exists; returns whether it was created.
pub async fn ensure_topic(
    connection: &KafkaConnection,
    topic: &str,
    partitions: u32,
    replication: u32,
) -> Result<bool, KafkaError> {
    let to_i32 = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let admin: AdminClient<DefaultClientContext> = connection
        .client_config(&[])
        .create()
        .map_err(KafkaError::client("creating an admin client"))?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(
            &[NewTopic::new(
                topic,
                to_i32(partitions),
                TopicReplication::Fixed(to_i32(replication)),
            )],
            &options,
        )
        .await
        .map_err(KafkaError::client(format!("creating topic {topic}")))?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => Ok(false),
        Some(Err((_, code))) => Err(KafkaError::CreateTopic {
            topic: topic.to_string(),
            code: code.to_string(),
        }),
    }
}
