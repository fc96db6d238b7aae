//! Snowflake loaders: one task per `snowflake` output, fed the files its
//! Parquet output publishes, loading in batches of `max_files` or every
//! `max_wait`. The feed is a bounded channel: a loader that falls more than
//! `max_backlog` files behind makes commits wait (consumption pauses)
//! rather than buffering without bound. At start a loader reconciles: it
//! loads every published file its log does not have (files published
//! before a crash, or while Snowflake was down).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tributary_connectors::retry::Retrier;
use tributary_connectors::snowflake::{LoadReport, Loader};

use crate::plan::PlannedSnowflake;
use crate::telemetry::Metrics;

/// What one loader did in a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WarehouseSummary {
    /// The output's name.
    pub name: String,
    /// Target table.
    pub table: String,
    /// Files loaded.
    pub files_loaded: usize,
    /// Files already in the load log.
    pub files_skipped: usize,
    /// Rows loaded.
    pub rows_loaded: u64,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// The feeds of all loaders.
#[derive(Clone, Default)]
pub(crate) struct Feeds(Vec<(String, mpsc::Sender<String>)>);

impl Feeds {
    /// Hands `files` (output name, path) to the loaders of their outputs; waits when a backlog is full.
    pub(crate) async fn published(&self, files: Vec<(String, String)>) {
        for (output, path) in files {
            for (from, feed) in &self.0 {
                if *from == output && feed.send(path.clone()).await.is_err() {
                    tracing::error!(%output, %path, "a Snowflake loader has stopped; the file will be loaded at the next start");
                }
            }
        }
    }
}

/// Running loaders.
pub(crate) struct Loaders {
    tasks: Vec<JoinHandle<WarehouseSummary>>,
}

/// Starts one loader per planned output; `location_of` gives each its Parquet output's location.
pub(crate) fn start(
    planned: &[PlannedSnowflake],
    location_of: impl Fn(&str) -> Option<tributary_connectors::store::Location>,
    retrier: impl Fn(&str) -> Retrier,
    metrics: &Arc<Metrics>,
) -> (Feeds, Loaders) {
    let mut feeds = Vec::new();
    let mut tasks = Vec::new();
    for p in planned {
        let Some(location) = location_of(&p.from) else {
            continue;
        };
        let (tx, rx) = mpsc::channel(p.max_backlog.max(1));
        feeds.push((p.from.clone(), tx));
        let loader = Loader::new(p.connection.clone(), p.target.clone(), location);
        tasks.push(tokio::spawn(run(
            p.name.clone(),
            loader,
            rx,
            p.max_files.max(1),
            p.max_wait,
            retrier(&format!("snowflake {} ({})", p.name, p.target.table)),
            metrics.clone(),
        )));
    }
    (Feeds(feeds), Loaders { tasks })
}

impl Loaders {
    /// Waits for every loader to load what it was fed (call after dropping all [`Feeds`]).
    pub(crate) async fn finish(self) -> Vec<WarehouseSummary> {
        let mut out = Vec::new();
        for task in self.tasks {
            out.push(task.await.unwrap_or_else(|e| WarehouseSummary {
                error: Some(format!("loader task panicked: {e}")),
                ..Default::default()
            }));
        }
        out
    }
}

async fn run(
    name: String,
    loader: Loader,
    mut feed: mpsc::Receiver<String>,
    max_files: usize,
    max_wait: Duration,
    retrier: Retrier,
    metrics: Arc<Metrics>,
) -> WarehouseSummary {
    let mut summary = WarehouseSummary {
        name: name.clone(),
        table: loader.table().to_string(),
        ..Default::default()
    };
    let loader = Arc::new(Mutex::new(loader));
    let started = Instant::now();
    let reconciled = retrier
        .run(
            "reconcile",
            || {
                let loader = loader.clone();
                async move { loader.lock().await.reconcile().await }
            },
            |e| e.is_transient(),
        )
        .await;
    if let Err(e) = add(&mut summary, reconciled, &name, started, &metrics) {
        summary.error = Some(e);
        close(loader).await;
        return summary;
    }
    let mut pending: Vec<String> = Vec::new();
    let mut open = true;
    while open || !pending.is_empty() {
        if open {
            let deadline = tokio::time::sleep(max_wait);
            tokio::pin!(deadline);
            while pending.len() < max_files {
                tokio::select! {
                    file = feed.recv() => match file {
                        Some(f) => pending.push(f),
                        None => { open = false; break; }
                    },
                    _ = &mut deadline, if !pending.is_empty() => break,
                }
            }
        }
        metrics.snowflake_backlog(&name, pending.len() + feed.len());
        if pending.is_empty() {
            continue;
        }
        let batch = std::mem::take(&mut pending);
        let started = Instant::now();
        let loaded = retrier
            .run(
                "load",
                || {
                    let (loader, batch) = (loader.clone(), batch.clone());
                    async move { loader.lock().await.load(&batch).await }
                },
                |e| e.is_transient(),
            )
            .await;
        if let Err(e) = add(&mut summary, loaded, &name, started, &metrics) {
            summary.error = Some(e);
            break;
        }
        metrics.snowflake_backlog(&name, feed.len());
    }
    close(loader).await;
    summary
}

async fn close(loader: Arc<Mutex<Loader>>) {
    if let Ok(loader) = Arc::try_unwrap(loader) {
        loader.into_inner().close().await;
    }
}

fn add(
    summary: &mut WarehouseSummary,
    result: Result<LoadReport, tributary_connectors::snowflake::SnowflakeError>,
    name: &str,
    started: Instant,
    metrics: &Metrics,
) -> Result<(), String> {
    match result {
        Ok(report) => {
            metrics.snowflake_loaded(
                name,
                started.elapsed(),
                report.files_loaded,
                report.rows_loaded,
            );
            if report.files_loaded > 0 || report.files_skipped > 0 {
                tracing::info!(
                    output = name,
                    table = %summary.table,
                    files = report.files_loaded,
                    skipped = report.files_skipped,
                    rows = report.rows_loaded,
                    "loaded into Snowflake"
                );
            }
            summary.files_loaded += report.files_loaded;
            summary.files_skipped += report.files_skipped;
            summary.rows_loaded += report.rows_loaded;
            Ok(())
        }
        Err(error) => {
            tracing::error!(output = name, table = %summary.table, %error, "Snowflake load failed; the files stay published and load at the next start");
            Err(error.to_string())
        }
    }
}
