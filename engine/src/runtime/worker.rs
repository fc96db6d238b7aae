//! One partition's processing: raw batch → validate → stages → outputs, with
//! every reject routed to its door. Used by bounded partitions (files) and
//! by Kafka partitions alike; only how files are placed and when they are
//! closed differs.

use std::sync::Arc;

use tracing::Instrument;

use arrow::array::{Array, RecordBatch};
use tributary_connectors::commit_log::StagedFile;
use tributary_connectors::dead_letter::{self, DeadLetter, DeadLetterWriter};
use tributary_connectors::kafka::producer::{DeadLetterTopic, JsonTopic, SourceMessage};
use tributary_connectors::parquet::{PartitionedParquetWriter, Placement, PublishedFile};
use tributary_connectors::raw_zone;
use tributary_connectors::source::{Origin, PartitionInfo, RawBatch};
use tributary_stages::Route;

use super::error::PartitionError;
use super::stages::{self, Rejected};
use super::{DeadLetterDestination, Destinations};
use crate::counts::Counts;
use crate::plan::{OutputKind, Pipeline};
use crate::telemetry::Metrics;

/// Dead letters for one destination.
enum DeadLetterSink {
    Files(DeadLetterWriter),
    Topic(DeadLetterTopic),
}

/// What a partition has written since the last close, ready to be committed.
#[derive(Debug, Default)]
pub(crate) struct Closed {
    /// Files closed, by destination name (staged when the placement is staged).
    pub(crate) files: Vec<StagedFile>,
    /// Parquet files closed, by output name, for the summary.
    pub(crate) parquet: Vec<(String, PublishedFile)>,
    /// Dead-letter files closed, by destination.
    pub(crate) dead_letter_files: Vec<(&'static str, String)>,
}

/// One Parquet output's writer for this partition.
struct OutputWriter {
    /// The output's name.
    name: String,
    /// What it holds: records leaving the stages, or messages as consumed.
    kind: OutputKind,
    writer: PartitionedParquetWriter,
}

/// State of one partition's processing.
pub(crate) struct Worker<'p> {
    pipeline: &'p Pipeline,
    info: PartitionInfo,
    parquet: Vec<OutputWriter>,
    topics: Vec<JsonTopic>,
    dlq: DeadLetterSink,
    review: DeadLetterSink,
    pub(crate) counts: Counts,
    now: String,
    error_rate: Option<Arc<super::alerts::ErrorRate>>,
    metrics: Arc<Metrics>,
    /// The partition as metrics name it (bounded: Kafka partitions, or `batch`).
    metrics_label: String,
    /// Where dead letters too large for their topic are kept whole.
    state: Option<tributary_connectors::store::Location>,
}

impl<'p> Worker<'p> {
    pub(crate) fn new(
        pipeline: &'p Pipeline,
        destinations: &Destinations,
        info: &PartitionInfo,
        placement: Placement,
    ) -> Result<Self, PartitionError> {
        let parquet = destinations
            .outputs
            .iter()
            .map(|o| {
                let schema = match o.planned.kind {
                    OutputKind::Raw => raw_zone::schema(),
                    OutputKind::Records => pipeline.output_schema.clone(),
                };
                let writer = PartitionedParquetWriter::new(
                    o.location.clone(),
                    o.planned.options.clone(),
                    &schema,
                    &info.stream,
                )?;
                Ok::<_, PartitionError>(OutputWriter {
                    name: o.planned.name.clone(),
                    kind: o.planned.kind,
                    writer: writer.with_placement(placement),
                })
            })
            .collect::<Result<_, _>>()?;
        let topics = destinations
            .topic_outputs
            .iter()
            .map(|o| JsonTopic::new(o.producer.clone(), &o.topic))
            .collect();
        let sink = |destination: &DeadLetterDestination| match destination {
            DeadLetterDestination::Files {
                location,
                max_file_bytes,
            } => DeadLetterSink::Files(
                DeadLetterWriter::new(location.clone(), &info.stream, *max_file_bytes)
                    .with_placement(placement),
            ),
            DeadLetterDestination::Topic {
                producer,
                topic,
                max_message_bytes,
            } => DeadLetterSink::Topic(DeadLetterTopic::new(
                producer.clone(),
                topic,
                *max_message_bytes,
            )),
        };
        Ok(Worker {
            pipeline,
            info: info.clone(),
            parquet,
            topics,
            dlq: sink(&destinations.dlq),
            review: sink(&destinations.review),
            counts: Counts::new(1 + pipeline.stages.len()),
            now: String::new(),
            error_rate: destinations.error_rate.clone(),
            metrics: destinations.metrics.clone(),
            state: destinations.state_location().cloned(),
            metrics_label: match &info.origin {
                Origin::Kafka { topic, partition } => format!("{topic}/{partition}"),
                Origin::File { .. } | Origin::Replay { .. } => "batch".to_string(),
            },
        })
    }

