//! `tributary dlq`: what is in a dead-letter queue, and running it through
//! a fixed pipeline again.
//!
//! **Inspect** reads dead-letter files (local or S3) or a dead-letter topic
//! and counts records by stage and rule, then by reason, with examples.
//!
//! **Replay** runs dead letters through a pipeline as a bounded source (one
//! partition per file or topic partition, see
//! [`ReplaySource`]).
//! Records that now pass go to the pipeline's outputs; records that still
//! fail go to its DLQ or review queue with the new reason. Output names
//! derive from the record's place in the queue, so a replay interrupted and
//! run again rewrites the same files. Once every partition finished:
//!
//! - each replayed **file** moves to `_tributary/replayed/` under the
//!   dead-letter location (kept, not deleted): the queue then holds exactly
//!   the records still failing;
//! - for a **topic**, the replay group (`tributary-replay-<pipeline>`)
//!   commits the offset after the last record replayed; the next replay
//!   starts there, so it sees exactly the records appended since, among
//!   them those that failed again.
//!
//! Either way, running the replay again never duplicates output. A pipeline
//! that reads Kafka gets each record's metadata columns back from where it
//! was first consumed; its raw-zone outputs are left out (the originals are
//! archived there already).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use tributary_connectors::dead_letter::DeadLetter;
use tributary_connectors::dead_letter::read::{self, LetterFile, ReadError};
use tributary_connectors::dead_letter::replay::{ReplaySource, kafka_origin, scan_topic};
use tributary_connectors::kafka::dead_letters::{self, TopicLetters};
use tributary_connectors::kafka::{KafkaConnection, KafkaError};
use tributary_connectors::source::SourceError;
use tributary_connectors::store::{Location, Storage, StoreError};

use crate::plan::{Pipeline, Plan, PlannedDeadLetter, PlannedSource};
use crate::runtime::{self, RunError, RunOptions, StopHandle, Summary};

/// Why a dead-letter queue cannot be inspected or replayed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// The location cannot be opened.
    #[error("opening {0}")]
    Open(String, #[source] StoreError),
    /// A file cannot be read back.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The topic cannot be read.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// A dead letter cannot be replayed through the pipeline.
    #[error(transparent)]
    Letter(#[from] SourceError),
    /// The replay run failed to start.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The source names nothing replayable.
    #[error("{0}")]
    Unsupported(String),
}

/// Where dead letters are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlqSource {
    /// NDJSON files under a directory or S3 prefix, optionally only those whose key starts with `prefix`.
    Files {
        /// Directory or `s3://bucket/prefix`.
        root: String,
        /// Only keys starting with this (a single file's name).
        prefix: Option<String>,
    },
    /// A dead-letter topic.
    Topic {
        /// How to reach it.
        connection: KafkaConnection,
        /// The topic.
        topic: String,
    },
}

impl DlqSource {
    /// `kafka://host:port[,host:port]/topic`, `s3://bucket/prefix`, a directory, or one file.
    pub fn parse(text: &str) -> Result<Self, DlqError> {
        if let Some(rest) = text.strip_prefix("kafka://") {
            return match rest.split_once('/') {
                Some((brokers, topic)) if !brokers.is_empty() && !topic.is_empty() => {
                    Ok(DlqSource::Topic {
                        connection: KafkaConnection {
                            brokers: brokers.to_string(),
                            properties: Default::default(),
                        },
                        topic: topic.to_string(),
                    })
                }
                _ => Err(DlqError::Unsupported(format!(
                    "{text}: expected kafka://host:port/topic"
                ))),
            };
        }
        let path = std::path::Path::new(text);
        if !text.contains("://") && path.is_file() {
            let name = path.file_name().map(|n| n.to_string_lossy().to_string());
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| ".".to_string(), |p| p.display().to_string());
            return Ok(DlqSource::Files {
                root: parent,
                prefix: name,
            });
        }
        Ok(DlqSource::Files {
            root: text.to_string(),
            prefix: None,
        })
    }

    /// The dead-letter queue (`review` = false) or review queue of a pipeline.
    pub fn of_pipeline(plan: &Plan, review: bool) -> Self {
        let planned = if review { &plan.review } else { &plan.dlq };
        match planned {
            PlannedDeadLetter::Files { path, .. } => DlqSource::Files {
                root: path.clone(),
                prefix: None,
            },
            PlannedDeadLetter::Topic(t) => DlqSource::Topic {
                connection: t.connection.clone(),
                topic: t.topic.clone(),
            },
        }
    }

    fn open(root: &str, storage: &Storage) -> Result<Location, DlqError> {
        Location::open(root, storage).map_err(|e| DlqError::Open(root.to_string(), e))
    }
}

