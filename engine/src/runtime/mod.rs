//! Runs a [`Pipeline`]: partitions in parallel over a bounded pool, each read,
//! processed and written in order, every record routed through exactly one
//! door (output, DLQ or review).
//!
//! Per partition, a reader on a blocking thread feeds a bounded channel
//! (two batches) to the task that runs the stages and writes; a slow output
//! therefore slows reading, and memory stays flat whatever the input size.
//! At most `workers` partitions are open at once. Stopping (Ctrl-C) ends
//! reading; batches already read go through the stages and every open file
//! is published before `run` returns.
//!
//! Two runs share the per-partition work (`worker`): the bounded run
//! (`bounded`: files and S3 objects, published when a partition ends) and
//! the Kafka run (`kafka`: partitions assigned by the consumer group, each
//! committed every `commit_interval` through the commit log, exactly once).
//! Beside them: destinations opened once (local and S3 stores with retries,
//! Kafka producers), lookups kept current (`lookups`), Snowflake loaders
//! (`warehouse`) and the error-rate alert (`alerts`).

pub(crate) mod alerts;
mod bounded;
mod dry_run;
mod error;
mod kafka;
mod lookups;
mod progress;
mod stages;
mod summary;
mod warehouse;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use std::time::Duration;

use tributary_connectors::kafka::admin;
use tributary_connectors::kafka::producer::{Producer, producer};
use tributary_connectors::store::Location;

pub use crate::counts::{Counts, StageCounts};
use crate::plan::{Pipeline, PlannedDeadLetter, PlannedOutput, PlannedSource, PlannedTopic};
use crate::telemetry::Metrics;
pub use dry_run::{DryReject, DryRun, dry_run};
pub use error::{PartitionError, RunError};
pub use summary::{KafkaPartitionSummary, KafkaSummary, PartitionSummary, Summary};
pub use warehouse::WarehouseSummary;

/// How a run ends, beyond its source running dry or Ctrl-C.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Streaming sources: stop once every assigned partition is caught up and nothing arrived for this long.
    pub until_idle: Option<Duration>,
    /// Where the run reports its metrics (whoever serves them holds a clone).
    pub metrics: Arc<Metrics>,
}

/// A flag to stop a run; cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// Asks the run to stop after the batches in flight.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Where one kind of rejected record goes, opened.
#[derive(Clone)]
pub(crate) enum DeadLetterDestination {
    Files {
        location: Location,
        max_file_bytes: usize,
    },
    Topic {
        producer: Producer,
        topic: String,
        /// The producer's message limit: larger letters are cut to fit.
        max_message_bytes: usize,
    },
}

/// A Parquet output with its store open.
#[derive(Clone)]
pub(crate) struct OpenOutput {
    pub(crate) planned: PlannedOutput,
    pub(crate) location: Location,
}

/// A Kafka output with its producer.
#[derive(Clone)]
pub(crate) struct OpenTopic {
    /// The topic.
    pub(crate) topic: String,
    pub(crate) producer: Producer,
}

/// Open destinations shared by all partitions.
#[derive(Clone)]
pub(crate) struct Destinations {
    pub(crate) outputs: Vec<OpenOutput>,
    pub(crate) topic_outputs: Vec<OpenTopic>,
    pub(crate) dlq: DeadLetterDestination,
    pub(crate) review: DeadLetterDestination,
    pub(crate) warehouse: warehouse::Feeds,
    pub(crate) error_rate: Option<Arc<alerts::ErrorRate>>,
    pub(crate) metrics: Arc<Metrics>,
}

