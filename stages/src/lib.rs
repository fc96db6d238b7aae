//! Tributary's pipeline stages.
//!
//! A stage is a pure function from a record batch to the batch that goes on
//! plus the rows it turned away ([`StageOutput`]). Stages do no I/O: the
//! engine feeds them, routes their rejects and owns offsets and retries.
//!
//! - [`validate`] decodes raw JSON payloads into a typed batch, enforcing a JSON Schema.
//! - [`transform`] reshapes a batch with SQL or a declarative mapping.
//! - [`enrich`] joins an in-memory reference table and derives fields.

pub mod enrich;
mod expr;
pub mod transform;
pub mod validate;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

pub use expr::SqlError;

/// Where a rejected record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Definitely bad: the dead-letter queue.
    Dlq,
    /// Ambiguous: the review queue, for a person to look at.
    Review,
}

impl Route {
    /// `dlq` or `review`.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Dlq => "dlq",
            Route::Review => "review",
        }
    }
}

/// A record a stage turned away.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// Row index in the stage's *input* batch.
    pub row: usize,
    /// Where it goes.
    pub route: Route,
    /// The rule or check that fired (e.g. a JSON Schema keyword or a rule name).
    pub rule: String,
    /// A human-readable reason naming the field and value.
    pub reason: String,
}

/// What a stage returns: the surviving rows, in input order, and the rejected ones.
#[derive(Debug)]
pub struct StageOutput {
    /// Input rows minus the rejected ones, in order, in the stage's output schema.
    pub batch: RecordBatch,
    /// Rejected rows, each referring to the input batch, sorted by row.
    pub rejects: Vec<Reject>,
}

/// A failure of the stage itself (not of a record): the batch cannot be processed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Arrow refused to build or reshape a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// DataFusion failed to evaluate an expression for the whole batch and for a single row.
    #[error("expression: {0}")]
    Expr(#[from] datafusion::error::DataFusionError),
    /// The input batch does not have the shape the stage was built for.
    #[error("input does not match the stage: {0}")]
    Input(String),
}

/// A stage that maps a typed batch to a typed batch.
pub trait Stage: Send + Sync {
    /// The schema of the batches this stage emits (known before any data flows).
    fn output_schema(&self) -> SchemaRef;
    /// Processes one batch.
    fn apply(&self, batch: &RecordBatch) -> Result<StageOutput, StageError>;
}