impl fmt::Display for DlqSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DlqSource::Files { root, prefix } => match prefix {
                Some(p) => write!(f, "{root}/{p}"),
                None => write!(f, "{root}"),
            },
            DlqSource::Topic { connection, topic } => {
                write!(f, "kafka://{}/{topic}", connection.brokers)
            }
        }
    }
}

/// Counts the dead letters of `source` by stage and rule, then by reason
/// (see [`Tally::report`]); on a topic, only those past `replay_group`'s
/// checkpoint when one is given (what a replay would read), one per
/// rejected record. Letters are read one at a time: memory holds the
/// counts, not the queue.
pub async fn inspect(
    source: &DlqSource,
    storage: &Storage,
    replay_group: Option<&str>,
    (reasons, examples): (usize, usize),
) -> Result<Tally, DlqError> {
    let (source, storage) = (source.clone(), storage.clone());
    let group = replay_group.map(str::to_string);
    blocking(move || {
        let mut tally = Tally::new(reasons, examples);
        match &source {
            DlqSource::Files { root, prefix } => {
                let location = DlqSource::open(root, &storage)?;
                for file in queued_files(&location, prefix.as_deref(), &|_| Ok(()))?.queued {
                    for letter in read::letters(&location, &file)? {
                        tally.add(&letter?.1);
                    }
                }
            }
            DlqSource::Topic { connection, topic } => {
                let from = checkpoint(connection, topic, group.as_deref())?;
                let mut letters = TopicLetters::open(connection, topic, &from, TOPIC_TIMEOUT)?;
                let mut seen = std::collections::HashSet::new();
                let mut repeated = 0;
                while let Some(letter) = letters.next_letter()? {
                    match dead_letters::origin_key(&letter.letter) {
                        Some(key) if !seen.insert(key) => repeated += 1,
                        _ => tally.add(&letter.letter),
                    }
                }
                log_repeated(topic, repeated);
            }
        }
        Ok(tally)
    })
    .await
}

/// Runs blocking reads of a queue on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, DlqError> + Send + 'static,
) -> Result<T, DlqError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| DlqError::Unsupported(format!("reading the queue failed: {e}")))?
}

/// The dead-letter files of a queue.
struct QueuedFiles {
    /// What the queue holds.
    queued: Vec<LetterFile>,
    /// Written by a replay of a file still queued, which stopped before
    /// moving that file out (see [`read::unfinished_replays`]).
    superseded: Vec<LetterFile>,
}

/// Blocking.
fn queued_files(
    location: &Location,
    prefix: Option<&str>,
    check: read::Check<'_>,
) -> Result<QueuedFiles, DlqError> {
    let (queued, superseded) = read::unfinished_replays(read::list_files(location, prefix, check)?);
    for file in &superseded {
        tracing::info!(file = %file.display, "written by a replay that did not finish: its input is still queued and replays again; not counted");
    }
    Ok(QueuedFiles { queued, superseded })
}

fn log_repeated(topic: &str, repeated: usize) {
    if repeated > 0 {
        tracing::info!(%topic, repeated, "dead letters repeated after a crash counted once");
    }
}

const TOPIC_TIMEOUT: Duration = Duration::from_secs(60);

/// Where `group`'s checkpoint says a read of `topic` starts (from the
/// low-water marks without a group). Blocking.
fn checkpoint(
    connection: &KafkaConnection,
    topic: &str,
    group: Option<&str>,
) -> Result<BTreeMap<i32, i64>, DlqError> {
    Ok(match group {
        Some(group) => dead_letters::checkpoint(connection, group, topic, TOPIC_TIMEOUT)?,
        None => BTreeMap::new(),
    })
}