impl Destinations {
    async fn open(pipeline: &Pipeline) -> Result<Self, RunError> {
        // Topics we produce to are created when missing, with the partitions
        // and replication factor the pipeline gives (1 and 1 by default). A refusal (no permission) is not fatal:
        // the topic may exist, and producing says so if it does not.
        let mut topics: Vec<&PlannedTopic> = pipeline
            .plan
            .topic_outputs
            .iter()
            .map(|o| &o.topic)
            .collect();
        for d in [&pipeline.plan.dlq, &pipeline.plan.review] {
            if let PlannedDeadLetter::Topic(t) = d {
                topics.push(t);
            }
        }
        for t in topics {
            let replication = t.replication_factor.unwrap_or(1);
            match admin::ensure_topic(&t.connection, &t.topic, t.partitions, replication).await {
                Ok(true) => tracing::info!(topic = %t.topic, "created topic"),
                Ok(false) => {}
                Err(error) => tracing::warn!(topic = %t.topic, %error, "could not create topic"),
            }
        }
        let storage = &pipeline.plan.storage;
        let dead_letters = |what: &str, planned: &PlannedDeadLetter| {
            Ok::<_, RunError>(match planned {
                PlannedDeadLetter::Files {
                    path,
                    max_file_bytes,
                } => DeadLetterDestination::Files {
                    location: open(pipeline, what, path)?,
                    max_file_bytes: *max_file_bytes,
                },
                PlannedDeadLetter::Topic(t) => DeadLetterDestination::Topic {
                    producer: producer(&t.connection, storage.retry, &storage.targets)?,
                    topic: t.topic.clone(),
                    max_message_bytes: t.max_message_bytes,
                },
            })
        };
        Ok(Destinations {
            outputs: pipeline
                .plan
                .outputs
                .iter()
                .map(|o| {
                    Ok::<_, RunError>(OpenOutput {
                        planned: o.clone(),
                        location: open(pipeline, &format!("output {}", o.name), &o.path)?,
                    })
                })
                .collect::<Result<_, _>>()?,
            topic_outputs: pipeline
                .plan
                .topic_outputs
                .iter()
                .map(|o| {
                    Ok::<_, RunError>(OpenTopic {
                        topic: o.topic.topic.clone(),
                        producer: producer(&o.topic.connection, storage.retry, &storage.targets)?,
                    })
                })
                .collect::<Result<_, _>>()?,
            dlq: dead_letters("dlq", &pipeline.plan.dlq)?,
            review: dead_letters("review", &pipeline.plan.review)?,
            warehouse: warehouse::Feeds::default(),
            error_rate: pipeline
                .plan
                .error_rate
                .clone()
                .map(|settings| alerts::ErrorRate::new(&pipeline.plan.name, settings)),
            metrics: Arc::new(Metrics::new(storage.targets.clone())),
        })
    }

    /// The store of a file destination by name (an output's name, `dlq` or `review`).
    pub(crate) fn location(&self, name: &str) -> Option<&Location> {
        fn files(d: &DeadLetterDestination) -> Option<&Location> {
            match d {
                DeadLetterDestination::Files { location, .. } => Some(location),
                DeadLetterDestination::Topic { .. } => None,
            }
        }
        match name {
            "dlq" => files(&self.dlq),
            "review" => files(&self.review),
            _ => self
                .outputs
                .iter()
                .find(|o| o.planned.name == name)
                .map(|o| &o.location),
        }
    }

    /// Where Kafka partitions keep their commit logs: the first file destination.
    pub(crate) fn state_location(&self) -> Option<&Location> {
        self.file_locations().into_iter().next()
    }

    /// Every file destination's store.
    pub(crate) fn file_locations(&self) -> Vec<&Location> {
        let mut all: Vec<&Location> = self.outputs.iter().map(|o| &o.location).collect();
        for d in [&self.dlq, &self.review] {
            if let DeadLetterDestination::Files { location, .. } = d {
                all.push(location);
            }
        }
        all
    }
}

fn open(pipeline: &Pipeline, what: &str, path: &str) -> Result<Location, RunError> {
    Location::open(path, &pipeline.plan.storage).map_err(|source| RunError::Open {
        what: what.to_string(),
        path: path.to_string(),
        source,
    })
}

