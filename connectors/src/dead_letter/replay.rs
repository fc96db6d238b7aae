//! Dead letters as a bounded source, for `tributary dlq replay`.
//!
//! Each dead-letter file, or each partition of a dead-letter topic, is one
//! partition. Its records are the original bytes, and a record's position
//! is its place in the queue (its line in the file, its offset in the
//! topic), so what a replay writes is named after `(stream, position)` like
//! any bounded run: running the same replay again rewrites the same files
//! instead of adding new ones. A file's stream is `replay-` and the first 12
//! hex digits of its SHA-256; a topic partition's is `replay-<topic>-<n>`.
//!
//! Replayed through a pipeline that reads Kafka, every record gets its
//! metadata columns back from where it was first consumed (topic,
//! partition, offset, key, timestamp, headers): the stages see what they
//! saw the first time.

use std::sync::Arc;

use arrow::array::BinaryArray;

use super::read::LetterFile;
use super::{DeadLetter, KafkaOrigin};
use crate::kafka::dead_letters::TopicLetter;
use crate::kafka::meta::MetaBuilder;
use crate::source::{
    BatchLimits, Origin, PartitionInfo, PartitionReader, RawBatch, Source, SourceError,
};

/// Dead letters to run through a pipeline again.
#[derive(Debug, Clone)]
pub struct ReplaySource {
    partitions: Vec<Arc<Queued>>,
}

/// One partition's records, ready to be read.
#[derive(Debug)]
struct Queued {
    info: PartitionInfo,
    payloads: Vec<Vec<u8>>,
    positions: Vec<u64>,
    /// Where each record was first consumed, when the pipeline reads Kafka.
    origins: Option<Vec<KafkaOrigin>>,
}

