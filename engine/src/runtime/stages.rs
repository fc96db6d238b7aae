//! A raw batch through validate and the later stages, with no I/O but
//! on-demand lookups: what survives, which raw row each surviving row is,
//! and every reject with its raw row. Workers route and write the result;
//! `run --dry-run` prints it.

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use tracing::Instrument;
use tributary_connectors::source::RawBatch;
use tributary_stages::{Reject, Route, StageOutput};

use super::error::PartitionError;
use crate::counts::StageCounts;
use crate::plan::Pipeline;

/// A record a stage rejected.
#[derive(Debug)]
pub(crate) struct Rejected {
    /// 0 for validate, then the stages in order.
    pub(crate) stage_index: usize,
    /// The stage kind.
    pub(crate) stage: &'static str,
    /// The record's row in the raw batch.
    pub(crate) raw_row: usize,
    /// Where it goes and why.
    pub(crate) reject: Reject,
}

/// What the stages made of one raw batch.
#[derive(Debug)]
pub(crate) struct Processed {
    /// The rows that reach the outputs, in the output schema.
    pub(crate) batch: RecordBatch,
    /// `rows[i]`: the raw row behind `batch` row `i`.
    pub(crate) rows: Vec<usize>,
    /// Rejects in stage order.
    pub(crate) rejected: Vec<Rejected>,
    /// Per stage (validate first): its counts for this batch and the time it took.
    pub(crate) stages: Vec<(&'static str, StageCounts, Duration)>,
}

/// Runs `raw` through every stage of `pipeline` (awaiting only on-demand lookups).
pub(crate) async fn process(
    pipeline: &Pipeline,
    raw: &RawBatch,
) -> Result<Processed, PartitionError> {
    let mut clock = Instant::now();
    let mut processed = Processed {
        batch: RecordBatch::new_empty(pipeline.output_schema.clone()),
        rows: (0..raw.len()).collect(),
        rejected: Vec::new(),
        stages: Vec::with_capacity(1 + pipeline.stages.len()),
    };
    let validated = tracing::info_span!("stage", stage = "validate", records = raw.len())
        .in_scope(|| pipeline.plan.validate.apply(&raw.payloads))
        .map_err(|source| PartitionError::Stage {
            stage: "validate",
            source,
        })?;
    let validated = match &raw.meta {
        Some(meta) if !meta.malformed().is_empty() => {
            reject_malformed(validated, raw.len(), meta.malformed())
                .map_err(PartitionError::Metadata)?
        }
        _ => validated,
    };
    processed.reject(0, "validate", validated.rejects, clock.elapsed());
    let mut batch = validated.batch;
    if let Some(meta) = &raw.meta {
        batch = meta
            .append_columns(&batch, &processed.rows, &raw.positions)
            .map_err(PartitionError::Metadata)?;
    }
    clock = Instant::now();
    for (i, planned) in pipeline.stages.iter().enumerate() {
        let span = tracing::info_span!("stage", stage = planned.kind, records = batch.num_rows());
        let out = match &planned.keyed {
            Some(keyed) => {
                super::lookups::enrich_keyed(keyed, &batch)
                    .instrument(span)
                    .await?
            }
            None => span
                .in_scope(|| planned.stage.apply(&batch))
                .map_err(|source| PartitionError::Stage {
                    stage: planned.kind,
                    source,
                })?,
        };
        processed.reject(i + 1, planned.kind, out.rejects, clock.elapsed());
        clock = Instant::now();
        batch = out.batch;
    }
    debug_assert_eq!(batch.num_rows(), processed.rows.len());
    processed.batch = batch;
    Ok(processed)
}

impl Processed {
    /// Records what stage `index` did: its rejects (rows of the current
    /// batch) are resolved to raw rows and dropped from `rows`.
    fn reject(&mut self, index: usize, stage: &'static str, rejects: Vec<Reject>, took: Duration) {
        let mut counts = StageCounts {
            records_in: self.rows.len() as u64,
            ..Default::default()
        };
        let mut rejected = vec![false; self.rows.len()];
        for reject in rejects {
            let Some(raw_row) = self.rows.get(reject.row).copied() else {
                continue;
            };
            rejected[reject.row] = true;
            match reject.route {
                Route::Dlq => counts.dlq += 1,
                Route::Review => counts.review += 1,
            }
            self.rejected.push(Rejected {
                stage_index: index,
                stage,
                raw_row,
                reject,
            });
        }
        let mut keep = rejected.iter().map(|r| !r);
        self.rows.retain(|_| keep.next().unwrap_or(true));
        counts.records_out = self.rows.len() as u64;
        self.stages.push((stage, counts, took));
    }
}

/// The rule under which records with malformed Kafka metadata go to the DLQ.
pub(crate) const MALFORMED_METADATA: &str = "kafka_metadata";

/// Sends the records whose Kafka metadata is malformed (`malformed`: raw
/// rows with why) to the DLQ, whatever validate made of their values.
fn reject_malformed(
    validated: StageOutput,
    records: usize,
    malformed: &[(usize, String)],
) -> Result<StageOutput, arrow::error::ArrowError> {
    let StageOutput { batch, mut rejects } = validated;
    let why: std::collections::HashMap<usize, &str> = malformed
        .iter()
        .map(|(row, why)| (*row, why.as_str()))
        .collect();
    let mut rejected = vec![false; records];
    for reject in &mut rejects {
        if let Some(flag) = rejected.get_mut(reject.row) {
            *flag = true;
        }
        if let Some(why) = why.get(&reject.row) {
            reject.rule = MALFORMED_METADATA.into();
            reject.reason = format!("{why}; the value: {}", reject.reason);
        }
    }
    let survivors = (0..records).filter(|row| !rejected[*row]);
    let mut keep = Vec::with_capacity(batch.num_rows());
    for row in survivors {
        match why.get(&row) {
            Some(why) => {
                keep.push(false);
                rejects.push(Reject {
                    row,
                    route: Route::Dlq,
                    rule: MALFORMED_METADATA.into(),
                    reason: (*why).to_string(),
                });
            }
            None => keep.push(true),
        }
    }
    rejects.sort_by_key(|r| r.row);
    let batch =
        arrow::compute::filter_record_batch(&batch, &arrow::array::BooleanArray::from(keep))?;
    Ok(StageOutput { batch, rejects })
}