/// Runs `pipeline` until its source is exhausted (or idle, see [`RunOptions`]) or `stop` is set.
pub async fn run(
    pipeline: Pipeline,
    stop: StopHandle,
    options: RunOptions,
) -> Result<Summary, RunError> {
    let started = Instant::now();
    let mut destinations = Destinations::open(&pipeline).await?;
    destinations.metrics = options.metrics.clone();
    destinations.metrics.pipeline(&pipeline.plan.name);
    if let Some(alert) = &destinations.error_rate {
        destinations.metrics.watch_error_rate(alert.clone());
    }
    let (feeds, loaders) = start_loaders(&pipeline, &destinations);
    destinations.warehouse = feeds;
    let checker = destinations
        .error_rate
        .clone()
        .map(|alert| alerts::spawn_checker(alert, &pipeline.plan.storage));
    let refreshers: Vec<_> = pipeline
        .lookups
        .iter()
        .filter_map(|l| lookups::spawn_refresher(l, &pipeline.plan.storage, &destinations.metrics))
        .collect();
    let invalidations = lookups::spawn_invalidation(&pipeline.lookups, &destinations.metrics);
    for lookup in &pipeline.lookups {
        if let Some(cache) = &lookup.cache {
            destinations
                .metrics
                .watch_cache(&lookup.name, cache.clone());
        }
    }
    let result = match &pipeline.plan.source {
        PlannedSource::Bounded(source) => match tokio::task::block_in_place(|| source.partitions())
        {
            Ok(partitions) => bounded::run(pipeline, partitions, destinations, stop, started).await,
            Err(e) => Err(e.into()),
        },
        PlannedSource::Kafka(kafka) => {
            let kafka = kafka.clone();
            kafka::run(
                Arc::new(pipeline),
                kafka,
                destinations,
                stop,
                options,
                started,
            )
            .await
        }
    };
    for r in refreshers.into_iter().chain(checker) {
        r.abort();
    }
    drop(invalidations);
    // Every feed is dropped with the partitions; the loaders drain what they were given.
    let warehouse = loaders.finish().await;
    let mut summary = result?;
    summary.warehouse = warehouse;
    tracing::info!(
        pipeline = %summary.pipeline,
        records_in = summary.totals.records_in,
        records_out = summary.totals.records_out,
        dlq = summary.totals.dlq,
        review = summary.totals.review,
        seconds = summary.elapsed.as_secs_f64(),
        "run finished"
    );
    Ok(summary)
}

/// Starts the Snowflake loaders; each stage URL is its Parquet output's root.
fn start_loaders(
    pipeline: &Pipeline,
    destinations: &Destinations,
) -> (warehouse::Feeds, warehouse::Loaders) {
    let mut planned = pipeline.snowflake.clone();
    for p in &mut planned {
        if p.create_stage
            && let Some(location) = destinations.location(&p.from)
        {
            let root = &location.display;
            p.target.stage_url = Some(if root.contains("://") {
                format!("{root}/")
            } else {
                format!("file://{root}/")
            });
        }
    }
    warehouse::start(
        &planned,
        |from| destinations.location(from).cloned(),
        |target| pipeline.plan.storage.retrier(target),
        &destinations.metrics,
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tributary_connectors::lookup::FileLookup;
    use tributary_stages::enrich::{LookupTable, SharedTable};

    use tributary_connectors::store::Storage;

    use super::*;
    use crate::plan::PlannedLookup;

    fn write(path: &std::path::Path, segment: &str) {
        std::fs::write(path, format!("customer_id,segment\nC000001,{segment}\n")).unwrap();
    }

    fn segment(table: &SharedTable) -> String {
        let snapshot = table.current();
        let column = snapshot.column("segment").unwrap();
        arrow::util::display::array_value_to_string(column, 0).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_refresh_on_their_interval_and_survive_a_bad_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("customers.csv");
        write(&path, "smb");
        let source = FileLookup::new(path.clone(), None).unwrap();
        let keys = vec!["customer_id".to_string()];
        let table =
            SharedTable::new(LookupTable::new(source.load_blocking().unwrap(), &keys).unwrap());
        let lookup = PlannedLookup {
            name: "customers".into(),
            keys,
            source: Some(Arc::new(source)),
            table: table.clone(),
            refresh: Some(Duration::from_millis(50)),
            cache: None,
            reload: Arc::default(),
            invalidate: None,
        };
        let metrics = Arc::new(crate::telemetry::Metrics::default());
        let task = lookups::spawn_refresher(&lookup, &Storage::default(), &metrics).unwrap();

        write(&path, "vip");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while segment(&table) != "vip" {
            assert!(
                std::time::Instant::now() < deadline,
                "the new snapshot never arrived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // A reload that fails (file gone) keeps serving the last good snapshot.
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(segment(&table), "vip");
        task.abort();
    }
}
