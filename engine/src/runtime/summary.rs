//! What a run did, added up per stage and per partition.

use std::collections::BTreeMap;

use std::fmt;
use std::time::Duration;
use tributary_connectors::kafka::consumer::PartitionLag;

use serde::Serialize;
use tributary_connectors::parquet::PublishedFile;

use super::Destinations;
use crate::counts::Counts;
use crate::plan::Pipeline;

/// What a partition published to one output, added up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Files.
    pub files: usize,
    /// Rows in them.
    pub rows: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Published {
    /// Adds one file.
    pub(crate) fn add(&mut self, file: &PublishedFile) {
        self.files += 1;
        self.rows += file.rows;
        self.bytes += file.bytes;
    }
}

/// One partition's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionSummary {
    /// Which partition.
    pub label: String,
    /// Its counters.
    pub counts: Counts,
    /// Parquet files published, by output name (bounded partitions; a Kafka
    /// partition, which may run for months, adds to `published` instead).
    #[serde(skip)]
    pub files: Vec<(String, PublishedFile)>,
    /// Files, rows and bytes published, by output name, without the list.
    #[serde(skip)]
    pub published: BTreeMap<String, Published>,
    /// Dead-letter files published, by destination (`dlq`/`review`).
    pub dead_letter_files: Vec<(&'static str, String)>,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
    /// False when the run stopped before the partition began.
    pub started: bool,
    /// Commit details, for Kafka partitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaPartitionSummary>,
}

impl PartitionSummary {
    pub(crate) fn not_started(label: String) -> Self {
        PartitionSummary {
            label,
            counts: Counts::default(),
            files: Vec::new(),
            dead_letter_files: Vec::new(),
            published: BTreeMap::new(),
            error: None,
            started: false,
            kafka: None,
        }
    }

    pub(crate) fn failed(label: String, error: String) -> Self {
        PartitionSummary {
            error: Some(error),
            started: true,
            ..PartitionSummary::not_started(label)
        }
    }
}

/// Files written to one output.
#[derive(Debug, Clone, Serialize)]
pub struct OutputSummary {
    /// Output (table) name.
    pub name: String,
    /// Root directory.
    pub root: String,
    /// Files published.
    pub files: usize,
    /// Rows in them.
    pub rows: u64,
    /// Bytes in them.
    pub bytes: u64,
    /// The most row-group bytes this output's open files held in memory at
    /// once (`outputs[].max_buffered` bounds it).
    pub peak_row_group_bytes: u64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Pipeline name.
    pub pipeline: String,
    /// Stage kinds in order.
    pub stage_names: Vec<String>,
    /// Totals over all partitions.
    pub totals: Counts,
    /// Per partition.
    pub partitions: Vec<PartitionSummary>,
    /// Per output.
    pub outputs: Vec<OutputSummary>,
    /// DLQ root.
    pub dlq_root: String,
    /// Review root.
    pub review_root: String,
    /// Wall time.
    pub elapsed: Duration,
    /// Whether the run was stopped before its source was exhausted.
    pub interrupted: bool,
    /// Consumer-group details, for Kafka sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSummary>,
    /// Snowflake loads.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warehouse: Vec<super::warehouse::WarehouseSummary>,
}

/// What a Kafka run did, per partition.
#[derive(Debug, Clone, Serialize)]
pub struct KafkaSummary {
    /// The consumer group.
    pub group: String,
    /// Partitions this process processed (`topic/partition`), sorted.
    pub partitions: Vec<String>,
    /// Lag per partition at the end of the run (`topic/partition` → lag).
    pub lag: BTreeMap<String, PartitionLag>,
    /// The most bytes of consumed records held at once, across partitions
    /// (`source.kafka.max_buffered` bounds it).
    pub peak_buffered_bytes: u64,
}

/// Commit details of one Kafka partition's ownership.
#[derive(Debug, Clone, Serialize)]
pub struct KafkaPartitionSummary {
    /// The owner's epoch.
    pub epoch: u64,
    /// Commits written.
    pub commits: u64,
    /// Where processing resumed.
    pub resumed_at: Option<i64>,
    /// The next offset after the last commit.
    pub committed_offset: Option<i64>,
    /// Set when this instance found another owner had taken the partition
    /// over (a zombie fenced off): what it processed since its last commit
    /// was discarded, and the new owner reads it again. Not a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
}