    /// Runs one raw batch through every stage and writes what survives.
    pub(crate) async fn process(&mut self, raw: &RawBatch) -> Result<(), PartitionError> {
        self.now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.metrics.batch_read(raw.len());
        self.archive(raw).await?;
        self.counts.records_in += raw.len() as u64;
        self.counts.bytes_in += raw.payloads.values().len() as u64;
        let span = tracing::info_span!(
            "batch",
            pipeline = %self.pipeline.plan.name,
            partition = %self.metrics_label,
            stream = %self.info.stream,
            first_position = raw.positions.first().copied().unwrap_or_default(),
            records = raw.len(),
        );
        let processed = stages::process(self.pipeline, raw).instrument(span).await?;
        for rejected in &processed.rejected {
            self.route(raw, rejected).await?;
        }
        for (i, (name, counts, took)) in processed.stages.iter().enumerate() {
            self.counts.stages[i].records_in += counts.records_in;
            self.counts.stages[i].records_out += counts.records_out;
            self.metrics
                .stage_batch(&self.metrics_label, name, counts, *took);
        }
        self.write(&processed.batch, raw, &processed.rows).await?;
        if let Some(alert) = &self.error_rate {
            alert.record(raw.len() as u64, processed.rejected.len() as u64);
        }
        Ok(())
    }

    /// Writes the batch as consumed to the raw-zone outputs.
    async fn archive(&mut self, raw: &RawBatch) -> Result<(), PartitionError> {
        if !self.parquet.iter().any(|o| o.kind == OutputKind::Raw) || raw.is_empty() {
            return Ok(());
        }
        let rows = raw_zone::batch(raw, chrono::Utc::now().timestamp_millis())
            .map_err(PartitionError::Metadata)?;
        for output in &mut self.parquet {
            if output.kind == OutputKind::Raw {
                output.writer.write(&rows, &raw.positions).await?;
            }
        }
        Ok(())
    }

    async fn write(
        &mut self,
        batch: &RecordBatch,
        raw: &RawBatch,
        rows: &[usize],
    ) -> Result<(), PartitionError> {
        debug_assert_eq!(batch.num_rows(), rows.len());
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let positions: Vec<u64> = rows.iter().map(|r| raw.positions[*r]).collect();
        for output in &mut self.parquet {
            if output.kind == OutputKind::Records {
                output.writer.write(batch, &positions).await?;
            }
        }
        if !self.topics.is_empty() {
            let keys: Vec<Option<&[u8]>> = rows
                .iter()
                .map(|r| raw.meta.as_ref().and_then(|m| m.key(*r)))
                .collect();
            for topic in &mut self.topics {
                topic.write(batch, &keys).await?;
            }
        }
        self.counts.records_out += batch.num_rows() as u64;
        self.metrics
            .written(&self.metrics_label, batch.num_rows() as u64);
        Ok(())
    }

