//! Running a pipeline over Kafka: one task per assigned partition, and the
//! commit protocol that makes the file outputs exactly-once.
//!
//! Per partition, every `commit_interval` (and when the partition leaves):
//! 1. close every open file (written under the staging prefix) and wait for
//!    every Kafka acknowledgement (DLQ, review, Kafka outputs);
//! 2. write the next manifest of the partition's commit log, naming the
//!    staged files and the next offset — create-if-absent, so a fenced-off
//!    owner fails here;
//! 3. move the staged files to their final names;
//! 4. commit the offset to the consumer group.
//!
//! On assignment, the newest manifest's moves are finished, the partition is
//! claimed with a manifest of a higher epoch, leftover staged files are
//! deleted, and reading resumes at the manifest's offset. See ARCHITECTURE.md
//! for the failure cases.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tributary_connectors::commit_log::{self, CommitLog, CommitLogError, Manifest, clear_staging};
use tributary_connectors::fault;
use tributary_connectors::kafka::KafkaError;
use tributary_connectors::kafka::consumer::{
    Assignment, KafkaConsumer, OffsetCommits, PartitionOwner, StartOffset, TopicPartition,
};
use tributary_connectors::parquet::Placement;
use tributary_connectors::source::{Origin, PartitionInfo, RawBatch};

use super::bounded::READ_AHEAD;
use super::error::PartitionError;
use super::summary::{KafkaPartitionSummary, KafkaSummary, PartitionSummary, Summary};
use super::worker::Worker;
use super::{Destinations, RunError, RunOptions, StopHandle};
use crate::plan::{Pipeline, PlannedKafkaSource};

/// Why a Kafka run cannot keep commit logs (`plan` refuses such pipelines).
const NO_STATE: &str = "no file destination to keep the commit log in";

/// Manifests kept per partition (older ones are deleted).
const MANIFESTS_KEPT: usize = 16;

/// Where a partition resumes, decided on assignment.
#[derive(Debug, Clone, Copy)]
struct Resume {
    epoch: u64,
    seq: u64,
    next_offset: i64,
}