impl Summary {
    pub(crate) fn collect(
        pipeline: &Pipeline,
        destinations: &Destinations,
        partitions: Vec<PartitionSummary>,
        elapsed: Duration,
        interrupted: bool,
    ) -> Self {
        let mut totals = Counts::new(1 + pipeline.stages.len());
        for p in &partitions {
            totals.add(&p.counts);
        }
        let outputs = destinations
            .outputs
            .iter()
            .map(|open| {
                let (o, location) = (&open.planned, &open.location);
                let mut total = Published::default();
                for p in &partitions {
                    for (_, file) in p.files.iter().filter(|(name, _)| *name == o.name) {
                        total.add(file);
                    }
                    if let Some(more) = p.published.get(&o.name) {
                        total.files += more.files;
                        total.rows += more.rows;
                        total.bytes += more.bytes;
                    }
                }
                OutputSummary {
                    name: o.name.clone(),
                    root: location.display.clone(),
                    files: total.files,
                    rows: total.rows,
                    bytes: total.bytes,
                    peak_row_group_bytes: o.options.budget.peak() as u64,
                }
            })
            .collect();
        let mut stage_names = vec!["validate".to_string()];
        stage_names.extend(pipeline.stages.iter().map(|s| s.kind.to_string()));
        Summary {
            pipeline: pipeline.plan.name.clone(),
            stage_names,
            totals,
            partitions,
            outputs,
            dlq_root: pipeline.plan.dlq.describe(),
            review_root: pipeline.plan.review.describe(),
            kafka: None,
            warehouse: Vec::new(),
            elapsed,
            interrupted,
        }
    }

    /// Partitions and Snowflake loaders that failed, with their errors.
    pub fn failures(&self) -> Vec<(&str, &str)> {
        let partitions = self
            .partitions
            .iter()
            .filter_map(|p| p.error.as_deref().map(|e| (p.label.as_str(), e)));
        let loaders = self
            .warehouse
            .iter()
            .filter_map(|w| w.error.as_deref().map(|e| (w.name.as_str(), e)));
        partitions.chain(loaders).collect()
    }

    /// Records per second over the wall time.
    pub fn records_per_second(&self) -> f64 {
        self.totals.records_in as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.totals;
        let secs = self.elapsed.as_secs_f64();
        writeln!(
            f,
            "pipeline {}{}",
            self.pipeline,
            if self.interrupted {
                " (stopped early)"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "  records in {:>12}   out {:>12}   dlq {:>9}   review {:>9}   {}",
            t.records_in,
            t.records_out,
            t.dlq,
            t.review,
            if t.balanced() {
                "(adds up)"
            } else {
                "(DOES NOT ADD UP)"
            }
        )?;
        writeln!(
            f,
            "  {:.2} s, {:.0} records/s, {:.1} MB/s of input",
            secs,
            self.records_per_second(),
            t.bytes_in as f64 / 1e6 / secs.max(1e-9)
        )?;
        writeln!(
            f,
            "  per stage:              in          out          dlq       review"
        )?;
        for (name, s) in self.stage_names.iter().zip(&t.stages) {
            writeln!(
                f,
                "    {name:<12} {:>12} {:>12} {:>12} {:>12}",
                s.records_in, s.records_out, s.dlq, s.review
            )?;
        }
        if !t.dlq_by_rule.is_empty() {
            writeln!(f, "  dlq by rule:")?;
            for (rule, n) in &t.dlq_by_rule {
                writeln!(f, "    {rule:<40} {n:>9}")?;
            }
        }
        if !t.review_by_rule.is_empty() {
            writeln!(f, "  review by rule:")?;
            for (rule, n) in &t.review_by_rule {
                writeln!(f, "    {rule:<40} {n:>9}")?;
            }
        }
        for o in &self.outputs {
            writeln!(
                f,
                "  output {}: {} rows in {} files ({:.1} MB) under {}",
                o.name,
                o.rows,
                o.files,
                o.bytes as f64 / 1e6,
                o.root
            )?;
        }
        for w in &self.warehouse {
            writeln!(
                f,
                "  snowflake {}: {} rows from {} files into {} ({} files already loaded)",
                w.name, w.rows_loaded, w.files_loaded, w.table, w.files_skipped
            )?;
        }
        writeln!(f, "  dlq to    {}", self.dlq_root)?;
        writeln!(f, "  review to {}", self.review_root)?;
        if let Some(kafka) = &self.kafka {
            writeln!(
                f,
                "  consumer group {}: processed partitions {}",
                kafka.group,
                kafka.partitions.join(", ")
            )?;
            for p in &self.partitions {
                if let Some(fenced) = p.kafka.as_ref().and_then(|k| k.fenced.as_deref()) {
                    writeln!(f, "    {:<24} handed over: {fenced}", p.label)?;
                }
            }
            for (partition, lag) in &kafka.lag {
                writeln!(
                    f,
                    "    {partition:<24} lag {:>9}   committed {:>12}   high-water mark {:>12}",
                    lag.lag, lag.committed, lag.high_watermark
                )?;
            }
        }
        for (label, error) in self.failures() {
            writeln!(f, "  FAILED {label}: {error}")?;
        }
        Ok(())
    }
}
