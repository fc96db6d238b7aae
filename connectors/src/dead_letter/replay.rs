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
//! Letters are read as the partition is processed, a batch at a time (a
//! file line by line from the store, a topic partition through its own
//! consumer): a replay holds no more of the queue than a run of the same
//! pipeline holds of its input.
//!
//! Replayed through a pipeline that reads Kafka, every record gets its
//! metadata columns back from where it was first consumed (topic,
//! partition, offset, key, timestamp, headers): the stages see what they
//! saw the first time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::BinaryArray;

use super::read::{self, LetterFile, LetterLines, ReadError};
use super::{DeadLetter, KafkaOrigin};
use crate::kafka::KafkaConnection;
use crate::kafka::dead_letters::{self, TopicLetters};
use crate::kafka::meta::MetaBuilder;
use crate::source::{
    BatchLimits, Origin, PartitionInfo, PartitionReader, RawBatch, Source, SourceError,
};
use crate::store::Location;

/// Dead letters to run through a pipeline again.
#[derive(Debug, Clone)]
pub struct ReplaySource {
    partitions: Vec<Queued>,
    kafka_meta: bool,
}

/// One partition of the queue, read when its turn comes.
#[derive(Debug, Clone)]
struct Queued {
    info: PartitionInfo,
    /// Prefixes a position in descriptions (`dlq/a.ndjson:`, `orders.dlq/0@`).
    at: String,
    letters: Letters,
}

#[derive(Debug, Clone)]
enum Letters {
    File {
        location: Location,
        file: LetterFile,
    },
    Topic {
        connection: KafkaConnection,
        topic: String,
        partition: TopicPartition,
    },
}

/// What a replay reads of one partition of a dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPartition {
    /// The partition.
    pub partition: i32,
    /// The offsets read: from the first to just before the second.
    pub range: (i64, i64),
    /// The offsets to replay among them, ascending (one letter per
    /// rejected record; see [`scan_topic`]).
    pub keep: Arc<[i64]>,
}

/// What [`scan_topic`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicScan {
    /// Per partition with letters, what to replay.
    pub partitions: Vec<TopicPartition>,
    /// Letters read.
    pub letters: usize,
    /// Letters left out because an earlier one is about the same record.
    pub repeated: usize,
}

impl TopicScan {
    /// Partition → the offset after the last letter read: where the next
    /// replay starts.
    pub fn next_offsets(&self) -> BTreeMap<i32, i64> {
        self.partitions
            .iter()
            .map(|p| (p.partition, p.range.1))
            .collect()
    }
}

/// Reads `topic` from `from` (partition → offset; the low-water mark where
/// missing) to its end, keeping of each letter only its place and the
/// identity of its record ([`dead_letters::origin_key`], 16 bytes): of the
/// letters about one record (a crash before a commit produces them again)
/// the one at the lowest (partition, offset) is replayed, whatever order
/// the partitions are read in, so a replay run again picks the same ones.
/// Blocking.
pub fn scan_topic(
    connection: &KafkaConnection,
    topic: &str,
    from: &BTreeMap<i32, i64>,
    check: read::Check<'_>,
    timeout: Duration,
) -> Result<TopicScan, crate::kafka::KafkaError> {
    let mut letters = TopicLetters::open(connection, topic, from, timeout)?;
    let mut first: std::collections::HashMap<u128, (i32, i64)> = Default::default();
    let mut kept: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    let mut read = 0;
    while let Some(letter) = letters.next_letter()? {
        read += 1;
        let at = (letter.partition, letter.offset);
        check(&letter.letter).map_err(|message| crate::kafka::KafkaError::BadLetter {
            topic: topic.to_string(),
            partition: at.0,
            offset: at.1,
            message,
        })?;
        let range = ranges.entry(at.0).or_insert((at.1, at.1 + 1));
        *range = (range.0.min(at.1), range.1.max(at.1 + 1));
        match dead_letters::origin_key(&letter.letter) {
            Some(key) => {
                let earliest = first.entry(key).or_insert(at);
                *earliest = (*earliest).min(at);
            }
            None => kept.entry(at.0).or_default().push(at.1),
        }
    }
    let repeated = read - first.len() - kept.values().map(Vec::len).sum::<usize>();
    for (partition, offset) in first.into_values() {
        kept.entry(partition).or_default().push(offset);
    }
    let partitions = ranges
        .into_iter()
        .map(|(partition, range)| {
            let mut keep = kept.remove(&partition).unwrap_or_default();
            keep.sort_unstable();
            TopicPartition {
                partition,
                range,
                keep: keep.into(),
            }
        })
        .collect();
    Ok(TopicScan {
        partitions,
        letters: read,
        repeated,
    })
}

