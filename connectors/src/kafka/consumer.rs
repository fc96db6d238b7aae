//! The Kafka source: one consumer-group member, partition-parallel output.
//!
//! A single thread polls librdkafka. Messages are appended to a batch per
//! assigned partition; a batch closes at max records, max bytes or max wait
//! and goes to that partition's task over a bounded channel. When a task is
//! behind, its partition is paused (the others keep flowing) until the batch
//! is taken: memory stays bounded without head-of-line blocking.
//!
//! Group membership uses `cooperative-sticky` assignment. Rebalances run on
//! the polling thread through a [`PartitionOwner`], which the engine
//! implements: on assignment it says where to resume; on revocation the
//! partition's last batch is handed over, its channel closed, and the owner
//! returns only once the partition's work is durable, so the offset it
//! reports is committed before the partition is released.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use arrow::array::BinaryArray;
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::meta::MetaBuilder;
use super::{KafkaConnection, KafkaError};
use crate::source::{BatchLimits, Held, RawBatch};

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest retained message.
    Earliest,
    /// Only messages produced from now on.
    Latest,
}

/// How the source consumes.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Brokers and librdkafka overrides.
    pub connection: KafkaConnection,
    /// Topic names; a name starting with `^` is a regular expression.
    pub topics: Vec<String>,
    /// Consumer group.
    pub group: String,
    /// Start position for a group without committed offsets.
    pub start: StartPosition,
    /// A batch closes at these limits…
    pub limits: BatchLimits,
    /// …or this long after its first message.
    pub max_wait: Duration,
    /// Bytes of consumed records held at most across all partitions (being
    /// collected, waiting, or processed by their tasks); past it, every
    /// partition is paused until the tasks have caught up to three quarters
    /// of it. A member that takes over many partitions stays within it.
    pub max_buffered: usize,
}

/// What the engine decides when a partition is assigned.
#[derive(Debug)]
pub struct Assignment {
    /// Offset to resume from.
    pub resume_at: i64,
    /// Where the partition's batches go.
    pub batches: mpsc::Sender<RawBatch>,
}

/// Where the group would start a partition, resolved to an offset on demand
/// (its committed offset, else the start position's watermark): asks the
/// brokers, so an owner calls it only for a partition it never committed.
pub type StartOffset<'a> = &'a dyn Fn() -> Result<i64, String>;

/// The engine's side of partition ownership. Every call runs on the polling
/// thread and may block; none runs inside a rebalance callback, so the group
/// never waits for them.
pub trait PartitionOwner: Send + Sync + 'static {
    /// A partition was assigned to this member (or is restarted after its
    /// task failed): prepare it and say where to resume. Until this returns
    /// the partition is paused, so nothing is read before the owner has
    /// recorded where reading starts; for a partition it never committed it
    /// records `start()`, so that a crash before its first commit resumes
    /// there (and not at a `latest` that has moved on). An error is retried
    /// after a backoff.
    fn assigned(
        &self,
        partition: &TopicPartition,
        start: StartOffset<'_>,
    ) -> Result<Assignment, String>;
    /// The partition is leaving this member (revoked, or the run is ending) and its
    /// channel is closed: return once its work is durable, with the next offset to
    /// commit (`None` when nothing may be committed).
    fn revoked(&self, partition: &TopicPartition) -> Option<i64>;
    /// The partition's task ended on its own (it failed): collect it, and say
    /// whether the partition may be started again here, through
    /// [`assigned`](Self::assigned) after a backoff. `false` (another owner
    /// has taken it over) leaves it paused until the group revokes it.
    fn task_ended(&self, partition: &TopicPartition) -> bool;
}

/// Asks the polling thread to commit an offset to the group; cloning shares the queue.
#[derive(Debug, Clone)]
pub struct OffsetCommits(std_mpsc::Sender<(TopicPartition, i64)>);

impl OffsetCommits {
    /// Commits `next_offset` (the offset of the next record to read) for `partition`.
    pub fn commit(&self, partition: &TopicPartition, next_offset: i64) {
        // The receiver lives as long as the consumer; after it, nothing needs committing.
        let _ = self.0.send((partition.clone(), next_offset));
    }
}

/// How far behind one partition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PartitionLag {
    /// The broker's high-water mark (next offset to be written).
    pub high_watermark: i64,
    /// The next offset this member will read.
    pub position: i64,
    /// The group's committed offset.
    pub committed: i64,
    /// `high_watermark - committed`: records not yet durably processed.
    pub lag: i64,
    /// Fetching is paused because the partition's task is behind.
    #[serde(skip)]
    pub paused: bool,
}

impl Default for PartitionLag {
    fn default() -> Self {
        PartitionLag {
            high_watermark: -1,
            position: -1,
            committed: -1,
            lag: -1,
            paused: false,
        }
    }
}

/// Lag per partition, refreshed every second from librdkafka's statistics;
/// cloning shares it (the metrics endpoint reads the same table).
#[derive(Debug, Clone, Default)]
pub struct LagTable(Arc<Mutex<BTreeMap<TopicPartition, PartitionLag>>>);