/// Dead letters counted by stage and rule, then by reason, with examples.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// What was read.
    pub source: String,
    /// Records read.
    pub records: usize,
    /// Groups, largest first.
    pub groups: Vec<Group>,
}

/// The records one rule of one stage rejected.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Group {
    /// The stage.
    pub stage: String,
    /// The rule.
    pub rule: String,
    /// Records.
    pub records: usize,
    /// The most frequent reasons, most frequent first.
    pub reasons: Vec<Reason>,
    /// Distinct reasons not listed.
    pub other_reasons: usize,
}

/// One reason and a few records that have it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reason {
    /// The reason text.
    pub reason: String,
    /// Records with it.
    pub records: usize,
    /// Up to `examples` records: (source, original bytes shortened).
    pub examples: Vec<(String, String)>,
}

/// Counts letters as they are read, into a [`Report`]: per (stage, rule),
/// per reason, a count and the first few examples.
#[derive(Debug)]
pub struct Tally {
    reasons: usize,
    examples: usize,
    records: usize,
    by_rule: BTreeMap<(String, String), BTreeMap<String, Reason>>,
}

impl Tally {
    /// A report listing up to `reasons` reasons per group and `examples` records per reason.
    pub fn new(reasons: usize, examples: usize) -> Self {
        Tally {
            reasons,
            examples,
            records: 0,
            by_rule: BTreeMap::new(),
        }
    }

    /// Counts one letter.
    pub fn add(&mut self, letter: &DeadLetter) {
        self.records += 1;
        let by_reason = self
            .by_rule
            .entry((letter.stage.clone(), letter.rule.clone()))
            .or_default();
        let reason = by_reason
            .entry(letter.reason.clone())
            .or_insert_with(|| Reason {
                reason: letter.reason.clone(),
                records: 0,
                examples: Vec::new(),
            });
        reason.records += 1;
        if reason.examples.len() < self.examples {
            reason
                .examples
                .push((letter.source.clone(), shorten(&original_text(letter), 160)));
        }
    }

    /// The report, its groups largest first.
    pub fn report(self, source: String) -> Report {
        let reasons = self.reasons;
        let mut groups: Vec<Group> = self
            .by_rule
            .into_iter()
            .map(|((stage, rule), by_reason)| {
                let mut listed: Vec<Reason> = by_reason.into_values().collect();
                listed.sort_by(|a, b| b.records.cmp(&a.records).then(a.reason.cmp(&b.reason)));
                let records = listed.iter().map(|r| r.records).sum();
                let other_reasons = listed.len().saturating_sub(reasons);
                listed.truncate(reasons);
                Group {
                    stage,
                    rule,
                    records,
                    reasons: listed,
                    other_reasons,
                }
            })
            .collect();
        groups.sort_by_key(|g| std::cmp::Reverse(g.records));
        Report {
            source,
            records: self.records,
            groups,
        }
    }
}

fn original_text(letter: &DeadLetter) -> String {
    match (&letter.original, &letter.original_base64) {
        (Some(text), _) => text.clone(),
        (None, Some(b64)) => format!("(not UTF-8, base64) {b64}"),
        (None, None) => String::new(),
    }
}

fn shorten(text: &str, max_chars: usize) -> String {
    let mut out: String = text.chars().take(max_chars).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {} records", self.source, self.records)?;
        for g in &self.groups {
            let share = 100.0 * g.records as f64 / self.records.max(1) as f64;
            writeln!(
                f,
                "\n{}/{}: {} records ({share:.1} %)",
                g.stage, g.rule, g.records
            )?;
            for r in &g.reasons {
                writeln!(f, "  {} × {}", r.records, r.reason)?;
                for (source, original) in &r.examples {
                    writeln!(f, "      {source}  {original}")?;
                }
            }
            if g.other_reasons > 0 {
                writeln!(f, "  … and {} other reasons", g.other_reasons)?;
            }
        }
        Ok(())
    }
}

