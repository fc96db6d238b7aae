//! The engine's metrics, in Prometheus' data model.
//!
//! Labels stay bounded: `partition` is a Kafka topic-partition (bounded by
//! the topics' partition counts) or `batch` for file and object sources,
//! `stage` and `outcome` come from the pipeline file, `output` names an
//! output of the pipeline.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tributary_connectors::kafka::consumer::LagTable;

use crate::runtime::StageCounts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecordLabels {
    partition: String,
    stage: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputLabels {
    output: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 100 µs to about 26 s.
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

/// Whether the engine should receive traffic, and if not why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Working: partitions assigned (streaming) or a batch run in progress.
    Ready,
    /// Not (yet) working, with the reasons.
    NotReady(Vec<String>),
}

/// Counters, gauges and histograms of one engine process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    records: Family<RecordLabels, Counter>,
    batch_records: Histogram,
    stage_seconds: HistogramFamily<StageLabels>,
    lag: Family<PartitionLabels, Gauge>,
    assigned: Gauge,
    files: Family<OutputLabels, Counter>,
    file_bytes: Family<OutputLabels, Counter>,
    commit_seconds: Histogram,
    streaming: AtomicI64,
    lag_table: Mutex<Option<LagTable>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Empty metrics, registered under the `tributary_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tributary");
        let records = Family::<RecordLabels, Counter>::default();
        registry.register(
            "records",
            "Records by partition, stage and outcome (in, out, dlq, review)",
            records.clone(),
        );
        let batch_records = Histogram::new(exponential_buckets(1.0, 4.0, 10));
        registry.register(
            "batch_records",
            "Records per batch read from the source",
            batch_records.clone(),
        );
        let stage_seconds: HistogramFamily<StageLabels> =
            Family::new_with_constructor(seconds_histogram);
        registry.register(
            "stage_duration_seconds",
            "Time one batch spends in a stage",
            stage_seconds.clone(),
        );
        let lag = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "consumer_lag_records",
            "Kafka records not yet durably processed (high-water mark minus committed offset)",
            lag.clone(),
        );
        let assigned = Gauge::default();
        registry.register(
            "assigned_partitions",
            "Kafka partitions assigned to this process",
            assigned.clone(),
        );
        let files = Family::<OutputLabels, Counter>::default();
        registry.register(
            "files_published",
            "Files published under their final name, by output",
            files.clone(),
        );
        let file_bytes = Family::<OutputLabels, Counter>::default();
        registry.register(
            "published_bytes",
            "Bytes of the files published, by output",
            file_bytes.clone(),
        );
        let commit_seconds = seconds_histogram();
        registry.register(
            "commit_duration_seconds",
            "Time to close, commit (manifest) and publish one partition's files",
            commit_seconds.clone(),
        );
        Metrics {
            registry,
            records,
            batch_records,
            stage_seconds,
            lag,
            assigned,
            files,
            file_bytes,
            commit_seconds,
            streaming: AtomicI64::new(0),
            lag_table: Mutex::new(None),
        }
    }

    /// Counts what one batch did in one stage of `partition`.
    pub(crate) fn stage_batch(
        &self,
        partition: &str,
        stage: &'static str,
        delta: &StageCounts,
        took: Duration,
    ) {
        for (outcome, n) in [
            ("in", delta.records_in),
            ("out", delta.records_out),
            ("dlq", delta.dlq),
            ("review", delta.review),
        ] {
            if n > 0 {
                self.records
                    .get_or_create(&RecordLabels {
                        partition: partition.to_string(),
                        stage,
                        outcome,
                    })
                    .inc_by(n);
            }
        }
        self.stage_seconds
            .get_or_create(&StageLabels { stage })
            .observe(took.as_secs_f64());
    }

    /// Notes the size of a batch read from the source.
    pub(crate) fn batch_read(&self, records: usize) {
        self.batch_records.observe(records as f64);
    }

    /// Notes a file published by `output`.
    pub(crate) fn file_published(&self, output: &str, bytes: u64) {
        let labels = OutputLabels {
            output: output.to_string(),
        };
        self.files.get_or_create(&labels).inc();
        self.file_bytes.get_or_create(&labels).inc_by(bytes);
    }

    /// Notes how long a commit took.
    pub(crate) fn committed(&self, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
    }

    /// A streaming source gained (`+1`) or lost (`-1`) a partition.
    pub(crate) fn partition_assigned(&self, change: i64) {
        self.assigned.inc_by(change);
    }

    /// Reads consumer lag from `table` at each scrape.
    pub(crate) fn watch_lag(&self, table: LagTable) {
        self.streaming.store(1, Ordering::Relaxed);
        if let Ok(mut slot) = self.lag_table.lock() {
            *slot = Some(table);
        }
    }

    /// Whether the process is doing its work.
    pub fn readiness(&self) -> Readiness {
        let streaming = self.streaming.load(Ordering::Relaxed) == 1;
        if streaming && self.assigned.get() <= 0 {
            return Readiness::NotReady(vec!["no Kafka partition assigned".into()]);
        }
        Readiness::Ready
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        if let Ok(slot) = self.lag_table.lock()
            && let Some(table) = slot.as_ref()
        {
            for (partition, lag) in table.snapshot() {
                self.lag
                    .get_or_create(&PartitionLabels {
                        partition: partition.to_string(),
                    })
                    .set(lag.lag);
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_counts_and_files_appear_in_the_text_format() {
        let metrics = Metrics::new();
        let delta = StageCounts {
            records_in: 10,
            records_out: 7,
            dlq: 2,
            review: 1,
        };
        metrics.stage_batch("orders/0", "validate", &delta, Duration::from_millis(3));
        metrics.stage_batch("orders/0", "validate", &delta, Duration::from_millis(3));
        metrics.file_published("orders", 1234);
        let text = metrics.encode().unwrap();
        for line in [
            r#"tributary_records_total{partition="orders/0",stage="validate",outcome="in"} 20"#,
            r#"tributary_records_total{partition="orders/0",stage="validate",outcome="dlq"} 4"#,
            r#"tributary_records_total{partition="orders/0",stage="validate",outcome="review"} 2"#,
            r#"tributary_stage_duration_seconds_count{stage="validate"} 2"#,
            r#"tributary_files_published_total{output="orders"} 1"#,
            r#"tributary_published_bytes_total{output="orders"} 1234"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
    }

    #[test]
    fn a_streaming_process_without_partitions_is_not_ready() {
        let metrics = Metrics::new();
        assert_eq!(metrics.readiness(), Readiness::Ready);
        metrics.watch_lag(LagTable::default());
        assert!(matches!(metrics.readiness(), Readiness::NotReady(_)));
        metrics.partition_assigned(1);
        assert_eq!(metrics.readiness(), Readiness::Ready);
    }
}