    /// Sends one rejected record to its door, with its original bytes.
    async fn route(&mut self, raw: &RawBatch, rejected: &Rejected) -> Result<(), PartitionError> {
        let (raw_row, reject) = (rejected.raw_row, &rejected.reject);
        let position = raw.positions[raw_row];
        let original = if raw.payloads.is_null(raw_row) {
            &[][..]
        } else {
            raw.payloads.value(raw_row)
        };
        let letter = DeadLetter {
            time: self.now.clone(),
            pipeline: self.pipeline.plan.name.clone(),
            stage: rejected.stage.to_string(),
            rule: reject.rule.clone(),
            reason: reject.reason.clone(),
            source: raw.describe(&self.info.origin, raw_row),
            position,
            byte_offset: raw.byte_offsets.get(raw_row).copied(),
            original: None,
            original_base64: None,
            kafka: None,
        };
        self.counts.count_reject(
            rejected.stage_index,
            rejected.stage,
            &reject.rule,
            reject.route,
        );
        let (sink, door) = match reject.route {
            Route::Dlq => (&mut self.dlq, "dlq"),
            Route::Review => (&mut self.review, "review"),
        };
        self.metrics.rejected(rejected.stage, &reject.rule, door);
        let meta = raw.meta.as_ref();
        match sink {
            DeadLetterSink::Files(writer) => {
                let letter = DeadLetter {
                    kafka: meta.map(|m| m.origin(raw_row, position)),
                    ..letter
                };
                writer.append(&letter.with_original(original)).await?
            }
            DeadLetterSink::Topic(topic) => {
                let source = meta.map(|m| {
                    let (topic, partition, offset) = m.source(raw_row, position);
                    SourceMessage {
                        topic,
                        partition,
                        offset: offset.max(0) as u64,
                        key: m.key(raw_row),
                        timestamp: m.timestamp(raw_row),
                    }
                });
                let headers = meta.map(|m| m.headers(raw_row)).unwrap_or_default();
                let key = source.and_then(|s| s.key);
                let kept_at = if topic.oversized(&letter, original, key, &headers) {
                    let whole = DeadLetter {
                        kafka: meta.map(|m| m.origin(raw_row, position)),
                        ..letter.clone()
                    }
                    .with_original(original);
                    Some(
                        keep_oversized(self.state.as_ref(), &self.info.stream, &whole, position)
                            .await?,
                    )
                } else {
                    None
                };
                topic
                    .send(&letter, original, source, &headers, kept_at.as_deref())
                    .await?
            }
        }
        Ok(())
    }

    /// Closes every open file and waits for every Kafka acknowledgement:
    /// afterwards, everything processed so far is durable (staged files
    /// still need their commit to be published).
    pub(crate) async fn close_all(&mut self) -> Result<Closed, PartitionError> {
        let mut closed = Closed::default();
        for output in &mut self.parquet {
            for file in output.writer.close_all().await? {
                closed.files.push(StagedFile {
                    destination: output.name.clone(),
                    staged: file.staged.clone().unwrap_or_else(|| file.path.clone()),
                    path: file.path.clone(),
                    records: file.rows,
                });
                closed.parquet.push((output.name.clone(), file));
            }
        }
        for topic in &mut self.topics {
            topic.flush().await?;
        }
        for (name, sink) in [("dlq", &mut self.dlq), ("review", &mut self.review)] {
            match sink {
                DeadLetterSink::Files(writer) => {
                    for file in writer.close_all().await? {
                        closed.files.push(StagedFile {
                            destination: name.to_string(),
                            staged: file.staged.clone().unwrap_or_else(|| file.path.clone()),
                            path: file.path.clone(),
                            records: file.records,
                        });
                        closed.dead_letter_files.push((name, file.path));
                    }
                }
                DeadLetterSink::Topic(topic) => {
                    topic.flush().await?;
                }
            }
        }
        Ok(closed)
    }

    /// The partition's identity.
    pub(crate) fn info(&self) -> &PartitionInfo {
        &self.info
    }
}

/// Stores a dead letter too large for its topic, whole, beside the commit
/// logs (see [`dead_letter::keep_oversized`]); returns where.
async fn keep_oversized(
    state: Option<&tributary_connectors::store::Location>,
    stream: &str,
    letter: &DeadLetter,
    position: u64,
) -> Result<String, PartitionError> {
    let Some(state) = state else {
        return Ok("nowhere (the pipeline has no file destination)".into());
    };
    Ok(dead_letter::keep_oversized(state, stream, letter, position).await?)
}