/// What a replay did.
#[derive(Debug)]
pub struct Replayed {
    /// The run over the dead letters.
    pub summary: Summary,
    /// What became of the queue.
    pub settled: Settled,
}

/// What became of the replayed part of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// These files moved to `_tributary/replayed/`.
    Archived(Vec<String>),
    /// The replay group committed these offsets (partition → next offset).
    Checkpointed {
        /// The replay group.
        group: String,
        /// The topic.
        topic: String,
        /// Partition → the offset the next replay starts at.
        next: BTreeMap<i32, i64>,
    },
    /// The replay did not finish cleanly: the queue is as it was.
    Kept,
}

impl fmt::Display for Settled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Settled::Archived(files) => write!(
                f,
                "{} dead-letter files replayed and moved to _tributary/replayed/",
                files.len()
            ),
            Settled::Checkpointed { group, topic, next } => {
                let at: Vec<String> = next.iter().map(|(p, o)| format!("{p}@{o}")).collect();
                write!(
                    f,
                    "{topic} replayed; group {group} will start the next replay at {}",
                    if at.is_empty() {
                        "the same offsets (nothing was new)".to_string()
                    } else {
                        at.join(", ")
                    }
                )
            }
            Settled::Kept => write!(
                f,
                "the replay did not finish cleanly: the queue is kept as it was (running it again rewrites the same output)"
            ),
        }
    }
}

/// The consumer group whose offsets on a dead-letter topic say where the
/// next replay through `plan` starts.
pub fn replay_group(plan: &Plan) -> String {
    format!("tributary-replay-{}", plan.name)
}

/// Replays the dead letters of `source` through `pipeline`.
pub async fn replay(mut pipeline: Pipeline, source: &DlqSource) -> Result<Replayed, DlqError> {
    let kafka_meta = matches!(pipeline.plan.source, PlannedSource::Kafka(_));
    let raw_outputs = pipeline.plan.outputs.iter().filter(|o| o.is_raw()).count();
    if raw_outputs > 0 {
        tracing::info!(
            outputs = raw_outputs,
            "raw-zone outputs are left out of a replay: they archived the originals already"
        );
        pipeline.plan.outputs.retain(|o| !o.is_raw());
    }
    match source {
        DlqSource::Files { root, prefix } => {
            let location = DlqSource::open(root, &pipeline.plan.storage)?;
            let listed = location.clone();
            let prefix = prefix.clone();
            let QueuedFiles { queued, superseded } =
                blocking(move || queued_files(&listed, prefix.as_deref(), check(kafka_meta)))
                    .await?;
            // Out of the queue before the run: this replay writes them anew
            // (under the same names when as many records fail again).
            for file in &superseded {
                read::archive(&location, file).await?;
            }
            let replay = ReplaySource::from_files(&location, &queued, kafka_meta);
            tracing::info!(source = %source, files = queued.len(), "replaying dead letters");
            pipeline.plan.source = PlannedSource::Bounded(Box::new(replay));
            let summary =
                runtime::run(pipeline, StopHandle::default(), RunOptions::default()).await?;
            let settled = if finished_cleanly(&summary) {
                let mut archived = Vec::new();
                for file in &queued {
                    tributary_connectors::fault::crash_point("archive");
                    read::archive(&location, file).await?;
                    archived.push(file.display.clone());
                }
                Settled::Archived(archived)
            } else {
                Settled::Kept
            };
            Ok(Replayed { summary, settled })
        }
        DlqSource::Topic { connection, topic } => {
            let group = replay_group(&pipeline.plan);
            let (scanned, name, at) = (connection.clone(), topic.clone(), group.clone());
            let scan = blocking(move || {
                let from = checkpoint(&scanned, &name, Some(&at))?;
                Ok(scan_topic(
                    &scanned,
                    &name,
                    &from,
                    check(kafka_meta),
                    TOPIC_TIMEOUT,
                )?)
            })
            .await?;
            log_repeated(topic, scan.repeated);
            // The checkpoint covers every message read, repeats included;
            // each record is replayed once.
            let next = scan.next_offsets();
            let replay = ReplaySource::from_topic(connection, topic, &scan, kafka_meta);
            tracing::info!(
                source = %source,
                %group,
                records = scan.letters - scan.repeated,
                "replaying dead letters"
            );
            pipeline.plan.source = PlannedSource::Bounded(Box::new(replay));
            let summary =
                runtime::run(pipeline, StopHandle::default(), RunOptions::default()).await?;
            let settled = if finished_cleanly(&summary) {
                let (connection, topic_name, group_name, offsets) = (
                    connection.clone(),
                    topic.clone(),
                    group.clone(),
                    next.clone(),
                );
                blocking(move || {
                    Ok(dead_letters::save_checkpoint(
                        &connection,
                        &group_name,
                        &topic_name,
                        &offsets,
                    )?)
                })
                .await?;
                Settled::Checkpointed {
                    group,
                    topic: topic.clone(),
                    next,
                }
            } else {
                Settled::Kept
            };
            Ok(Replayed { summary, settled })
        }
    }
}

