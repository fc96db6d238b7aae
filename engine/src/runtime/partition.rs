//! One partition: read → validate → stages → outputs, with rejects routed.

use arrow::array::{Array, RecordBatch};
use tokio::sync::mpsc;
use tributary_connectors::dead_letter::{DeadLetter, DeadLetterError, DeadLetterWriter};
use tributary_connectors::parquet::{ParquetSinkError, PartitionedParquetWriter};
use tributary_connectors::source::{PartitionInfo, PartitionReader, RawBatch, SourceError};
use tributary_stages::{Reject, Route, StageError};

use super::summary::{Counts, PartitionSummary};
use super::{Destinations, StopHandle};
use crate::plan::Plan;

/// Why a partition stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// Reading failed.
    #[error("source: {0}")]
    Source(#[from] SourceError),
    /// A stage failed on a whole batch (not a record's fault).
    #[error("stage {stage}: {source}")]
    Stage {
        /// The stage kind.
        stage: &'static str,
        /// The failure.
        source: StageError,
    },
    /// Writing Parquet failed.
    #[error("output: {0}")]
    Output(#[from] ParquetSinkError),
    /// Writing a dead letter failed.
    #[error("dead letters: {0}")]
    DeadLetter(#[from] DeadLetterError),
}

/// Batches read ahead of processing, per partition.
const READ_AHEAD: usize = 2;

/// Runs one partition to its end (or until stopped); never panics on bad input.
pub(crate) async fn run(
    plan: &Plan,
    destinations: &Destinations,
    mut reader: Box<dyn PartitionReader>,
    stop: &StopHandle,
) -> PartitionSummary {
    let info = reader.info().clone();
    let (tx, rx) = mpsc::channel::<Result<RawBatch, SourceError>>(READ_AHEAD);
    let limits = plan.limits;
    let reader_stop = stop.clone();
    let read = tokio::task::spawn_blocking(move || {
        while !reader_stop.is_stopped() {
            let next = reader.next_batch(limits);
            let done = !matches!(next, Ok(Some(_)));
            let message = match next {
                Ok(Some(batch)) => Ok(batch),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            if tx.blocking_send(message).is_err() || done {
                break;
            }
        }
    });
    let mut worker = match Worker::new(plan, destinations, &info) {
        Ok(w) => w,
        Err(e) => return PartitionSummary::failed(info.label.clone(), e.to_string()),
    };
    let outcome = worker.consume(rx).await;
    let _ = read.await;
    worker.finish(outcome).await
}

/// State of one partition's processing.
struct Worker<'p> {
    plan: &'p Plan,
    info: PartitionInfo,
    writers: Vec<PartitionedParquetWriter>,
    dlq: DeadLetterWriter,
    review: DeadLetterWriter,
    counts: Counts,
    now: String,
}

impl<'p> Worker<'p> {
    fn new(
        plan: &'p Plan,
        destinations: &Destinations,
        info: &PartitionInfo,
    ) -> Result<Self, PartitionError> {
        let writers = plan
            .outputs
            .iter()
            .zip(&destinations.outputs)
            .map(|(o, location)| {
                PartitionedParquetWriter::new(
                    location.clone(),
                    o.options.clone(),
                    &plan.output_schema,
                    &info.stream,
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Worker {
            plan,
            info: info.clone(),
            writers,
            dlq: DeadLetterWriter::new(
                destinations.dlq.clone(),
                &info.stream,
                plan.dlq.max_file_bytes,
            ),
            review: DeadLetterWriter::new(
                destinations.review.clone(),
                &info.stream,
                plan.review.max_file_bytes,
            ),
            counts: Counts::new(1 + plan.stages.len()),
            now: String::new(),
        })
    }

    async fn consume(
        &mut self,
        mut rx: mpsc::Receiver<Result<RawBatch, SourceError>>,
    ) -> Result<(), PartitionError> {
        while let Some(message) = rx.recv().await {
            let raw = message?;
            self.now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            self.process(&raw).await?;
        }
        Ok(())
    }

    /// Runs one raw batch through every stage and writes what survives.
    async fn process(&mut self, raw: &RawBatch) -> Result<(), PartitionError> {
        self.counts.records_in += raw.len() as u64;
        self.counts.bytes_in += raw.payloads.values().len() as u64;
        let validated =
            self.plan
                .validate
                .apply(&raw.payloads)
                .map_err(|source| PartitionError::Stage {
                    stage: "validate",
                    source,
                })?;
        self.counts.stages[0].records_in += raw.len() as u64;
        // rows[i]: the raw row of the current batch's row i.
        let mut rows: Vec<usize> = (0..raw.len()).collect();
        self.route(0, "validate", raw, &mut rows, &validated.rejects)
            .await?;
        let mut batch = validated.batch;
        let plan = self.plan;
        for (i, planned) in plan.stages.iter().enumerate() {
            let out = planned
                .stage
                .apply(&batch)
                .map_err(|source| PartitionError::Stage {
                    stage: planned.kind,
                    source,
                })?;
            self.counts.stages[i + 1].records_in += batch.num_rows() as u64;
            self.route(i + 1, planned.kind, raw, &mut rows, &out.rejects)
                .await?;
            batch = out.batch;
        }
        self.write(&batch, raw, &rows).await
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
        for writer in &mut self.writers {
            writer.write(batch, &positions).await?;
        }
        self.counts.records_out += batch.num_rows() as u64;
        Ok(())
    }

    /// Sends a stage's rejects to their doors and drops them from `rows`.
    async fn route(
        &mut self,
        stage_index: usize,
        stage: &'static str,
        raw: &RawBatch,
        rows: &mut Vec<usize>,
        rejects: &[Reject],
    ) -> Result<(), PartitionError> {
        if rejects.is_empty() {
            self.counts.stages[stage_index].records_out += rows.len() as u64;
            return Ok(());
        }
        let mut rejected = vec![false; rows.len()];
        for reject in rejects {
            let raw_row = rows[reject.row];
            rejected[reject.row] = true;
            let position = raw.positions[raw_row];
            let letter = DeadLetter {
                time: self.now.clone(),
                pipeline: self.plan.name.clone(),
                stage: stage.to_string(),
                rule: reject.rule.clone(),
                reason: reject.reason.clone(),
                source: self.info.origin.describe(position),
                position,
                byte_offset: raw.byte_offsets.get(raw_row).copied(),
                original: None,
                original_base64: None,
            }
            .with_original(if raw.payloads.is_null(raw_row) {
                &[]
            } else {
                raw.payloads.value(raw_row)
            });
            let counts = &mut self.counts;
            match reject.route {
                Route::Dlq => {
                    counts.dlq += 1;
                    counts.stages[stage_index].dlq += 1;
                    *counts
                        .dlq_by_rule
                        .entry(format!("{stage}/{}", reject.rule))
                        .or_default() += 1;
                    self.dlq.append(&letter).await?;
                }
                Route::Review => {
                    counts.review += 1;
                    counts.stages[stage_index].review += 1;
                    *counts
                        .review_by_rule
                        .entry(format!("{stage}/{}", reject.rule))
                        .or_default() += 1;
                    self.review.append(&letter).await?;
                }
            }
        }
        let mut keep = rejected.iter().map(|r| !r);
        rows.retain(|_| keep.next().unwrap_or(true));
        self.counts.stages[stage_index].records_out += rows.len() as u64;
        Ok(())
    }

    /// Publishes everything written and reports.
    async fn finish(self, outcome: Result<(), PartitionError>) -> PartitionSummary {
        let mut error = outcome.err().map(|e| e.to_string());
        let mut files = Vec::new();
        for (writer, output) in self.writers.into_iter().zip(&self.plan.outputs) {
            match writer.finish().await {
                Ok(published) => {
                    files.extend(published.into_iter().map(|f| (output.name.clone(), f)))
                }
                Err(e) => error = error.or(Some(format!("output {}: {e}", output.name))),
            }
        }
        let mut dead_letter_files = Vec::new();
        for (name, writer) in [("dlq", self.dlq), ("review", self.review)] {
            match writer.finish().await {
                Ok((published, _)) => {
                    dead_letter_files.extend(published.into_iter().map(|p| (name, p)))
                }
                Err(e) => error = error.or(Some(format!("{name}: {e}"))),
            }
        }
        if let Some(error) = &error {
            tracing::error!(partition = %self.info.label, %error, "partition failed");
        }
        PartitionSummary {
            label: self.info.label,
            counts: self.counts,
            files,
            dead_letter_files,
            error,
            started: true,
        }
    }
}
