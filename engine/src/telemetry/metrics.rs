//! The engine's metrics, in Prometheus' data model.
//!
//! Labels stay bounded: `partition` is a Kafka topic-partition (bounded by
//! the topics' partition counts) or `batch` for file and object sources,
//! `stage` and `outcome` come from the pipeline file, `output` names an
//! output of the pipeline, `target` a store, warehouse or webhook the
//! pipeline file names.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tributary_connectors::kafka::consumer::LagTable;
use tributary_connectors::lookup::cache::CachedLookup;
use tributary_connectors::retry::RetryTargets;

use crate::counts::StageCounts;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    lookup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    lookup: String,
    why: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    lookup: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WindowLabels {
    window: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct RejectLabels {
    stage: String,
    rule: String,
    door: &'static str,
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

/// A sliding-window alert whose state the metrics report at each scrape
/// (the runtime's error-rate alert).
pub(crate) trait WatchedAlert: std::fmt::Debug + Send + Sync {
    /// The window the rate is taken over.
    fn window(&self) -> Duration;
    /// The share of records rejected over the window, as of the last check.
    fn rate(&self) -> f64;
    /// Whether the alert is firing.
    fn is_firing(&self) -> bool;
}

/// Counters, gauges and histograms of one engine process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    names: Vec<String>,
    records: Family<RecordLabels, Counter>,
    batch_records: Histogram,
    stage_seconds: HistogramFamily<StageLabels>,
    lag: Family<PartitionLabels, Gauge>,
    assigned: Gauge,
    files: Family<OutputLabels, Counter>,
    file_bytes: Family<OutputLabels, Counter>,
    commit_seconds: Histogram,
    paused: Family<PartitionLabels, Gauge>,
    heap: Gauge,
    retries: Family<TargetLabels, Counter>,
    target_waiting: Family<TargetLabels, Gauge>,
    load_seconds: HistogramFamily<OutputLabels>,
    load_backlog: Family<OutputLabels, Gauge>,
    loaded_rows: Family<OutputLabels, Counter>,
    loaded_files: Family<OutputLabels, Counter>,
    error_rate: Family<WindowLabels, Gauge<f64, AtomicU64>>,
    alert_firing: Family<WindowLabels, Gauge>,
    rejects: Family<RejectLabels, Counter>,
    invalidations: Family<LookupLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    cache_requests: Family<CacheLabels, Counter>,
    caches: Mutex<Vec<(String, Arc<CachedLookup>)>>,
    retry_targets: RetryTargets,
    streaming: AtomicI64,
    lag_table: Mutex<Option<LagTable>>,
    alert: Mutex<Option<Arc<dyn WatchedAlert>>>,
    /// What the status page shows besides the metrics.
    pub(super) board: Mutex<Board>,
}

/// Totals kept for the status page (the registry cannot be read back by label).
#[derive(Debug, Default)]
pub(super) struct Board {
    /// The pipeline's name.
    pub(super) pipeline: String,
    /// Per partition: records in, out, to the DLQ and to review.
    pub(super) partitions: BTreeMap<String, [u64; 4]>,
    /// Records rejected by (stage, rule, door).
    pub(super) rejects: BTreeMap<(String, String, &'static str), u64>,
}

/// The registry, remembering what was registered (the text format omits families without series).
struct Names {
    registry: Registry,
    names: Vec<String>,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            registry: Registry::with_prefix("tributary"),
            names: Vec::new(),
        }
    }
}

impl Names {
    fn register(
        &mut self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.names.push(format!("tributary_{name}"));
        self.registry.register(name, help, metric);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(RetryTargets::default())
    }
}

