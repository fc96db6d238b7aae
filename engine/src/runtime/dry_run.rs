//! `run --dry-run --sample N`: the first N records of a bounded source
//! through every stage, reporting where each would go. Nothing is opened
//! for writing: no output, dead-letter or review file, no commit.

use std::fmt;

use arrow::array::RecordBatch;
use tributary_connectors::source::BatchLimits;
use tributary_stages::Route;

use super::{RunError, stages};
use crate::plan::{Plan, PlannedSource};

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

/// Runs the first `sample` records of the plan's source through its stages.
pub async fn dry_run(plan: &Plan, sample: usize) -> Result<DryRun, RunError> {
    let PlannedSource::Bounded(source) = &plan.source else {
        return Err(RunError::Unsupported(
            "--dry-run reads file and object sources; a Kafka source is sampled by pointing a file source at a few exported messages".into(),
        ));
    };
    let mut partitions = tokio::task::block_in_place(|| source.partitions())?;
    let mut run = DryRun {
        records: 0,
        output: Vec::new(),
        rejected: Vec::new(),
        outputs: plan.outputs.iter().map(|o| o.name.clone()).collect(),
    };
    for reader in &mut partitions {
        while run.records < sample {
            let limits = BatchLimits {
                max_records: (sample - run.records).min(plan.limits.max_records),
                max_bytes: plan.limits.max_bytes,
            };
            let Some(raw) = tokio::task::block_in_place(|| reader.next_batch(limits))? else {
                break;
            };
            run.records += raw.len();
            let processed = stages::process(plan, &raw)
                .await
                .map_err(RunError::DryRun)?;
            for rejected in processed.rejected {
                run.rejected.push(DryReject {
                    source: reader
                        .info()
                        .origin
                        .describe(raw.positions[rejected.raw_row]),
                    door: match rejected.reject.route {
                        Route::Dlq => "dlq",
                        Route::Review => "review",
                    },
                    stage: rejected.stage,
                    rule: rejected.reject.rule,
                    reason: rejected.reject.reason,
                });
            }
            run.output.push(processed.batch);
        }
    }
    Ok(run)
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