impl LagTable {
    /// A copy of the current table.
    pub fn snapshot(&self) -> BTreeMap<TopicPartition, PartitionLag> {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Records the high-water mark of `partition` as the brokers gave it now.
    fn set_high_watermark(&self, partition: TopicPartition, high: i64) {
        if let Ok(mut table) = self.0.lock() {
            let entry = table.entry(partition).or_default();
            entry.high_watermark = high;
            if entry.committed >= 0 {
                entry.lag = high - entry.committed;
            }
        }
    }

    /// Records new offsets for `partition`, keeping its paused flag.
    fn update(&self, partition: TopicPartition, lag: PartitionLag) {
        if let Ok(mut table) = self.0.lock() {
            let entry = table.entry(partition).or_default();
            *entry = PartitionLag {
                paused: entry.paused,
                ..lag
            };
        }
    }

    fn set_paused(&self, partition: &TopicPartition, paused: bool) {
        if let Ok(mut table) = self.0.lock() {
            table.entry(partition.clone()).or_default().paused = paused;
        }
    }

    /// Forgets a partition this member no longer owns.
    fn remove(&self, partition: &TopicPartition) {
        if let Ok(mut table) = self.0.lock() {
            table.remove(partition);
        }
    }
}

/// librdkafka's `session.timeout.ms` when the pipeline does not set it.
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(45);

/// How often a member with nothing of its own left to read asks whether its
/// group is done.
const GROUP_CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long one check of the group's committed offsets may take in all.
const GROUP_CHECK_BUDGET: Duration = Duration::from_secs(1);

/// How long past the session timeout a member with nothing of its own left
/// to read waits for the rebalance that hands over a dead member's
/// partitions before it joins again.
const REJOIN_MARGIN: Duration = Duration::from_secs(2);

/// Since when an idle-bound member has had nothing of its own left to read
/// (it holds no partitions, or is caught up on those it holds) while its
/// group was behind, and when it joined the group again meanwhile.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    since: Instant,
    rejoined: Option<Instant>,
}

/// How often a quiet member that is not idle yet (under `--until-idle`) logs why.
const BEHIND_LOG_EVERY: Duration = Duration::from_secs(30);

/// Messages taken from librdkafka's queue in one round of the polling loop
/// (the checks between rounds cost a lock and a clock read per partition).
const MAX_DRAIN: usize = 256;

/// Messages of one partition collected into the next batch.
pub(crate) struct BatchBuilder {
    data: Vec<u8>,
    offsets: Vec<i32>,
    positions: Vec<u64>,
    meta: MetaBuilder,
    opened: Option<Instant>,
    /// The consumer's buffered bytes, which this batch's messages add to.
    buffered: Arc<AtomicUsize>,
    /// Bytes added to `buffered` for the messages collected so far.
    counted: usize,
}

impl BatchBuilder {
    pub(crate) fn new(partition: &TopicPartition, buffered: Arc<AtomicUsize>) -> Self {
        BatchBuilder {
            data: Vec::new(),
            offsets: vec![0],
            positions: Vec::new(),
            meta: MetaBuilder::new(Arc::from(partition.topic.as_str()), partition.partition),
            opened: None,
            buffered,
            counted: 0,
        }
    }

    /// Adds `message`; returns the consumer's buffered bytes with it.
    pub(crate) fn push(&mut self, message: &BorrowedMessage<'_>, now: Instant) -> usize {
        let payload = message.payload().unwrap_or_default();
        let bytes = payload.len() + message.key().map_or(0, <[u8]>::len);
        let buffered = self.buffered.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.counted += bytes;
        self.data.extend_from_slice(payload);
        self.offsets.push(self.data.len() as i32);
        self.positions.push(message.offset().max(0) as u64);
        self.meta.push(message);
        self.opened.get_or_insert(now);
        buffered
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    fn is_full(&self, limits: &BatchLimits) -> bool {
        self.positions.len() >= limits.max_records || self.data.len() >= limits.max_bytes
    }

    fn ready(&self, limits: &BatchLimits, max_wait: Duration, now: Instant) -> bool {
        !self.is_empty()
            && (self.is_full(limits)
                || self
                    .opened
                    .is_some_and(|t| now.saturating_duration_since(t) >= max_wait))
    }

    pub(crate) fn finish(&mut self) -> RawBatch {
        // The next batch is likely the size of this one: allocate it once
        // rather than doubling up to it.
        let (rows, bytes) = (self.positions.len(), self.data.len());
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        let offsets = std::mem::replace(&mut self.offsets, offsets);
        let payloads = BinaryArray::new(
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Buffer::from_vec(std::mem::replace(&mut self.data, Vec::with_capacity(bytes))),
            None,
        );
        self.opened = None;
        RawBatch {
            payloads,
            positions: std::mem::replace(&mut self.positions, Vec::with_capacity(rows)),
            byte_offsets: Vec::new(),
            meta: Some(self.meta.finish()),
            first_sources: Vec::new(),
            held: Held::new(self.buffered.clone(), std::mem::take(&mut self.counted)),
        }
    }
}

impl Drop for BatchBuilder {
    fn drop(&mut self) {
        // Messages collected but never handed over (the partition left).
        self.buffered.fetch_sub(self.counted, Ordering::SeqCst);
    }
}

/// Whether a task takes a partition's batches. Unless one does, the
/// partition is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    /// To be prepared by the owner and positioned at `at`: just assigned,
    /// restarted after its task failed, or a preparation that failed.
    Preparing { at: Instant },
    /// A task takes the batches.
    Running,
    /// The task ended on its own (it failed); `reported` once the owner was
    /// told. Stays so when the owner will not have it back.
    Ended { reported: bool },
}