impl ReplaySource {
    /// A source over dead-letter `files` under `location`; with
    /// `kafka_meta`, every record must say where it was consumed from Kafka.
    pub fn from_files(location: &Location, files: &[LetterFile], kafka_meta: bool) -> Self {
        let partitions = files
            .iter()
            .map(|file| {
                let hash = file.sha256.get(..12).unwrap_or(&file.sha256);
                Queued::new(
                    format!("replay-{hash}"),
                    file.display.clone(),
                    format!("{}:", file.display),
                    file.size,
                    Letters::File {
                        location: location.clone(),
                        file: file.clone(),
                    },
                )
            })
            .collect();
        ReplaySource {
            partitions,
            kafka_meta,
        }
    }

    /// A source over what `scan` found in dead-letter topic `topic`, one
    /// partition per topic partition.
    pub fn from_topic(
        connection: &KafkaConnection,
        topic: &str,
        scan: &TopicScan,
        kafka_meta: bool,
    ) -> Self {
        let safe = crate::source::filename_safe(topic);
        let partitions = scan
            .partitions
            .iter()
            .map(|p| {
                Queued::new(
                    format!("replay-{safe}-{}", p.partition),
                    format!("{topic}/{}", p.partition),
                    format!("{topic}/{}@", p.partition),
                    0,
                    Letters::Topic {
                        connection: connection.clone(),
                        topic: topic.to_string(),
                        partition: p.clone(),
                    },
                )
            })
            .collect();
        ReplaySource {
            partitions,
            kafka_meta,
        }
    }
}

impl Queued {
    fn new(stream: String, label: String, at: String, bytes: u64, letters: Letters) -> Self {
        Queued {
            info: PartitionInfo {
                stream,
                origin: Origin::Replay {
                    queue: Arc::from(at.as_str()),
                },
                label,
                bytes,
            },
            at,
            letters,
        }
    }
}

/// How long a topic partition's reader waits for its next letter.
const TOPIC_TIMEOUT: Duration = Duration::from_secs(60);

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
                    kafka_meta: self.kafka_meta,
                    open: None,
                    bytes_read: 0,
                }) as Box<dyn PartitionReader>
            })
            .collect())
    }
}

/// Where `letter`'s record was first consumed from Kafka, which a replay
/// through a pipeline that reads Kafka needs (refused up front, see
/// [`read::list_files`] and [`scan_topic`]).
pub fn kafka_origin(letter: &DeadLetter) -> Result<KafkaOrigin, String> {
    letter
        .kafka
        .clone()
        .or_else(|| KafkaOrigin::from_source(first_source(&letter.source)))
        .ok_or_else(|| {
            format!(
                "the pipeline reads Kafka, but this record came from {} and carries no Kafka topic, partition and offset",
                letter.source
            )
        })
}

/// Strips what an earlier replay added to a source description.
fn first_source(source: &str) -> &str {
    source
        .split_once(" (replayed from ")
        .map_or(source, |(first, _)| first)
}

struct ReplayReader {
    queued: Queued,
    kafka_meta: bool,
    open: Option<OpenLetters>,
    bytes_read: u64,
}

