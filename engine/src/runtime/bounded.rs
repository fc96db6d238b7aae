//! The bounded run (files and S3 objects): partitions (file chunks) over a
//! pool of `workers`, each read on a blocking thread, processed, and its
//! files published when the partition ends.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc};
use tributary_connectors::parquet::Placement;
use tributary_connectors::source::{PartitionReader, RawBatch, SourceError};

use super::error::{PartitionError, RunError};
use super::progress::{Progress, ProgressDisplay};
use super::summary::{PartitionSummary, Summary};
use super::worker::Worker;
use super::{Destinations, StopHandle};
use crate::plan::Pipeline;

/// Batches read ahead of processing, per partition.
pub(crate) const READ_AHEAD: usize = 2;

/// Runs every partition of a bounded source, at most `workers` at once.
pub(super) async fn run(
    pipeline: Pipeline,
    partitions: Vec<Box<dyn PartitionReader>>,
    destinations: Destinations,
    stop: StopHandle,
    started: Instant,
) -> Result<Summary, RunError> {
    tracing::info!(
        pipeline = %pipeline.plan.name,
        partitions = partitions.len(),
        workers = pipeline.plan.workers,
        "run started"
    );
    let pipeline = Arc::new(pipeline);
    let pool = Arc::new(Semaphore::new(pipeline.plan.workers));
    let progress = Arc::new(Progress::default());
    let total_bytes = partitions.iter().map(|p| p.info().bytes).sum();
    let display = ProgressDisplay::start(progress.clone(), total_bytes);
    let mut tasks = Vec::with_capacity(partitions.len());
    for reader in partitions {
        let (pipeline, pool, stop, destinations, progress) = (
            pipeline.clone(),
            pool.clone(),
            stop.clone(),
            destinations.clone(),
            progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let label = reader.info().label.clone();
            let Ok(_permit) = pool.acquire_owned().await else {
                return PartitionSummary::not_started(label);
            };
            if stop.is_stopped() {
                return PartitionSummary::not_started(label);
            }
            run_partition(&pipeline, &destinations, reader, &stop, &progress).await
        }));
    }
    let mut partitions = Vec::with_capacity(tasks.len());
    for task in tasks {
        partitions.push(match task.await {
            Ok(summary) => summary,
            Err(join) => {
                PartitionSummary::failed("?".into(), format!("partition task panicked: {join}"))
            }
        });
    }
    drop(display);
    Ok(Summary::collect(
        &pipeline,
        &destinations,
        partitions,
        started.elapsed(),
        stop.is_stopped(),
    ))
}

/// Runs one partition to its end (or until stopped); never panics on bad input.
async fn run_partition(
    pipeline: &Pipeline,
    destinations: &Destinations,
    mut reader: Box<dyn PartitionReader>,
    stop: &StopHandle,
    progress: &Arc<Progress>,
) -> PartitionSummary {
    let info = reader.info().clone();
    let (tx, rx) = mpsc::channel::<Result<RawBatch, SourceError>>(READ_AHEAD);
    let limits = pipeline.plan.limits;
    let reader_stop = stop.clone();
    let read_progress = progress.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut counted = 0;
        while !reader_stop.is_stopped() {
            let next = reader.next_batch(limits);
            let now = reader.bytes_read();
            read_progress
                .bytes
                .fetch_add(now.saturating_sub(counted), Ordering::Relaxed);
            counted = now;
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
    let mut worker = match Worker::new(pipeline, destinations, &info, Placement::Direct) {
        Ok(w) => w,
        Err(e) => return PartitionSummary::failed(info.label.clone(), e.to_string()),
    };
    let outcome = consume(&mut worker, rx, progress).await;
    let _ = read.await;
    let summary = finish(worker, outcome).await;
    for (output, file) in &summary.files {
        destinations.metrics.file_published(output, file.bytes);
    }
    destinations
        .warehouse
        .published(
            summary
                .files
                .iter()
                .map(|(o, f)| (o.clone(), f.path.clone()))
                .collect(),
        )
        .await;
    summary
}

async fn consume(
    worker: &mut Worker<'_>,
    mut rx: mpsc::Receiver<Result<RawBatch, SourceError>>,
    progress: &Progress,
) -> Result<(), PartitionError> {
    while let Some(message) = rx.recv().await {
        let batch = message?;
        worker.process(&batch).await?;
        progress
            .records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Publishes everything written and reports.
async fn finish(mut worker: Worker<'_>, outcome: Result<(), PartitionError>) -> PartitionSummary {
    let mut summary = PartitionSummary::not_started(worker.info().label.clone());
    summary.started = true;
    let closed = worker.close_all().await;
    summary.error = outcome.err().map(|e| e.to_string());
    match closed {
        Ok(closed) => {
            summary.files = closed.parquet;
            summary.dead_letter_files = closed.dead_letter_files;
        }
        Err(e) => summary.error = summary.error.or(Some(e.to_string())),
    }
    if let Some(error) = &summary.error {
        tracing::error!(partition = %summary.label, %error, "partition failed");
    }
    summary.counts = worker.counts;
    summary
}