/// What a replay requires of every letter before it starts: through a
/// pipeline that reads Kafka, an origin in Kafka.
fn check(kafka_meta: bool) -> read::Check<'static> {
    if kafka_meta {
        &|letter| kafka_origin(letter).map(|_| ())
    } else {
        &|_| Ok(())
    }
}

fn finished_cleanly(summary: &Summary) -> bool {
    let finished = !summary.interrupted && summary.partitions.iter().all(|p| p.started);
    let clean = finished && summary.failures().is_empty() && summary.totals.balanced();
    if !clean {
        tracing::warn!(
            "the replay did not finish cleanly; the dead letters stay in the queue (running it again rewrites the same output)"
        );
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(stage: &str, rule: &str, reason: &str, line: u64) -> DeadLetter {
        DeadLetter {
            time: "t".into(),
            pipeline: "p".into(),
            stage: stage.into(),
            rule: rule.into(),
            reason: reason.into(),
            source: format!("in.ndjson:{line}"),
            position: line,
            byte_offset: None,
            original: Some("x".repeat(200)),
            original_base64: None,
            kafka: None,
        }
    }

    #[test]
    fn groups_by_rule_then_reason_largest_first_with_examples() {
        let letters = vec![
            letter("validate", "required", "/: required: customer_id", 1),
            letter("validate", "type", "/total: type: \"x\"", 2),
            letter("validate", "required", "/: required: customer_id", 3),
            letter("validate", "required", "/: required: order_id", 4),
            letter("enrich", "customers:miss", "no row", 5),
        ];
        let mut tally = Tally::new(1, 1);
        for letter in &letters {
            tally.add(letter);
        }
        let report = tally.report("dlq".into());
        assert_eq!(report.records, 5);
        let first = &report.groups[0];
        assert_eq!((first.rule.as_str(), first.records), ("required", 3));
        assert_eq!(first.reasons.len(), 1);
        assert_eq!(first.reasons[0].records, 2);
        assert_eq!(first.other_reasons, 1);
        assert_eq!(first.reasons[0].examples.len(), 1);
        assert_eq!(first.reasons[0].examples[0].0, "in.ndjson:1");
        assert!(first.reasons[0].examples[0].1.ends_with('…'));
        let text = report.to_string();
        assert!(
            text.contains("validate/required: 3 records (60.0 %)"),
            "{text}"
        );
    }

    #[test]
    fn sources_parse_as_topics_folders_or_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.ndjson");
        std::fs::write(&file, "").unwrap();
        assert_eq!(
            DlqSource::parse(file.to_str().unwrap()).unwrap(),
            DlqSource::Files {
                root: dir.path().display().to_string(),
                prefix: Some("a.ndjson".into())
            }
        );
        assert!(matches!(
            DlqSource::parse("kafka://b1:9092,b2:9092/orders.dlq").unwrap(),
            DlqSource::Topic { topic, .. } if topic == "orders.dlq"
        ));
        assert!(DlqSource::parse("kafka://nohost").is_err());
        assert!(matches!(
            DlqSource::parse("s3://lake/dlq").unwrap(),
            DlqSource::Files { prefix: None, .. }
        ));
    }
}