/// A partition's letters being read.
enum OpenLetters {
    File(LetterLines<Box<dyn std::io::BufRead + Send>>),
    Topic {
        letters: TopicLetters,
        keep: Arc<[i64]>,
        /// Index into `keep` of the next offset to replay.
        next: usize,
    },
}

impl OpenLetters {
    fn open(letters: &Letters) -> Result<Self, SourceError> {
        Ok(match letters {
            Letters::File { location, file } => {
                OpenLetters::File(read::letters(location, file).map_err(read_error)?)
            }
            Letters::Topic {
                connection,
                topic,
                partition,
            } => OpenLetters::Topic {
                letters: TopicLetters::range(
                    connection,
                    topic,
                    partition.partition,
                    partition.range,
                    TOPIC_TIMEOUT,
                )
                .map_err(|e| SourceError::Replay(e.to_string()))?,
                keep: partition.keep.clone(),
                next: 0,
            },
        })
    }

    /// The next letter to replay, with its position.
    fn next(&mut self) -> Result<Option<(u64, DeadLetter)>, SourceError> {
        match self {
            OpenLetters::File(lines) => lines
                .next()
                .transpose()
                .map(|l| l.map(|(line, letter)| (line as u64, letter)))
                .map_err(read_error),
            OpenLetters::Topic {
                letters,
                keep,
                next,
            } => loop {
                let Some(letter) = letters
                    .next_letter()
                    .map_err(|e| SourceError::Replay(e.to_string()))?
                else {
                    return Ok(None);
                };
                while keep.get(*next).is_some_and(|k| *k < letter.offset) {
                    *next += 1;
                }
                if keep.get(*next) == Some(&letter.offset) {
                    *next += 1;
                    return Ok(Some((letter.offset.max(0) as u64, letter.letter)));
                }
            },
        }
    }
}

fn read_error(error: ReadError) -> SourceError {
    SourceError::Replay(error.to_string())
}

impl PartitionReader for ReplayReader {
    fn info(&self) -> &PartitionInfo {
        &self.queued.info
    }

