//! Where a dead letter was consumed from Kafka: what a replay needs to give
//! the record back its metadata columns (`_key`, `_topic`, `_partition`,
//! `_offset`, `_timestamp`, `_headers`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The Kafka message a rejected record was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaOrigin {
    /// The topic it was read from.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// The message timestamp (ms since the epoch, UTC), when the broker gave one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timestamp_ms: Option<i64>,
    /// The message key, base64 in JSON.
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        with = "optional_base64"
    )]
    pub key: Option<Vec<u8>>,
    /// The message headers, in order.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub headers: Vec<KafkaHeader>,
}

/// One message header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaHeader {
    /// Its name.
    pub name: String,
    /// Its value (base64 in JSON), null when the header has none.
    #[serde(with = "optional_base64")]
    pub value: Option<Vec<u8>>,
}

impl KafkaOrigin {
    /// Parses `topic/partition@offset`, the `source` of a letter consumed from
    /// Kafka (key, timestamp and headers unknown).
    pub fn from_source(source: &str) -> Option<KafkaOrigin> {
        let (topic, rest) = source.rsplit_once('/')?;
        let (partition, offset) = rest.split_once('@')?;
        let offset = offset.split(' ').next()?;
        Some(KafkaOrigin {
            topic: topic.to_string(),
            partition: partition.parse().ok()?,
            offset: offset.parse().ok()?,
            timestamp_ms: None,
            key: None,
            headers: Vec::new(),
        })
    }
}

mod optional_base64 {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => serializer.serialize_some(&STANDARD.encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| STANDARD.decode(text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_header_values_survive_json_as_base64() {
        let origin = KafkaOrigin {
            topic: "orders".into(),
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(b"\xffk".to_vec()),
            headers: vec![
                KafkaHeader {
                    name: "trace".into(),
                    value: Some(b"t1".to_vec()),
                },
                KafkaHeader {
                    name: "empty".into(),
                    value: None,
                },
            ],
        };
        let json = serde_json::to_string(&origin).unwrap();
        assert!(json.contains(r#""key":"/2s=""#), "{json}");
        assert_eq!(serde_json::from_str::<KafkaOrigin>(&json).unwrap(), origin);
    }

    #[test]
    fn a_kafka_source_description_parses_back() {
        let origin = KafkaOrigin::from_source("orders.eu/3@1207 (replayed from x:1)").unwrap();
        assert_eq!(
            (origin.topic.as_str(), origin.partition, origin.offset),
            ("orders.eu", 3, 1207)
        );
        assert!(KafkaOrigin::from_source("orders.ndjson:12").is_none());
    }
}
