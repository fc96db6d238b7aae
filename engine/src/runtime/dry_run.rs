//! `run --dry-run --sample N`: the first N records of the source (the
//! next N a Kafka consumer group would read) through every stage, reporting
//! where each would go. Nothing is opened for writing: no output,
//! dead-letter or review file or topic, no commit.

use std::fmt;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use tributary_connectors::kafka::sample as kafka_sample;
use tributary_connectors::source::{BatchLimits, Origin, RawBatch};
use tributary_stages::Route;

use super::{RunError, stages};
use crate::plan::{Pipeline, PlannedSource};

/// A rejected record of a dry run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DryReject {
    /// Where it came from (`file:line`).
    pub source: String,
    /// `dlq` or `review`.
    pub door: &'static str,
    /// The stage that rejected it.
    pub stage: &'static str,
    /// The rule that fired.
    pub rule: String,
    /// Why.
    pub reason: String,
}

/// What a dry run found.
#[derive(Debug)]
pub struct DryRun {
    /// Records read.
    pub records: usize,
    /// The rows the outputs would receive.
    pub output: Vec<RecordBatch>,
    /// The records the DLQ and review queue would receive, in source order per stage.
    pub rejected: Vec<DryReject>,
    /// The outputs' names.
    pub outputs: Vec<String>,
}

impl DryRun {
    /// Rows the outputs would receive.
    pub fn output_rows(&self) -> usize {
        self.output.iter().map(RecordBatch::num_rows).sum()
    }

    /// Records a door would receive.
    pub fn to_door(&self, door: &str) -> usize {
        self.rejected.iter().filter(|r| r.door == door).count()
    }
}

/// Runs the first `sample` records of the pipeline's source through its stages:
/// the first records of a file or object source, or the next records the
/// consumer group would read from a Kafka source (read without joining the
/// group or committing anything).
pub async fn dry_run(pipeline: &Pipeline, sample: usize) -> Result<DryRun, RunError> {
    let mut run = DryRun {
        records: 0,
        output: Vec::new(),
        rejected: Vec::new(),
        outputs: pipeline
            .plan
            .outputs
            .iter()
            .map(|o| o.name.clone())
            .collect(),
    };
    match &pipeline.plan.source {
        PlannedSource::Bounded(source) => {
            let mut partitions = tokio::task::block_in_place(|| source.partitions())?;
            for reader in &mut partitions {
                while run.records < sample {
                    let limits = BatchLimits {
                        max_records: (sample - run.records).min(pipeline.plan.limits.max_records),
                        max_bytes: pipeline.plan.limits.max_bytes,
                    };
                    let Some(raw) = tokio::task::block_in_place(|| reader.next_batch(limits))?
                    else {
                        break;
                    };
                    let origin = reader.info().origin.clone();
                    run.add(pipeline, &origin, &raw).await?;
                }
            }
        }
        PlannedSource::Kafka(kafka) => {
            let settings = kafka.settings.clone();
            let batches = tokio::task::spawn_blocking(move || {
                kafka_sample::sample(&settings, sample, Duration::from_secs(10))
            })
            .await
            .map_err(|e| RunError::Unsupported(format!("sampling the topics failed: {e}")))??;
            for raw in batches {
                let Some(meta) = &raw.meta else { continue };
                let origin = Origin::Kafka {
                    topic: Arc::from(meta.topic.as_ref()),
                    partition: meta.partition,
                };
                run.add(pipeline, &origin, &raw).await?;
            }
        }
    }
    Ok(run)
}

impl DryRun {
    /// Runs one raw batch through the stages and notes where its records go.
    async fn add(
        &mut self,
        pipeline: &Pipeline,
        origin: &Origin,
        raw: &RawBatch,
    ) -> Result<(), RunError> {
        self.records += raw.len();
        let processed = stages::process(pipeline, raw)
            .await
            .map_err(RunError::DryRun)?;
        for rejected in processed.rejected {
            self.rejected.push(DryReject {
                source: raw.describe(origin, rejected.raw_row),
                door: match rejected.reject.route {
                    Route::Dlq => "dlq",
                    Route::Review => "review",
                },
                stage: rejected.stage,
                rule: rejected.reject.rule,
                reason: rejected.reject.reason,
            });
        }
        self.output.push(processed.batch);
        Ok(())
    }
}

impl fmt::Display for DryRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "dry run: {} records through every stage; nothing was written",
            self.records
        )?;
        writeln!(
            f,
            "  → outputs ({}): {}",
            self.outputs.join(", "),
            self.output_rows()
        )?;
        writeln!(f, "  → dlq: {}", self.to_door("dlq"))?;
        writeln!(f, "  → review: {}", self.to_door("review"))?;
        if !self.rejected.is_empty() {
            writeln!(f, "\nrejected:")?;
            for r in &self.rejected {
                writeln!(
                    f,
                    "  {}  → {}  {}/{}: {}",
                    r.source, r.door, r.stage, r.rule, r.reason
                )?;
            }
        }
        if self.output_rows() > 0 {
            writeln!(f, "\nrows the outputs would receive:")?;
            match arrow::util::pretty::pretty_format_batches(&self.output) {
                Ok(table) => writeln!(f, "{table}")?,
                Err(e) => writeln!(f, "  (cannot be shown: {e})")?,
            }
        }
        Ok(())
    }
}