impl Metrics {
    /// Empty metrics, registered under the `tributary_` prefix, reporting on
    /// the retriers listed in `retry_targets`.
    pub fn new(retry_targets: RetryTargets) -> Self {
        let mut registry = Names::default();
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
        let heap = Gauge::default();
        registry.register(
            "heap_bytes",
            "Bytes the engine's own allocations hold now (C libraries such as librdkafka allocate beside it)",
            heap.clone(),
        );
        let paused = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "partition_paused",
            "1 while fetching for a Kafka partition is paused because its task is behind",
            paused.clone(),
        );
        let retries = Family::<TargetLabels, Counter>::default();
        registry.register(
            "retries",
            "Retries of transient failures, by target (store, warehouse, webhook, lookup)",
            retries.clone(),
        );
        let target_waiting = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "target_waiting",
            "1 while a target has failed past its retry budget and the partitions writing to it wait",
            target_waiting.clone(),
        );
        let load_seconds: HistogramFamily<OutputLabels> =
            Family::new_with_constructor(seconds_histogram);
        registry.register(
            "snowflake_load_duration_seconds",
            "Time one Snowflake load (COPY of a group of files, with its log rows) takes, retries included",
            load_seconds.clone(),
        );
        let load_backlog = Family::<OutputLabels, Gauge>::default();
        registry.register(
            "snowflake_backlog_files",
            "Published files waiting to be loaded into Snowflake",
            load_backlog.clone(),
        );
        let loaded_rows = Family::<OutputLabels, Counter>::default();
        registry.register(
            "snowflake_loaded_rows",
            "Rows loaded into Snowflake",
            loaded_rows.clone(),
        );
        let loaded_files = Family::<OutputLabels, Counter>::default();
        registry.register(
            "snowflake_loaded_files",
            "Files loaded into Snowflake",
            loaded_files.clone(),
        );
        let rejects = Family::<RejectLabels, Counter>::default();
        registry.register(
            "rejects",
            "Records sent to the DLQ or review, by stage, rule and door",
            rejects.clone(),
        );
        let invalidations = Family::<LookupLabels, Counter>::default();
        registry.register(
            "cache_invalidations",
            "CacheInvalidated events applied, by lookup",
            invalidations.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "lookup_reloads",
            "Snapshot lookup reloads, by lookup, why (interval, invalidated) and outcome (ok, failed)",
            reloads.clone(),
        );
        let cache_requests = Family::<CacheLabels, Counter>::default();
        registry.register(
            "lookup_cache_requests",
            "Keys asked of an on-demand lookup, answered from its cache (hit) or from the source (miss)",
            cache_requests.clone(),
        );
        let error_rate = Family::<WindowLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "error_rate",
            "Share of records sent to the DLQ or review over the error-rate alert's window (present when the alert is configured)",
            error_rate.clone(),
        );
        let alert_firing = Family::<WindowLabels, Gauge>::default();
        registry.register(
            "error_rate_alert_firing",
            "1 while the error-rate alert fires",
            alert_firing.clone(),
        );
        Metrics {
            names: registry.names,
            registry: registry.registry,
            records,
            batch_records,
            stage_seconds,
            lag,
            assigned,
            files,
            file_bytes,
            commit_seconds,
            paused,
            heap,
            retries,
            target_waiting,
            load_seconds,
            load_backlog,
            loaded_rows,
            loaded_files,
            error_rate,
            alert_firing,
            rejects,
            invalidations,
            reloads,
            cache_requests,
            caches: Mutex::new(Vec::new()),
            retry_targets,
            streaming: AtomicI64::new(0),
            lag_table: Mutex::new(None),
            alert: Mutex::new(None),
            board: Mutex::new(Board::default()),
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
        if let Ok(mut board) = self.board.lock() {
            let totals = board.partitions.entry(partition.to_string()).or_default();
            if stage == "validate" {
                totals[0] += delta.records_in;
            }
            totals[2] += delta.dlq;
            totals[3] += delta.review;
        }
    }

    /// Counts the rows of `partition` that reached the outputs.
    pub(crate) fn written(&self, partition: &str, rows: u64) {
        if let Ok(mut board) = self.board.lock() {
            board.partitions.entry(partition.to_string()).or_default()[1] += rows;
        }
    }

    /// Counts one record `stage` sent to `door` (`dlq` or `review`) by `rule`.
    pub(crate) fn rejected(&self, stage: &str, rule: &str, door: &'static str) {
        let labels = RejectLabels {
            stage: stage.to_string(),
            rule: rule.to_string(),
            door,
        };
        self.rejects.get_or_create(&labels).inc();
        if let Ok(mut board) = self.board.lock() {
            *board
                .rejects
                .entry((labels.stage, labels.rule, door))
                .or_default() += 1;
        }
    }

    /// Counts an invalidation event applied to `lookup`.
    pub(crate) fn cache_invalidated(&self, lookup: &str) {
        self.invalidations
            .get_or_create(&LookupLabels {
                lookup: lookup.to_string(),
            })
            .inc();
    }

    /// Counts a snapshot reload of `lookup`: `why` it ran, whether it succeeded.
    pub(crate) fn lookup_reloaded(&self, lookup: &str, why: &'static str, ok: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                lookup: lookup.to_string(),
                why,
                outcome: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    /// Reports `cache`'s hits and misses at each scrape.
    pub(crate) fn watch_cache(&self, lookup: &str, cache: Arc<CachedLookup>) {
        self.retry_targets.watch(cache.retrier());
        if let Ok(mut caches) = self.caches.lock() {
            caches.push((lookup.to_string(), cache));
        }
    }

    /// The retriers these metrics report on.
    pub(crate) fn retry_targets(&self) -> &RetryTargets {
        &self.retry_targets
    }

    /// Names the pipeline on the status page.
    pub(crate) fn pipeline(&self, name: &str) {
        if let Ok(mut board) = self.board.lock() {
            board.pipeline = name.to_string();
        }
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

    /// Reports the error-rate alert's window at each scrape.
    pub(crate) fn watch_error_rate(&self, alert: Arc<dyn WatchedAlert>) {
        if let Ok(mut slot) = self.alert.lock() {
            *slot = Some(alert);
        }
    }

    /// Notes one Snowflake load of `output`: how long it took and what it loaded.
    pub(crate) fn snowflake_loaded(&self, output: &str, took: Duration, files: usize, rows: u64) {
        let labels = OutputLabels {
            output: output.to_string(),
        };
        self.load_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.loaded_files
            .get_or_create(&labels)
            .inc_by(files as u64);
        self.loaded_rows.get_or_create(&labels).inc_by(rows);
    }

    /// Sets how many published files of `output` wait for their Snowflake load.
    pub(crate) fn snowflake_backlog(&self, output: &str, files: usize) {
        self.load_backlog
            .get_or_create(&OutputLabels {
                output: output.to_string(),
            })
            .set(files as i64);
    }

    /// Whether the process is doing its work: partitions assigned (Kafka),
    /// and no target failing past its retry budget (its partitions wait).
    pub fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        let streaming = self.streaming.load(Ordering::Relaxed) == 1;
        if streaming && self.assigned.get() <= 0 {
            reasons.push("no Kafka partition assigned".to_string());
        }
        reasons.extend(
            self.retry_targets.by_target()
                .into_iter()
                .filter(|(_, (_, waiting))| *waiting)
                .map(|(target, _)| {
                    format!("{target} is failing past its retry budget; partitions writing to it are paused")
                }),
        );
        if reasons.is_empty() {
            Readiness::Ready
        } else {
            Readiness::NotReady(reasons)
        }
    }

    /// Lag and pause state per Kafka partition (`topic/partition`), as the consumer last saw them.
    pub(super) fn consumer_view(&self) -> BTreeMap<String, (Option<i64>, bool)> {
        let Ok(slot) = self.lag_table.lock() else {
            return BTreeMap::new();
        };
        slot.as_ref()
            .map(|table| {
                table
                    .snapshot()
                    .into_iter()
                    .map(|(p, lag)| {
                        (
                            p.to_string(),
                            ((lag.lag >= 0).then_some(lag.lag), lag.paused),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Copies what others keep (consumer lag and pauses, retry targets, the alert) into the metrics.
    fn refresh(&self) {
        if let Some(live) = super::heap::live_bytes() {
            self.heap.set(i64::try_from(live).unwrap_or(i64::MAX));
        }
        if let Ok(slot) = self.lag_table.lock()
            && let Some(table) = slot.as_ref()
        {
            // Partitions revoked since the last scrape leave the table; drop their series too.
            self.lag.clear();
            self.paused.clear();
            for (partition, lag) in table.snapshot() {
                let labels = PartitionLabels {
                    partition: partition.to_string(),
                };
                if lag.lag >= 0 {
                    self.lag.get_or_create(&labels).set(lag.lag);
                }
                self.paused
                    .get_or_create(&labels)
                    .set(i64::from(lag.paused));
            }
        }
        for (target, (retries, waiting)) in self.retry_targets.by_target() {
            let labels = TargetLabels {
                target: target.to_string(),
            };
            let counter = self.retries.get_or_create(&labels);
            counter.inc_by(retries.saturating_sub(counter.get()));
            self.target_waiting
                .get_or_create(&labels)
                .set(i64::from(waiting));
        }
        if let Ok(caches) = self.caches.lock() {
            for (lookup, cache) in caches.iter() {
                let (hits, misses) = cache.stats();
                for (result, n) in [("hit", hits), ("miss", misses)] {
                    let counter = self.cache_requests.get_or_create(&CacheLabels {
                        lookup: lookup.clone(),
                        result,
                    });
                    counter.inc_by(n.saturating_sub(counter.get()));
                }
            }
        }
        if let Ok(slot) = self.alert.lock()
            && let Some(alert) = slot.as_ref()
        {
            let labels = WindowLabels {
                window: humantime::format_duration(alert.window()).to_string(),
            };
            self.error_rate.get_or_create(&labels).set(alert.rate());
            self.alert_firing
                .get_or_create(&labels)
                .set(i64::from(alert.is_firing()));
        }
    }

    /// The name of every metric family (`tributary_records`, …; counters add
    /// `_total` and histograms `_bucket`, `_sum`, `_count` in the text format).
    pub fn families(&self) -> &[String] {
        &self.names
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        self.refresh();
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
        let metrics = Metrics::default();
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
        let metrics = Metrics::default();
        assert_eq!(metrics.readiness(), Readiness::Ready);
        metrics.watch_lag(LagTable::default());
        assert!(matches!(metrics.readiness(), Readiness::NotReady(_)));
        metrics.partition_assigned(1);
        assert_eq!(metrics.readiness(), Readiness::Ready);
    }
}