impl ReplaySource {
    /// A source over dead-letter `files`; with `kafka_meta`, every record
    /// must say where it was consumed from Kafka.
    pub fn from_files(files: &[LetterFile], kafka_meta: bool) -> Result<Self, SourceError> {
        let partitions = files
            .iter()
            .map(|file| {
                let hash = file.sha256.get(..12).unwrap_or(&file.sha256);
                let letters = file
                    .letters
                    .iter()
                    .enumerate()
                    .map(|(i, letter)| (i as u64 + 1, letter));
                Queued::new(
                    format!("replay-{hash}"),
                    file.display.clone(),
                    format!("{}:", file.display),
                    letters,
                    kafka_meta,
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(ReplaySource { partitions })
    }

    /// A source over `letters` read from dead-letter topic `topic`, one
    /// partition per topic partition.
    pub fn from_topic(
        topic: &str,
        letters: &[TopicLetter],
        kafka_meta: bool,
    ) -> Result<Self, SourceError> {
        let mut by_partition: std::collections::BTreeMap<i32, Vec<&TopicLetter>> =
            Default::default();
        for letter in letters {
            by_partition
                .entry(letter.partition)
                .or_default()
                .push(letter);
        }
        let safe = crate::source::filename_safe(topic);
        let partitions = by_partition
            .into_iter()
            .map(|(partition, mut letters)| {
                letters.sort_by_key(|l| l.offset);
                Queued::new(
                    format!("replay-{safe}-{partition}"),
                    format!("{topic}/{partition}"),
                    format!("{topic}/{partition}@"),
                    letters
                        .into_iter()
                        .map(|l| (l.offset.max(0) as u64, &l.letter)),
                    kafka_meta,
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(ReplaySource { partitions })
    }
}

impl Queued {
    /// `letters` as (position, letter); `at` prefixes a position in descriptions.
    fn new<'a>(
        stream: String,
        label: String,
        at: String,
        letters: impl Iterator<Item = (u64, &'a DeadLetter)>,
        kafka_meta: bool,
    ) -> Result<Arc<Queued>, SourceError> {
        let (mut payloads, mut positions, mut sources) = (Vec::new(), Vec::new(), Vec::new());
        let mut origins = kafka_meta.then(Vec::new);
        for (position, letter) in letters {
            let where_ = || format!("{at}{position}");
            let payload = letter.original_bytes().map_err(|message| SourceError::Io {
                path: where_(),
                source: std::io::Error::other(message),
            })?;
            if let Some(origins) = &mut origins {
                let origin = letter
                    .kafka
                    .clone()
                    .or_else(|| KafkaOrigin::from_source(first_source(&letter.source)))
                    .ok_or_else(|| SourceError::Io {
                        path: where_(),
                        source: std::io::Error::other(format!(
                            "the pipeline reads Kafka, but this record came from {} and carries no Kafka topic, partition and offset",
                            letter.source
                        )),
                    })?;
                origins.push(origin);
            }
            payloads.push(payload);
            positions.push(position);
            sources.push((position, first_source(&letter.source).to_string()));
        }
        let bytes = payloads.iter().map(|p| p.len() as u64).sum();
        Ok(Arc::new(Queued {
            info: PartitionInfo {
                stream,
                origin: Origin::Replay {
                    queue: Arc::from(at.as_str()),
                    sources: Arc::new(sources),
                },
                label,
                bytes,
            },
            payloads,
            positions,
            origins,
        }))
    }
}

impl Source for ReplaySource {
    fn bounded(&self) -> bool {
        true
    }

    fn partitions(&self) -> Result<Vec<Box<dyn PartitionReader>>, SourceError> {
        Ok(self
            .partitions
            .iter()
            .map(|queued| {
                Box::new(ReplayReader {
                    queued: queued.clone(),
                    next: 0,
                    bytes_read: 0,
                }) as Box<dyn PartitionReader>
            })
            .collect())
    }
}

/// Strips what an earlier replay added to a source description.
fn first_source(source: &str) -> &str {
    source
        .split_once(" (replayed from ")
        .map_or(source, |(first, _)| first)
}

struct ReplayReader {
    queued: Arc<Queued>,
    next: usize,
    bytes_read: u64,
}

impl PartitionReader for ReplayReader {
    fn info(&self) -> &PartitionInfo {
        &self.queued.info
    }

    fn next_batch(&mut self, limits: BatchLimits) -> Result<Option<RawBatch>, SourceError> {
        let all = &self.queued.payloads;
        if self.next >= all.len() {
            return Ok(None);
        }
        let start = self.next;
        let mut bytes = 0;
        while self.next < all.len()
            && (self.next == start
                || (self.next - start < limits.max_records && bytes < limits.max_bytes))
        {
            bytes += all[self.next].len();
            self.next += 1;
        }
        self.bytes_read += bytes as u64;
        let meta = self.queued.origins.as_ref().map(|origins| {
            let mut builder = MetaBuilder::replayed(Arc::from(self.queued.info.label.as_str()));
            for origin in &origins[start..self.next] {
                builder.push_origin(origin);
            }
            builder.finish()
        });
        Ok(Some(RawBatch {
            payloads: BinaryArray::from_iter_values(&all[start..self.next]),
            positions: self.queued.positions[start..self.next].to_vec(),
            byte_offsets: Vec::new(),
            meta,
            held: Default::default(),
        }))
    }

    fn bytes_read(&self) -> u64 {
        self.bytes_read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::DeadLetter;

    fn letter(source: &str, original: &[u8]) -> DeadLetter {
        DeadLetter {
            time: "t".into(),
            pipeline: "p".into(),
            stage: "validate".into(),
            rule: "r".into(),
            reason: "x".into(),
            source: source.into(),
            position: 1,
            byte_offset: None,
            original: None,
            original_base64: None,
            kafka: None,
        }
        .with_original(original)
    }

    #[test]
    fn originals_come_back_in_batches_with_line_positions() {
        let file = LetterFile {
            path: "a.ndjson".into(),
            display: "dlq/a.ndjson".into(),
            letters: vec![
                letter("in.ndjson:4", b"{\"a\":1}"),
                letter("in.ndjson:9 (replayed from dlq/x.ndjson:2)", b"\xff"),
                letter("in.ndjson:12", b"{}"),
            ],
            sha256: "0123456789abcdef".into(),
        };
        let mut parts = ReplaySource::from_files(&[file], false)
            .unwrap()
            .partitions()
            .unwrap();
        let reader = &mut parts[0];
        assert_eq!(reader.info().stream, "replay-0123456789ab");
        let limits = BatchLimits {
            max_records: 2,
            max_bytes: 1 << 20,
        };
        let first = reader.next_batch(limits).unwrap().unwrap();
        assert_eq!(first.positions, vec![1, 2]);
        assert_eq!(first.payloads.value(1), b"\xff");
        let second = reader.next_batch(limits).unwrap().unwrap();
        assert_eq!(second.positions, vec![3]);
        assert!(reader.next_batch(limits).unwrap().is_none());
        assert_eq!(
            reader.info().origin.describe(2),
            "in.ndjson:9 (replayed from dlq/a.ndjson:2)"
        );
    }

    #[test]
    fn topic_letters_replay_with_the_metadata_they_were_first_consumed_with() {
        let consumed = |partition: i32, offset: i64, dlq_offset: i64| TopicLetter {
            partition: 0,
            offset: dlq_offset,
            letter: DeadLetter {
                kafka: Some(KafkaOrigin {
                    topic: "orders".into(),
                    partition,
                    offset,
                    timestamp_ms: Some(1_700_000_000_000 + offset),
                    key: Some(format!("k{offset}").into_bytes()),
                    headers: Vec::new(),
                }),
                ..letter(&format!("orders/{partition}@{offset}"), b"{}")
            },
        };
        let letters = vec![consumed(3, 70, 12), consumed(1, 40, 11)];
        let mut parts = ReplaySource::from_topic("orders.dlq", &letters, true)
            .unwrap()
            .partitions()
            .unwrap();
        let reader = &mut parts[0];
        assert_eq!(reader.info().stream, "replay-orders.dlq-0");
        let limits = BatchLimits {
            max_records: 10,
            max_bytes: 1 << 20,
        };
        let batch = reader.next_batch(limits).unwrap().unwrap();
        assert_eq!(batch.positions, vec![11, 12], "in dead-letter offset order");
        let meta = batch.meta.as_ref().unwrap();
        assert_eq!(meta.source(0, 11), ("orders", 1, 40));
        assert_eq!(meta.source(1, 12), ("orders", 3, 70));
        assert_eq!(meta.key(1), Some(&b"k70"[..]));
        // The stages see each row's own partition and offset.
        use arrow::array::{Array, Int32Array, Int64Array, RecordBatch};
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)]));
        let validated =
            RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(vec![0]))]).unwrap();
        let columns = meta
            .append_columns(&validated, &[1], &batch.positions)
            .unwrap();
        let column = |name: &str| columns.column_by_name(name).unwrap().clone();
        let partitions = column("_partition");
        let offsets = column("_offset");
        assert_eq!(partitions.len(), 1);
        assert_eq!(
            partitions
                .as_any()
                .downcast_ref::<Int32Array>()
                .unwrap()
                .value(0),
            3
        );
        assert_eq!(
            offsets
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0),
            70
        );
        assert_eq!(
            reader.info().origin.describe(12),
            "orders/3@70 (replayed from orders.dlq/0@12)"
        );

        // A record that was never consumed from Kafka cannot be replayed as if it had been.
        let file_letter = TopicLetter {
            partition: 0,
            offset: 5,
            letter: letter("in.ndjson:4", b"{}"),
        };
        let error = ReplaySource::from_topic("orders.dlq", &[file_letter], true)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("orders.dlq/0@5: the pipeline reads Kafka"),
            "{error}"
        );
    }
}
