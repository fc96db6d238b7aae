//! Why a run or one of its partitions stops early.

use tributary_connectors::dead_letter::DeadLetterError;
use tributary_connectors::kafka::KafkaError;
use tributary_connectors::kafka::producer::JsonTopicError;
use tributary_connectors::parquet::ParquetSinkError;
use tributary_connectors::source::SourceError;
use tributary_stages::StageError;

/// Failures that stop a run before or outside any partition.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An output location cannot be opened.
    #[error("opening {what} at {path}: {source}")]
    Open {
        /// Which destination.
        what: String,
        /// Its path.
        path: String,
        /// The cause.
        source: tributary_connectors::store::StoreError,
    },
    /// The source cannot list its partitions.
    #[error(transparent)]
    Source(#[from] tributary_connectors::source::SourceError),
    /// A Kafka client cannot be created or the consumer failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// A dry run could not process a batch.
    #[error("dry run: {0}")]
    DryRun(PartitionError),
    /// The request does not apply to this pipeline.
    #[error("{0}")]
    Unsupported(String),
}

/// Why a partition stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// Reading failed.
    #[error("source: {0}")]
    Source(#[from] SourceError),
    /// A stage failed on a whole batch (not a record's fault).
    #[error("stage {stage}: {source}")]
    Stage {
        /// The stage kind.
        stage: &'static str,
        /// The failure.
        source: StageError,
    },
    /// Writing Parquet failed.
    #[error("output: {0}")]
    Output(#[from] ParquetSinkError),
    /// Writing a dead letter file failed.
    #[error("dead letters: {0}")]
    DeadLetter(#[from] DeadLetterError),
    /// Producing to Kafka failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Producing records to a Kafka output failed.
    #[error("kafka output: {0}")]
    TopicOutput(#[from] JsonTopicError),
    /// Adding Kafka metadata columns failed.
    #[error("kafka metadata columns: {0}")]
    Metadata(arrow::error::ArrowError),
    /// The commit protocol failed (or this instance was fenced off).
    #[error(transparent)]
    Commit(#[from] tributary_connectors::commit_log::CommitLogError),
    /// A lookup source answered with something unusable (not an outage: those follow `on_error`).
    #[error("lookup: {0}")]
    Lookup(String),
}