/// An assigned partition on the polling thread.
struct PartitionState {
    partition: TopicPartition,
    task: Task,
    /// The task's channel (a closed one unless `task` is `Running`).
    batches: mpsc::Sender<RawBatch>,
    building: BatchBuilder,
    /// A closed batch its task has not taken yet (the partition is paused meanwhile).
    waiting: Option<RawBatch>,
    paused: bool,
    /// Failed preparations and task failures so far, for the backoff.
    failures: u32,
    next_offset: Option<i64>,
    /// Messages dropped because their offset was below `next_offset`.
    rewinds: u64,
}

impl PartitionState {
    /// A partition just assigned, paused until prepared.
    fn assigned(partition: &TopicPartition, now: Instant, buffered: Arc<AtomicUsize>) -> Self {
        PartitionState {
            partition: partition.clone(),
            task: Task::Preparing { at: now },
            batches: mpsc::channel(1).0,
            building: BatchBuilder::new(partition, buffered),
            waiting: None,
            paused: true,
            failures: 0,
            next_offset: None,
            rewinds: 0,
        }
    }

    /// The next backoff (1 s, doubling to a minute), counting one more failure.
    fn backoff(&mut self) -> Duration {
        let delay = Duration::from_secs(1 << self.failures.min(6)).min(Duration::from_secs(60));
        self.failures += 1;
        delay
    }

    /// Hands over what can be handed over without blocking; returns whether
    /// the partition should be paused. At most four batches are held per
    /// partition: two in the channel, one waiting, one being filled.
    fn offer(&mut self, limits: &BatchLimits, max_wait: Duration, now: Instant) -> bool {
        if self.task != Task::Running {
            return true;
        }
        loop {
            let batch = match self.waiting.take() {
                Some(batch) => batch,
                None if self.building.ready(limits, max_wait, now) => self.building.finish(),
                None => return false,
            };
            match self.batches.try_send(batch) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(batch)) => {
                    self.waiting = Some(batch);
                    // Keep filling the next batch meanwhile; pause (which makes
                    // librdkafka drop its prefetched messages and fetch them
                    // again on resume) only once that one is full as well.
                    return self.building.ready(limits, max_wait, now);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::error!(partition = %self.partition, "partition task ended; pausing the partition");
                    self.task = Task::Ended { reported: false };
                    return true;
                }
            }
        }
    }

    /// Hands over everything, waiting for the task; then closes the channel.
    fn close(mut self) {
        if self.task != Task::Running {
            return;
        }
        let rest = (!self.building.is_empty()).then(|| self.building.finish());
        for batch in self.waiting.take().into_iter().chain(rest) {
            if self.batches.blocking_send(batch).is_err() {
                return;
            }
        }
    }
}

/// Shared between the polling loop and librdkafka's callbacks (same thread).
struct OwnerContext {
    owner: Arc<dyn PartitionOwner>,
    states: Mutex<Vec<PartitionState>>,
    lag: LagTable,
    fatal: Mutex<Option<String>>,
    assigned_once: AtomicBool,
    /// Bumped on every assignment of partitions: a new assignment is activity,
    /// not idleness (an empty one, as a rebalance that moves nothing here, is neither).
    assignments: AtomicU64,
    /// Where a partition without a committed offset starts.
    start: StartPosition,
    /// Bytes of consumed records held now, and the most held so far.
    buffered: Arc<AtomicUsize>,
    peak_buffered: Arc<AtomicUsize>,
    /// Every partition is paused because `buffered` reached the budget.
    over_budget: AtomicBool,
}

impl OwnerContext {
    fn states(&self) -> std::sync::MutexGuard<'_, Vec<PartitionState>> {
        self.states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on `partition`'s state, if it is still assigned.
    fn with_state<R>(
        &self,
        partition: &TopicPartition,
        f: impl FnOnce(&mut PartitionState) -> R,
    ) -> Option<R> {
        self.states()
            .iter_mut()
            .find(|s| &s.partition == partition)
            .map(f)
    }

    fn fail(&self, message: String) {
        tracing::error!(error = %message, "kafka source cannot continue");
        if let Ok(mut fatal) = self.fatal.lock() {
            fatal.get_or_insert(message);
        }
    }