/// Why a partition cannot be prepared.
#[derive(Debug, thiserror::Error)]
enum RecoverError {
    #[error(transparent)]
    Log(#[from] CommitLogError),
    #[error("cannot tell where the group starts the partition: {0}")]
    Start(String),
}

/// A filename-safe name for a topic partition: `topic-partition`.
fn stream_name(partition: &TopicPartition) -> String {
    let topic = tributary_connectors::source::filename_safe(&partition.topic);
    format!("{topic}-{}", partition.partition)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What a partition task leaves: its summary and the next offset of its last commit.
type Finished = (PartitionSummary, Option<i64>);

/// The engine's side of the consumer: prepares and drains partition tasks.
struct Owner {
    runtime: Handle,
    pipeline: Arc<Pipeline>,
    destinations: Destinations,
    commit_interval: Duration,
    commits: OnceLock<OffsetCommits>,
    tasks: Mutex<HashMap<TopicPartition, JoinHandle<Finished>>>,
    finished: Mutex<Vec<PartitionSummary>>,
}

impl Owner {
    /// Finishes the newest commit, claims the partition with a new epoch and
    /// clears staged leftovers. A partition never committed is claimed at
    /// `start()` (where the group starts it, resolved now), so that a crash
    /// before its first commit resumes there.
    async fn recover(&self, stream: &str, start: StartOffset<'_>) -> Result<Resume, RecoverError> {
        let state = self
            .destinations
            .state_location()
            .ok_or_else(|| CommitLogError::Corrupt {
                path: stream.to_string(),
                message: NO_STATE.into(),
            })?;
        let log = CommitLog::new(state, stream);
        let mut attempts = 0;
        loop {
            let latest = log.latest().await?;
            if let Some(m) = &latest {
                let moved =
                    commit_log::publish(&m.files, |name| self.destinations.location(name)).await?;
                // Published only now (the previous owner stopped before its
                // renames): their loads are due too.
                self.destinations
                    .warehouse
                    .published(
                        moved
                            .into_iter()
                            .map(|f| (f.destination.clone(), f.path.clone()))
                            .collect(),
                    )
                    .await;
            }
            fault::crash_point("recover");
            let next_offset = match latest.as_ref().and_then(|m| m.next_offset) {
                Some(offset) => offset,
                None => start().map_err(RecoverError::Start)?,
            };
            let claim = Manifest {
                seq: latest.as_ref().map_or(1, |m| m.seq + 1),
                epoch: latest.as_ref().map_or(1, |m| m.epoch + 1),
                next_offset: Some(next_offset),
                files: Vec::new(),
                written_at: now(),
            };
            match log.append(&claim).await {
                Ok(()) => {
                    for location in self.destinations.file_locations() {
                        let removed = clear_staging(location, stream).await?;
                        if removed > 0 {
                            tracing::info!(stream, removed, root = %location.display, "deleted staged files no commit names");
                        }
                    }
                    return Ok(Resume {
                        epoch: claim.epoch,
                        seq: claim.seq,
                        next_offset,
                    });
                }
                Err(CommitLogError::Fenced { .. }) if attempts < 5 => attempts += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl PartitionOwner for Owner {
    fn assigned(
        &self,
        partition: &TopicPartition,
        start: StartOffset<'_>,
    ) -> Result<Assignment, String> {
        let stream = stream_name(partition);
        let resume = self
            .runtime
            .block_on(self.recover(&stream, start))
            .map_err(|e| e.to_string())?;
        let commits = self
            .commits
            .get()
            .cloned()
            .ok_or_else(|| "offset commit queue not ready".to_string())?;
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let task = PartitionTask {
            pipeline: self.pipeline.clone(),
            destinations: self.destinations.clone(),
            partition: partition.clone(),
            stream,
            resume,
            commit_interval: self.commit_interval,
            commits,
        };
        let handle = self.runtime.spawn(task.run(rx));
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.insert(partition.clone(), handle);
        }
        self.destinations.metrics.partition_assigned(1);
        Ok(Assignment {
            resume_at: resume.next_offset,
            batches: tx,
        })
    }

    fn revoked(&self, partition: &TopicPartition) -> Option<i64> {
        fault::crash_point("revoke");
        self.collect(partition).and_then(|(_, committed)| committed)
    }

    fn task_ended(&self, partition: &TopicPartition) -> bool {
        // A fenced-off task must not claim the partition back: its new owner
        // holds it, and the group will revoke it here.
        self.collect(partition).is_none_or(|(fenced, _)| !fenced)
    }
}

impl Owner {
    /// Waits for `partition`'s task and keeps its summary; returns whether it
    /// was fenced off and the next offset of its last commit (`None` when no
    /// task runs for it).
    fn collect(&self, partition: &TopicPartition) -> Option<(bool, Option<i64>)> {
        let handle = self.tasks.lock().ok()?.remove(partition)?;
        self.destinations.metrics.partition_assigned(-1);
        let (summary, committed) = match self.runtime.block_on(handle) {
            Ok(done) => done,
            Err(join) => (
                PartitionSummary::failed(
                    partition.to_string(),
                    format!("partition task panicked: {join}"),
                ),
                None,
            ),
        };
        let fenced = summary.kafka.as_ref().is_some_and(|k| k.fenced.is_some());
        if let Ok(mut finished) = self.finished.lock() {
            finished.push(summary);
        }
        Some((fenced, committed))
    }
}

/// One assigned partition's work.
struct PartitionTask {
    pipeline: Arc<Pipeline>,
    destinations: Destinations,
    partition: TopicPartition,
    stream: String,
    resume: Resume,
    commit_interval: Duration,
    commits: OffsetCommits,
}

/// The commit state of a partition task.
struct Committer {
    log: CommitLog,
    seq: u64,
    epoch: u64,
    /// The next offset to read, as of the last batch processed.
    next_offset: Option<i64>,
    /// The next offset as of the last commit.
    committed: Option<i64>,
    commits: u64,
}

impl PartitionTask {
    /// Processes batches until the channel closes, committing on the interval;
    /// returns the summary and the next offset of the last commit.
    async fn run(self, mut batches: mpsc::Receiver<RawBatch>) -> Finished {
        let mut summary = PartitionSummary::not_started(self.partition.to_string());
        summary.started = true;
        let info = PartitionInfo {
            stream: self.stream.clone(),
            origin: Origin::Kafka {
                topic: Arc::from(self.partition.topic.as_str()),
                partition: self.partition.partition,
            },
            label: self.partition.to_string(),
            bytes: 0,
        };
        let placement = Placement::Staged {
            epoch: self.resume.epoch,
        };
        let Some(state) = self.destinations.state_location().cloned() else {
            summary.error = Some(NO_STATE.into());
            return (summary, None);
        };
        let mut committer = Committer {
            log: CommitLog::new(&state, &self.stream),
            seq: self.resume.seq,
            epoch: self.resume.epoch,
            next_offset: Some(self.resume.next_offset),
            committed: Some(self.resume.next_offset),
            commits: 0,
        };
        let outcome = match Worker::new(&self.pipeline, &self.destinations, &info, placement) {
            Ok(mut worker) => {
                let outcome = self
                    .consume(&mut worker, &mut batches, &mut committer, &mut summary)
                    .await;
                // Stop taking batches before the final commit, so the consumer
                // pauses this partition instead of waiting on it.
                batches.close();
                let outcome = match outcome {
                    Ok(()) => self.commit(&mut worker, &mut committer, &mut summary).await,
                    Err(e) => Err(e),
                };
                summary.counts = std::mem::take(&mut worker.counts);
                outcome
            }
            Err(e) => Err(e),
        };
        let mut fenced = None;
        match outcome {
            Ok(()) => {}
            Err(PartitionError::Commit(error @ CommitLogError::Fenced { .. })) => {
                // Not a failure: the group gave the partition to another member
                // while this one was away; that member reads it again.
                tracing::warn!(partition = %self.partition, %error, "partition taken over by another owner; uncommitted work discarded");
                fenced = Some(error.to_string());
            }
            Err(error) => {
                tracing::error!(partition = %self.partition, %error, "partition stopped");
                summary.error = Some(error.to_string());
            }
        }
        summary.kafka = Some(KafkaPartitionSummary {
            epoch: committer.epoch,
            commits: committer.commits,
            resumed_at: Some(self.resume.next_offset),
            committed_offset: committer.committed,
            fenced,
        });
        (summary, committer.committed)
    }

    async fn consume(
        &self,
        worker: &mut Worker<'_>,
        batches: &mut mpsc::Receiver<RawBatch>,
        committer: &mut Committer,
        summary: &mut PartitionSummary,
    ) -> Result<(), PartitionError> {
        let mut deadline = tokio::time::Instant::now() + self.commit_interval;
        loop {
            tokio::select! {
                batch = batches.recv() => match batch {
                    Some(batch) => self.process(worker, committer, batch).await?,
                    None => return Ok(()),
                },
                () = tokio::time::sleep_until(deadline) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                self.commit(worker, committer, summary).await?;
                deadline = tokio::time::Instant::now() + self.commit_interval;
            }
        }
    }

    async fn process(
        &self,
        worker: &mut Worker<'_>,
        committer: &mut Committer,
        batch: RawBatch,
    ) -> Result<(), PartitionError> {
        let Some(last) = batch.positions.last().copied() else {
            return Ok(());
        };
        // Offsets below the resume point were committed before: never process them twice.
        if let Some(next) = committer.next_offset
            && (last as i64) < next
        {
            return Ok(());
        }
        if let Some(next) = committer.next_offset
            && (batch.positions[0] as i64) < next
        {
            let skip = batch.positions.partition_point(|p| (*p as i64) < next);
            let kept = slice_batch(&batch, skip);
            worker.process(&kept).await?;
        } else {
            worker.process(&batch).await?;
        }
        committer.next_offset = Some(last as i64 + 1);
        Ok(())
    }

    /// Makes everything processed so far durable and published, then commits the offset.
    async fn commit(
        &self,
        worker: &mut Worker<'_>,
        committer: &mut Committer,
        summary: &mut PartitionSummary,
    ) -> Result<(), PartitionError> {
        if committer.next_offset == committer.committed {
            return Ok(());
        }
        let started = std::time::Instant::now();
        if fault::fail_point("commit") {
            return Err(CommitLogError::Corrupt {
                path: self.stream.clone(),
                message: "failure injected by TRIBUTARY_FAIL_AT".into(),
            }
            .into());
        }
        let closed = worker.close_all().await?;
        fault::crash_point("before_manifest");
        let manifest = Manifest {
            seq: committer.seq + 1,
            epoch: committer.epoch,
            next_offset: committer.next_offset,
            files: closed.files,
            written_at: now(),
        };
        if let Err(e) = committer.log.append(&manifest).await {
            if matches!(e, CommitLogError::Fenced { .. }) {
                self.discard_staged(&manifest).await;
            }
            return Err(e.into());
        }
        committer.seq = manifest.seq;
        fault::crash_point("after_manifest");
        commit_log::publish(&manifest.files, |name| self.destinations.location(name)).await?;
        fault::crash_point("after_publish");
        self.destinations
            .warehouse
            .published(
                manifest
                    .files
                    .iter()
                    .map(|f| (f.destination.clone(), f.path.clone()))
                    .collect(),
            )
            .await;
        committer.committed = manifest.next_offset;
        committer.commits += 1;
        if let Some(offset) = manifest.next_offset {
            self.commits.commit(&self.partition, offset);
        }
        tracing::debug!(partition = %self.partition, seq = manifest.seq, next_offset = ?manifest.next_offset, files = manifest.files.len(), "committed");
        let metrics = &self.destinations.metrics;
        metrics.committed(started.elapsed());
        // Added up, not listed: a partition may commit for months.
        for (output, file) in &closed.parquet {
            metrics.file_published(output, file.bytes);
            summary
                .published
                .entry(output.clone())
                .or_default()
                .add(file);
        }
        if committer.commits.is_multiple_of(MANIFESTS_KEPT as u64)
            && let Err(error) = committer.log.prune(MANIFESTS_KEPT).await
        {
            tracing::warn!(partition = %self.partition, %error, "pruning old manifests failed");
        }
        Ok(())
    }

    /// A fenced-off owner deletes what it staged (best effort: the next owner's recovery also does).
    async fn discard_staged(&self, manifest: &Manifest) {
        for file in &manifest.files {
            let Some(location) = self.destinations.location(&file.destination) else {
                continue;
            };
            if let Err(error) = commit_log::discard_staged(location, &file.staged).await {
                tracing::warn!(partition = %self.partition, %error, "could not delete a staged file; the next owner's recovery will");
            }
        }
    }
}

/// The records of `batch` from index `skip` on.
fn slice_batch(batch: &RawBatch, skip: usize) -> RawBatch {
    let n = batch.len() - skip;
    RawBatch {
        payloads: batch.payloads.slice(skip, n),
        positions: batch.positions[skip..].to_vec(),
        byte_offsets: batch
            .byte_offsets
            .get(skip..)
            .map(<[u64]>::to_vec)
            .unwrap_or_default(),
        meta: batch.meta.as_ref().map(|m| m.slice(skip, n)),
        first_sources: batch
            .first_sources
            .get(skip..)
            .map(<[String]>::to_vec)
            .unwrap_or_default(),
        // `batch` holds the bytes while this part of it is processed.
        held: Default::default(),
    }
}

/// Runs a Kafka-sourced pipeline until stopped (or idle with `options.until_idle`).
pub(crate) async fn run(
    pipeline: Arc<Pipeline>,
    kafka: PlannedKafkaSource,
    destinations: Destinations,
    stop: StopHandle,
    options: RunOptions,
    started: Instant,
) -> Result<Summary, RunError> {
    let owner = Arc::new(Owner {
        runtime: Handle::current(),
        pipeline: pipeline.clone(),
        destinations: destinations.clone(),
        commit_interval: kafka.commit_interval,
        commits: OnceLock::new(),
        tasks: Mutex::new(HashMap::new()),
        finished: Mutex::new(Vec::new()),
    });
    let (consumer, commits) = KafkaConsumer::new(kafka.settings.clone(), owner.clone())?;
    let _ = owner.commits.set(commits);
    let lag = consumer.lag();
    let peak_buffered = consumer.peak_buffered();
    destinations.metrics.watch_lag(lag.clone());
    tracing::info!(
        pipeline = %pipeline.plan.name,
        group = %kafka.settings.group,
        topics = ?kafka.settings.topics,
        "joining the consumer group"
    );
    let (done_tx, done_rx) = oneshot::channel();
    let poll_stop = stop.clone();
    std::thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || {
            let ended = consumer.run(&|| poll_stop.is_stopped(), options.until_idle);
            let _ = done_tx.send(ended);
        })
        .map_err(|e| {
            RunError::Kafka(KafkaError::Consumer {
                topics: kafka.settings.topics.join(","),
                message: format!("cannot start the consumer thread: {e}"),
            })
        })?;
    // The thread drops its sender without a word only when it panicked:
    // that is a failure of the run, never a clean stop.
    let ended = done_rx.await.unwrap_or_else(|_| {
        Err(KafkaError::Consumer {
            topics: kafka.settings.topics.join(","),
            message: "the consumer thread panicked (see the log above)".into(),
        })
    });
    let mut partitions = owner
        .finished
        .lock()
        .map(|mut f| std::mem::take(&mut *f))
        .unwrap_or_default();
    if let Err(error) = &ended {
        partitions.push(PartitionSummary::failed(
            "consumer".into(),
            error.to_string(),
        ));
    }
    let mut summary = Summary::collect(
        &pipeline,
        &destinations,
        partitions,
        started.elapsed(),
        stop.is_stopped(),
    );
    let mut processed: Vec<String> = summary
        .partitions
        .iter()
        .filter(|p| p.kafka.is_some())
        .map(|p| p.label.clone())
        .collect();
    processed.sort();
    processed.dedup();
    summary.kafka = Some(KafkaSummary {
        group: kafka.settings.group.clone(),
        lag: lag
            .snapshot()
            .into_iter()
            .filter(|(p, _)| processed.contains(&p.to_string()))
            .map(|(p, l)| (p.to_string(), l))
            .collect(),
        partitions: processed,
        peak_buffered_bytes: peak_buffered.load(std::sync::atomic::Ordering::Relaxed) as u64,
    });
    Ok(summary)
}