    fn next_batch(&mut self, limits: BatchLimits) -> Result<Option<RawBatch>, SourceError> {
        let open = match &mut self.open {
            Some(open) => open,
            None => self.open.insert(OpenLetters::open(&self.queued.letters)?),
        };
        let (mut payloads, mut positions, mut first_sources) = (Vec::new(), Vec::new(), Vec::new());
        let mut meta = self
            .kafka_meta
            .then(|| MetaBuilder::replayed(Arc::from(self.queued.info.label.as_str())));
        let mut bytes = 0;
        while payloads.is_empty()
            || (payloads.len() < limits.max_records && bytes < limits.max_bytes)
        {
            let Some((position, letter)) = open.next()? else {
                break;
            };
            let at = || format!("{}{position}", self.queued.at);
            let payload = letter.original_bytes().map_err(|message| SourceError::Io {
                path: at(),
                source: std::io::Error::other(message),
            })?;
            if let Some(meta) = &mut meta {
                let origin = kafka_origin(&letter).map_err(|message| SourceError::Io {
                    path: at(),
                    source: std::io::Error::other(message),
                })?;
                meta.push_origin(&origin);
            }
            bytes += payload.len();
            payloads.push(payload);
            positions.push(position);
            first_sources.push(first_source(&letter.source).to_string());
        }
        if payloads.is_empty() {
            return Ok(None);
        }
        self.bytes_read += bytes as u64;
        Ok(Some(RawBatch {
            payloads: BinaryArray::from_iter_values(&payloads),
            positions,
            byte_offsets: Vec::new(),
            meta: meta.map(|mut m| m.finish()),
            first_sources,
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

    /// `letters` written as a dead-letter file `name` in a new directory,
    /// then read back as a replay source.
    fn replay(
        name: &str,
        letters: &[DeadLetter],
        kafka_meta: bool,
    ) -> (tempfile::TempDir, ReplaySource) {
        let dir = tempfile::tempdir().unwrap();
        let text: String = letters
            .iter()
            .map(|l| serde_json::to_string(l).unwrap() + "\n")
            .collect();
        std::fs::write(dir.path().join(name), text).unwrap();
        let location = Location::local(dir.path()).unwrap();
        let files = read::list_files(&location, None, &|_| Ok(())).unwrap();
        let source = ReplaySource::from_files(&location, &files, kafka_meta);
        (dir, source)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn originals_come_back_in_batches_with_line_positions() {
        tokio::task::spawn_blocking(|| {
            let (_dir, source) = replay(
                "a.ndjson",
                &[
                    letter("in.ndjson:4", b"{\"a\":1}"),
                    letter("in.ndjson:9 (replayed from dlq/x.ndjson:2)", b"\xff"),
                    letter("in.ndjson:12", b"{}"),
                ],
                false,
            );
            let mut parts = source.partitions().unwrap();
            let reader = &mut parts[0];
            assert!(reader.info().stream.starts_with("replay-"));
            assert_eq!(reader.info().stream.len(), "replay-".len() + 12);
            let limits = BatchLimits {
                max_records: 2,
                max_bytes: 1 << 20,
            };
            let first = reader.next_batch(limits).unwrap().unwrap();
            assert_eq!(first.positions, vec![1, 2]);
            assert_eq!(first.payloads.value(1), b"\xff");
            let origin = reader.info().origin.clone();
            assert!(
                first
                    .describe(&origin, 1)
                    .starts_with("in.ndjson:9 (replayed from "),
                "{}",
                first.describe(&origin, 1)
            );
            assert!(first.describe(&origin, 1).ends_with("a.ndjson:2)"));
            let second = reader.next_batch(limits).unwrap().unwrap();
            assert_eq!(second.positions, vec![3]);
            assert!(reader.next_batch(limits).unwrap().is_none());
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn letters_replay_with_the_metadata_they_were_first_consumed_with() {
        tokio::task::spawn_blocking(|| {
            let consumed = |partition: i32, offset: i64| DeadLetter {
                kafka: Some(KafkaOrigin {
                    topic: "orders".into(),
                    partition,
                    offset,
                    timestamp_ms: Some(1_700_000_000_000 + offset),
                    key: Some(format!("k{offset}").into_bytes()),
                    headers: Vec::new(),
                }),
                ..letter(&format!("orders/{partition}@{offset}"), b"{}")
            };
            let (_dir, source) = replay("b.ndjson", &[consumed(1, 40), consumed(3, 70)], true);
            let mut parts = source.partitions().unwrap();
            let reader = &mut parts[0];
            let limits = BatchLimits {
                max_records: 10,
                max_bytes: 1 << 20,
            };
            let batch = reader.next_batch(limits).unwrap().unwrap();
            assert_eq!(batch.positions, vec![1, 2], "in line order");
            let meta = batch.meta.as_ref().unwrap();
            assert_eq!(meta.source(0, 1), ("orders", 1, 40));
            assert_eq!(meta.source(1, 2), ("orders", 3, 70));
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
            let (partitions, offsets) = (column("_partition"), column("_offset"));
            assert_eq!(partitions.len(), 1);
            let partition = partitions.as_any().downcast_ref::<Int32Array>().unwrap();
            assert_eq!(partition.value(0), 3);
            let offset = offsets.as_any().downcast_ref::<Int64Array>().unwrap();
            assert_eq!(offset.value(0), 70);
            let described = batch.describe(&reader.info().origin, 1);
            assert!(
                described.starts_with("orders/3@70 (replayed from "),
                "{described}"
            );

            // A record never consumed from Kafka cannot be replayed as if it had been.
            let error = kafka_origin(&letter("in.ndjson:4", b"{}")).unwrap_err();
            assert!(error.starts_with("the pipeline reads Kafka"), "{error}");
            assert!(kafka_origin(&letter("orders/2@9", b"{}")).is_ok());
        })
        .await
        .unwrap();
    }
}