    /// Closes the partitions in `partitions` (all when `None`) and commits what their owner reports.
    fn release(
        &self,
        consumer: &BaseConsumer<OwnerContext>,
        partitions: Option<&[TopicPartition]>,
    ) {
        let leaving: Vec<PartitionState> = {
            let mut states = self.states();
            let (leaving, staying) = std::mem::take(&mut *states)
                .into_iter()
                .partition(|s| partitions.is_none_or(|p| p.contains(&s.partition)));
            *states = staying;
            leaving
        };
        let mut commits = TopicPartitionList::new();
        for state in leaving {
            let partition = state.partition.clone();
            state.close();
            if partitions.is_some() {
                // Revoked: another member reports its lag now (the run's end keeps them for the summary).
                self.lag.remove(&partition);
            }
            if let Some(offset) = self.owner.revoked(&partition) {
                let _ = commits.add_partition_offset(
                    &partition.topic,
                    partition.partition,
                    Offset::Offset(offset),
                );
            }
            tracing::info!(partition = %partition, "partition released");
        }
        if commits.count() > 0
            && let Err(error) = consumer.commit(&commits, CommitMode::Sync)
        {
            tracing::warn!(%error, "committing offsets of released partitions failed");
        }
    }
}

impl ClientContext for OwnerContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                if partition < 0 || !p.desired {
                    continue;
                }
                let committed = p.committed_offset;
                let high = p.hi_offset;
                self.lag.update(
                    TopicPartition {
                        topic: topic.clone(),
                        partition,
                    },
                    PartitionLag {
                        high_watermark: high,
                        position: p.app_offset,
                        committed,
                        lag: if high >= 0 && committed >= 0 {
                            high - committed
                        } else {
                            p.consumer_lag
                        },
                        paused: false,
                    },
                );
            }
        }
    }
}

impl OwnerContext {
    /// Where the group would start `partition` now, as an offset: its
    /// committed offset, else the low or high watermark per the start position.
    fn start_offset(
        &self,
        consumer: &BaseConsumer<Self>,
        partition: &TopicPartition,
    ) -> Result<i64, String> {
        let timeout = Duration::from_secs(10);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&partition.topic, partition.partition);
        let committed = consumer
            .committed_offsets(tpl, timeout)
            .map_err(|e| format!("reading the group's committed offset: {e}"))?;
        if let Some(Offset::Offset(offset)) = committed
            .find_partition(&partition.topic, partition.partition)
            .map(|e| e.offset())
        {
            return Ok(offset);
        }
        let (low, high) = consumer
            .fetch_watermarks(&partition.topic, partition.partition, timeout)
            .map_err(|e| format!("reading the partition's watermarks: {e}"))?;
        Ok(match self.start {
            StartPosition::Earliest => low,
            StartPosition::Latest => high,
        })
    }
}

impl ConsumerContext for OwnerContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let partitions: Vec<TopicPartition> = tpl
            .elements()
            .iter()
            .map(|e| TopicPartition {
                topic: e.topic().to_string(),
                partition: e.partition(),
            })
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Assigned paused; the polling loop prepares each partition
                // (`prepare_due`) before it is read. Nothing here asks the
                // brokers or the stores: a callback that blocks stalls the
                // whole group (seen after a broker restart).
                let now = Instant::now();
                self.states().extend(
                    partitions
                        .iter()
                        .map(|p| PartitionState::assigned(p, now, self.buffered.clone())),
                );
                self.assigned_once.store(true, Ordering::SeqCst);
                if !partitions.is_empty() {
                    self.assignments.fetch_add(1, Ordering::SeqCst);
                }
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match result.and_then(|()| consumer.pause(tpl)) {
                    Ok(()) => {
                        for partition in &partitions {
                            tracing::info!(%partition, "partition assigned");
                            self.lag.set_paused(partition, true);
                        }
                    }
                    Err(error) => self.fail(format!("assigning partitions: {error}")),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if consumer.assignment_lost() {
                    tracing::warn!(
                        "assignment lost (session timed out); finishing the partitions' work, the commit log fences anything stale"
                    );
                }
                self.release(consumer, Some(&partitions));
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(error) = result {
                    tracing::warn!(%error, "unassigning partitions failed");
                }
            }
            other => tracing::warn!(error = ?other, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::warn!(%error, "offset commit failed; the next commit supersedes it");
        }
    }
}

/// A consumer-group member feeding partition tasks.
pub struct KafkaConsumer {
    consumer: BaseConsumer<OwnerContext>,
    settings: ConsumerSettings,
    commits: std_mpsc::Receiver<(TopicPartition, i64)>,
    lag: LagTable,
    /// The group's `session.timeout.ms`: how long a crashed member still holds its partitions.
    session_timeout: Duration,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("group", &self.settings.group)
            .field("topics", &self.settings.topics)
            .finish()
    }
}

/// Why the consumer loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `stop` returned true.
    Stopped,
    /// Every assigned partition was caught up and idle.
    Idle,
}

impl KafkaConsumer {
    /// Joins `settings.group` and subscribes; partitions arrive through `owner`.
    pub fn new(
        settings: ConsumerSettings,
        owner: Arc<dyn PartitionOwner>,
    ) -> Result<(Self, OffsetCommits), KafkaError> {
        let start = match settings.start {
            StartPosition::Earliest => "earliest",
            StartPosition::Latest => "latest",
        };
        let config = settings.connection.client_config(&[
            ("group.id", &settings.group),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "false"),
            ("auto.offset.reset", start),
            // librdkafka waits up to 500 ms for a fetch to fill by default, which
            // caps throughput on brokers that answer only at the deadline.
            ("fetch.wait.max.ms", "20"),
            // After the local queue was full (a slow partition), fetch again
            // soon rather than after librdkafka's default second.
            ("fetch.queue.backoff.ms", "10"),
            ("queued.max.messages.kbytes", "16384"),
            ("statistics.interval.ms", "1000"),
        ]);
        let session_timeout = config
            .get("session.timeout.ms")
            .and_then(|ms| ms.parse().ok())
            .map_or(DEFAULT_SESSION_TIMEOUT, Duration::from_millis);
        let lag = LagTable::default();
        let context = OwnerContext {
            owner,
            states: Mutex::new(Vec::new()),
            lag: lag.clone(),
            fatal: Mutex::new(None),
            assigned_once: AtomicBool::new(false),
            assignments: AtomicU64::new(0),
            start: settings.start,
            buffered: Arc::new(AtomicUsize::new(0)),
            peak_buffered: Arc::new(AtomicUsize::new(0)),
            over_budget: AtomicBool::new(false),
        };
        let consumer: BaseConsumer<OwnerContext> = config
            .create_with_context(context)
            .map_err(KafkaError::client("creating the consumer"))?;
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(KafkaError::client(format!("subscribing to {topics:?}")))?;
        let (tx, rx) = std_mpsc::channel();
        Ok((
            KafkaConsumer {
                consumer,
                settings,
                commits: rx,
                lag,
                session_timeout,
            },
            OffsetCommits(tx),
        ))
    }

    /// The lag table this consumer keeps current.
    pub fn lag(&self) -> LagTable {
        self.lag.clone()
    }

    /// The most bytes of consumed records this consumer held at once (see
    /// [`ConsumerSettings::max_buffered`]); it keeps counting while it runs.
    pub fn peak_buffered(&self) -> Arc<AtomicUsize> {
        self.consumer.context().peak_buffered.clone()
    }

    /// Polls until `stop()` is true or, with `until_idle`, until every assigned
    /// partition has reached its high-water mark and nothing arrived for that
    /// long. Every partition is released (its work made durable and committed)
    /// before this returns.
    pub fn run(
        self,
        stop: &dyn Fn() -> bool,
        until_idle: Option<Duration>,
    ) -> Result<Ended, KafkaError> {
        let context = self.consumer.context().clone();
        let mut last_message = Instant::now();
        let mut last_group_check: Option<Instant> = None;
        let mut last_behind_log: Option<Instant> = None;
        let mut waiting: Option<Waiting> = None;
        let mut assignments = 0;
        let ended = loop {
            if stop() {
                break Ok(Ended::Stopped);
            }
            if let Some(fatal) = context.fatal.lock().ok().and_then(|f| f.clone()) {
                break Err(KafkaError::Consumer {
                    topics: self.settings.topics.join(","),
                    message: fatal,
                });
            }
            self.commit_requested();
            match self.consumer.poll(Duration::from_millis(20)) {
                Some(Ok(message)) => {
                    let now = Instant::now();
                    last_message = now;
                    waiting = None;
                    let mut full = self.append(&context, &message, now);
                    drop(message);
                    // Take what librdkafka already holds before the per-round
                    // bookkeeping below, until some partition's batch is full
                    // or the memory budget is reached (the bookkeeping pauses
                    // every partition then).
                    let mut drained = 1;
                    let budget = self.settings.max_buffered;
                    while !full
                        && drained < MAX_DRAIN
                        && context.buffered.load(Ordering::Relaxed) < budget
                    {
                        match self.consumer.poll(Duration::ZERO) {
                            Some(Ok(message)) => {
                                full = self.append(&context, &message, now);
                                drained += 1;
                            }
                            Some(Err(error)) => {
                                tracing::warn!(%error, "kafka consumer error");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Some(Err(error)) => {
                    // Not idle while the cluster is unreachable: what it would
                    // say about high-water marks is unknown.
                    last_message = Instant::now();
                    tracing::warn!(%error, "kafka consumer error");
                }
                None => {}
            }
            self.report_ended(&context);
            self.prepare_due(&context);
            let generation = context.assignments.load(Ordering::SeqCst);
            if self.offer_all(&context, Instant::now()) || generation != assignments {
                // A paused partition is waiting for its task, and a new
                // assignment has yet to be read: neither is idleness.
                last_message = Instant::now();
                assignments = generation;
                waiting = None;
            }
            if let Some(idle) = until_idle
                && last_message.elapsed() >= idle
            {
                let holding: Vec<TopicPartition> = context
                    .states()
                    .iter()
                    .map(|s| s.partition.clone())
                    .collect();
                let mut reason = self.behind(&context);
                if reason.is_none() && !holding.is_empty() && waiting.is_none() {
                    // Statistics may predate a reconnect: ask the brokers
                    // themselves before stopping.
                    if last_group_check.is_some_and(|at| at.elapsed() < GROUP_CHECK_EVERY) {
                        continue;
                    }
                    last_group_check = Some(Instant::now());
                    reason = self.behind_the_brokers(&context);
                    if reason.is_none() && self.group_caught_up(&holding) {
                        break Ok(Ended::Idle);
                    }
                }
                if let Some(reason) = reason {
                    if last_behind_log.is_none_or(|at| at.elapsed() >= BEHIND_LOG_EVERY) {
                        last_behind_log = Some(Instant::now());
                        tracing::info!(
                            quiet_s = last_message.elapsed().as_secs(),
                            %reason,
                            "quiet but not idle yet"
                        );
                    }
                    continue;
                }
                // Nothing of its own left to read (given nothing, its session
                // lost, or caught up on what it holds) while the group is
                // behind: it is idle only once its group is. What it was not
                // given may be held by a member that died and still counts
                // until its session times out, after which a rebalance hands
                // it over. Once that timeout has passed it joins the group
                // again: a member that joined while the dead one still
                // counted may never hear of that rebalance (tansu 0.6 was
                // seen to leave it with nothing, or with part of the topic),
                // and a fresh join is answered with what is left. Past twice
                // the timeout, and one after the rejoin, it stops (more
                // members than partitions, or another live member still
                // reading its own).
                let wait = waiting.get_or_insert(Waiting {
                    since: Instant::now(),
                    rejoined: None,
                });
                let waited = wait.since.elapsed();
                let settled = wait
                    .rejoined
                    .is_none_or(|at| at.elapsed() >= self.session_timeout);
                if waited >= 2 * self.session_timeout && settled {
                    tracing::info!(
                        waited_s = waited.as_secs(),
                        "nothing of its own to read past twice the session timeout; stopping"
                    );
                    break Ok(Ended::Idle);
                }
                if last_group_check.is_none_or(|at| at.elapsed() >= GROUP_CHECK_EVERY) {
                    last_group_check = Some(Instant::now());
                    if self.group_caught_up(&holding) {
                        break Ok(Ended::Idle);
                    }
                    if wait.rejoined.is_none() && waited >= self.session_timeout + REJOIN_MARGIN {
                        wait.rejoined = Some(Instant::now());
                        self.rejoin(&context, &holding);
                    }
                }
            }
        };
        context.release(&self.consumer, None);
        self.commit_requested();
        self.refresh_lag();
        self.consumer.unsubscribe();
        ended
    }

    /// Leaves the group and joins it again. What it holds is caught up:
    /// it is let go first (made durable and committed, as at the run's end).
    fn rejoin(&self, context: &OwnerContext, held: &[TopicPartition]) {
        let topics: Vec<&str> = self.settings.topics.iter().map(String::as_str).collect();
        tracing::info!(
            session_timeout_s = self.session_timeout.as_secs(),
            held = held.len(),
            "nothing of its own to read past the session timeout while the group is behind; joining the group again"
        );
        if !held.is_empty() {
            context.release(&self.consumer, Some(held));
            self.commit_requested();
        }
        self.consumer.unsubscribe();
        if let Err(error) = self.consumer.subscribe(&topics) {
            tracing::warn!(%error, "joining the group again failed; the next check retries");
        }
    }

    /// Whether the group has committed every partition of its topics up to
    /// its high-water mark (an empty partition counts as done), as the
    /// brokers say now, besides `held` (this member's own, which it commits
    /// when it lets them go); false if they cannot say.
    fn group_caught_up(&self, held: &[TopicPartition]) -> bool {
        // One short budget for the whole check: the polling loop waits on
        // it, and a rebalance needs that loop to hand partitions over (a
        // check waiting seconds on a broker mid-rebalance was seen to cost
        // this member its place in the group).
        let deadline = Instant::now() + GROUP_CHECK_BUDGET;
        let left = || deadline.saturating_duration_since(Instant::now());
        let mut tpl = TopicPartitionList::new();
        let mut known = 0;
        for topic in &self.settings.topics {
            let Ok(metadata) = self.consumer.fetch_metadata(Some(topic), left()) else {
                return false;
            };
            for t in metadata.topics() {
                for p in t.partitions() {
                    known += 1;
                    let own = held
                        .iter()
                        .any(|h| h.topic == t.name() && h.partition == p.id());
                    if !own {
                        tpl.add_partition(t.name(), p.id());
                    }
                }
            }
        }
        if known == 0 {
            return false;
        }
        if tpl.count() == 0 {
            return true;
        }
        let Ok(committed) = self.consumer.committed_offsets(tpl, left()) else {
            return false;
        };
        committed.elements().iter().all(|e| {
            let Ok((low, high)) = self
                .consumer
                .fetch_watermarks(e.topic(), e.partition(), left())
            else {
                return false;
            };
            match e.offset() {
                Offset::Offset(c) => c >= high,
                _ => low == high,
            }
        })
    }

    /// [`Self::behind`] with every held partition's high-water mark asked of
    /// the brokers now (and kept in the lag table), or why they could not say.
    fn behind_the_brokers(&self, context: &OwnerContext) -> Option<String> {
        let held: Vec<TopicPartition> = context
            .states()
            .iter()
            .filter(|s| s.task == Task::Running)
            .map(|s| s.partition.clone())
            .collect();
        for p in held {
            match self
                .consumer
                .fetch_watermarks(&p.topic, p.partition, Duration::from_secs(5))
            {
                Ok((_, high)) => self.lag.set_high_watermark(p, high),
                Err(error) => return Some(format!("{p}: high-water mark unknown ({error})")),
            }
        }
        self.behind(context)
    }

    /// Asks the brokers for current high-water marks and committed offsets of every partition seen.
    fn refresh_lag(&self) {
        let known = self.lag.snapshot();
        if known.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for p in known.keys() {
            tpl.add_partition(&p.topic, p.partition);
        }
        let committed = match self.consumer.committed_offsets(tpl, Duration::from_secs(5)) {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "reading committed offsets for the lag report failed");
                return;
            }
        };
        for (p, mut lag) in known {
            if let Ok((_, high)) =
                self.consumer
                    .fetch_watermarks(&p.topic, p.partition, Duration::from_secs(5))
            {
                lag.high_watermark = high;
            }
            if let Some(Offset::Offset(c)) = committed
                .find_partition(&p.topic, p.partition)
                .map(|e| e.offset())
            {
                lag.committed = c;
            }
            if lag.high_watermark >= 0 && lag.committed >= 0 {
                lag.lag = lag.high_watermark - lag.committed;
            }
            self.lag.update(p, lag);
        }
    }

    /// Adds `message` to its partition's batch; returns whether that batch is full.
    fn append(&self, context: &OwnerContext, message: &BorrowedMessage<'_>, now: Instant) -> bool {
        let mut states = context.states();
        let Some(state) = states.iter_mut().find(|s| {
            s.partition.partition == message.partition() && s.partition.topic == message.topic()
        }) else {
            tracing::warn!(
                topic = message.topic(),
                partition = message.partition(),
                "message for a partition not assigned here; ignored"
            );
            return false;
        };
        if state.task != Task::Running {
            // Fetched before the pause took hold, or after the task ended:
            // read again from where the partition is positioned when (re)started.
            return false;
        }
        // Offsets only move forward within an assignment. A fetch answered from
        // an earlier position (seen with tansu 0.6 at the end of a partition) would
        // otherwise hand the same records over twice; the Java client drops
        // these the same way.
        if let Some(next) = state.next_offset
            && message.offset() < next
        {
            state.rewinds += 1;
            if state.rewinds.is_power_of_two() {
                tracing::warn!(partition = %state.partition, offset = message.offset(), expected = next, skipped = state.rewinds, "broker returned an offset already consumed; skipped");
            }
            return false;
        }
        state.next_offset = Some(message.offset() + 1);
        let buffered = state.building.push(message, now);
        context.peak_buffered.fetch_max(buffered, Ordering::Relaxed);
        state.building.is_full(&self.settings.limits)
    }

    /// Partitions whose task ended on its own: reported to the owner once,
    /// then prepared again after a backoff (1 s, doubling to a minute), as if
    /// newly assigned.
    fn report_ended(&self, context: &OwnerContext) {
        let ended: Vec<TopicPartition> = {
            let mut states = context.states();
            // A task may end with nothing left to hand it (say, its final
            // commit failed at the end of the partition): notice that too.
            for state in states
                .iter_mut()
                .filter(|s| s.task == Task::Running && s.batches.is_closed())
            {
                tracing::error!(partition = %state.partition, "partition task ended; pausing the partition");
                state.task = Task::Ended { reported: false };
            }
            states
                .iter()
                .filter(|s| s.task == Task::Ended { reported: false })
                .map(|s| s.partition.clone())
                .collect()
        };
        for partition in ended {
            let again = context.owner.task_ended(&partition);
            context.with_state(&partition, |state| {
                state.task = Task::Ended { reported: true };
                if again {
                    let delay = state.backoff();
                    state.task = Task::Preparing {
                        at: Instant::now() + delay,
                    };
                    tracing::warn!(%partition, ?delay, failures = state.failures, "partition task failed; restarting it after a backoff");
                }
            });
        }
    }

    /// Prepares the partitions due: the owner recovers each and says where
    /// to resume; the partition is positioned there and resumed (by
    /// `offer_all`). One that cannot be prepared yet stays paused and is
    /// tried again after a backoff.
    fn prepare_due(&self, context: &OwnerContext) {
        let now = Instant::now();
        let due: Vec<TopicPartition> = context
            .states()
            .iter()
            .filter(|s| matches!(s.task, Task::Preparing { at } if at <= now))
            .map(|s| s.partition.clone())
            .collect();
        for partition in due {
            let start = || context.start_offset(&self.consumer, &partition);
            let prepared = context.owner.assigned(&partition, &start).and_then(|a| {
                match self.consumer.seek(
                    &partition.topic,
                    partition.partition,
                    Offset::Offset(a.resume_at),
                    Duration::from_secs(10),
                ) {
                    Ok(()) => Ok(a),
                    Err(e) => {
                        let why = format!("seeking to {}: {e}", a.resume_at);
                        // Its channel closes with the assignment: the new
                        // task ends at once, and is collected.
                        drop(a);
                        let _ = context.owner.task_ended(&partition);
                        Err(why)
                    }
                }
            });
            context.with_state(&partition, |state| match prepared {
                Ok(assignment) => {
                    state.task = Task::Running;
                    state.batches = assignment.batches;
                    state.building = BatchBuilder::new(&partition, context.buffered.clone());
                    state.waiting = None;
                    state.next_offset = Some(assignment.resume_at);
                    tracing::info!(%partition, resume_at = assignment.resume_at, "partition prepared");
                }
                Err(why) => {
                    let delay = state.backoff();
                    state.task = Task::Preparing {
                        at: Instant::now() + delay,
                    };
                    tracing::error!(%partition, %why, ?delay, "preparing the partition failed; trying again after a backoff");
                }
            });
        }
    }

    /// Whether the consumed bytes held are over the budget: from reaching
    /// `max_buffered` until they are back under three quarters of it.
    fn over_budget(&self, context: &OwnerContext) -> bool {
        let (used, limit) = (
            context.buffered.load(Ordering::SeqCst),
            self.settings.max_buffered,
        );
        let was = context.over_budget.load(Ordering::SeqCst);
        let over = if was {
            used > limit / 4 * 3
        } else {
            used >= limit
        };
        if over != was {
            context.over_budget.store(over, Ordering::SeqCst);
            if over {
                tracing::info!(
                    buffered = used,
                    max_buffered = limit,
                    "memory budget of consumed records reached; pausing every partition until the tasks catch up"
                );
            } else {
                tracing::info!(
                    buffered = used,
                    max_buffered = limit,
                    "back under the memory budget; resuming"
                );
            }
        }
        over
    }

    /// Hands over ready batches; returns whether a partition is waiting on its task.
    fn offer_all(&self, context: &OwnerContext, now: Instant) -> bool {
        let (limits, max_wait) = (self.settings.limits, self.settings.max_wait);
        let over_budget = self.over_budget(context);
        let mut states = context.states();
        let mut waiting = over_budget;
        for state in states.iter_mut() {
            let pause = state.offer(&limits, max_wait, now) || over_budget;
            waiting |= (pause || state.waiting.is_some()) && state.task == Task::Running;
            if pause != state.paused {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&state.partition.topic, state.partition.partition);
                let result = if pause {
                    self.consumer.pause(&tpl)
                } else {
                    self.consumer.resume(&tpl)
                };
                match result {
                    Ok(()) => {
                        state.paused = pause;
                        context.lag.set_paused(&state.partition, pause);
                    }
                    Err(error) => {
                        tracing::warn!(partition = %state.partition, %error, "pause/resume failed")
                    }
                }
            }
        }
        waiting
    }

    fn commit_requested(&self) {
        let mut latest: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        while let Ok((partition, offset)) = self.commits.try_recv() {
            latest.insert(partition, offset);
        }
        if latest.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in &latest {
            let _ = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(*offset));
        }
        match self.consumer.commit(&tpl, CommitMode::Async) {
            Ok(()) => crate::fault::crash_point("after_group_commit"),
            Err(error) => {
                tracing::warn!(%error, "offset commit failed; the next commit supersedes it")
            }
        }
    }

    /// What keeps this member from being caught up (assigned, and every
    /// partition it holds at its high-water mark): the first partition
    /// behind and why, or that it has not been assigned yet; None if nothing.
    fn behind(&self, context: &OwnerContext) -> Option<String> {
        if !context.assigned_once.load(Ordering::SeqCst) {
            return Some("no assignment yet".into());
        }
        let lag = self.lag.snapshot();
        let states = context.states();
        states.iter().find_map(|s| {
            let p = &s.partition;
            match s.task {
                Task::Running => {}
                // Not read yet: what it holds is unknown.
                Task::Preparing { .. } => return Some(format!("{p}: being prepared")),
                // Failed for good here: nothing more will be read.
                Task::Ended { .. } => return None,
            }
            if !s.building.is_empty() || s.waiting.is_some() {
                return Some(format!("{p}: a batch is open or waiting for its task"));
            }
            let Some(l) = lag.get(p) else {
                return Some(format!("{p}: no statistics yet"));
            };
            let position = s
                .next_offset
                .or((l.position >= 0).then_some(l.position))
                .or((l.committed >= 0).then_some(l.committed));
            let at_end = l.high_watermark >= 0 && position.is_some_and(|at| at >= l.high_watermark)
                || l.high_watermark == 0;
            (!at_end).then(|| {
                format!(
                    "{p}: position {} below high-water mark {}",
                    position.unwrap_or(-1),
                    l.high_watermark
                )
            })
        })
    }
}
