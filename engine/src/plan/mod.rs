//! Turns a parsed pipeline file into runnable parts, in two steps.
//!
//! - [`build`] checks everything the file alone decides, without reaching any
//!   server: the source, the validate stage against its schema file, the
//!   stages' settings, where outputs, dead letters and commit logs live, the
//!   alerts and the Snowflake loads. `tributary query`, `dlq inspect` and
//!   `check --offline` stop here, so they work with every database down.
//! - [`connect`] reaches the lookups (files, PostgreSQL, Redis) and compiles
//!   the stages after validate, each against the schema the previous one
//!   emits; the result is what `run` takes. `tributary check` is both steps.
//!
//! One file per section of the pipeline file: `source`, `stages`, `lookups`,
//! `outputs`, `storage`, `alerts`, `warehouse`.

mod alerts;
mod context;
mod lookups;
mod outputs;
mod source;
mod stages;
mod storage;
mod warehouse;

use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use tributary_connectors::source::BatchLimits;
use tributary_connectors::store::Storage;
use tributary_stages::validate::Validate;

use crate::config::{ConfigError, Loaded};
use context::Cx;
use lookups::Reach;

pub use alerts::ErrorRateAlert;
pub use context::Origin;
pub use lookups::{LookupPlan, PlannedInvalidation, PlannedLookup, TablePlan};
pub use outputs::{OutputKind, PlannedDeadLetter, PlannedOutput, PlannedTopic, PlannedTopicOutput};
pub use source::{PlannedKafkaSource, PlannedSource};
pub use stages::{EnrichPlan, KeyedEnrich, PlannedStage, StagePlan, TransformPlan};
pub use warehouse::{PlannedSnowflake, SnowflakePlan};

/// What the pipeline file decides, checked, with no server reached.
pub struct Plan {
    /// Pipeline name.
    pub name: String,
    /// The pipeline file.
    pub file: PathBuf,
    /// The source.
    pub source: PlannedSource,
    /// Batch limits for readers.
    pub limits: BatchLimits,
    /// The first stage.
    pub validate: Arc<Validate>,
    /// The stages after validate, compiled by [`connect`].
    pub stages: Vec<StagePlan>,
    /// Parquet outputs.
    pub outputs: Vec<PlannedOutput>,
    /// Kafka outputs.
    pub topic_outputs: Vec<PlannedTopicOutput>,
    /// Dead-letter destination.
    pub dlq: PlannedDeadLetter,
    /// Review destination.
    pub review: PlannedDeadLetter,
    /// Partitions processed at once.
    pub workers: usize,
    /// How remote stores are reached and retried.
    pub storage: Storage,
    /// Snowflake tables loaded from Parquet outputs.
    pub snowflake: Vec<SnowflakePlan>,
    /// The error-rate alert, if configured.
    pub error_rate: Option<ErrorRateAlert>,
}

/// A plan with its lookups reached and its stages compiled: what `run` takes.
pub struct Pipeline {
    /// What the pipeline file decides.
    pub plan: Plan,
    /// The stages after validate.
    pub stages: Vec<PlannedStage>,
    /// Lookups to refresh.
    pub lookups: Vec<PlannedLookup>,
    /// Schema of the records reaching the outputs.
    pub output_schema: SchemaRef,
    /// Snowflake tables loaded from Parquet outputs, with their columns.
    pub snowflake: Vec<PlannedSnowflake>,
}

/// The records reaching the outputs, as far as they are known without
/// reaching a lookup database.
pub enum OfflineSchema {
    /// Every stage compiled: the records' schema.
    Known(SchemaRef),
    /// The stage at `stage` looks up a database: its columns, and those of
    /// the stages after it, are known once it is reached. `so_far` is the
    /// schema entering it.
    Unknown {
        /// The stage's key path, e.g. `stages[2].enrich`.
        stage: String,
        /// The schema entering that stage.
        so_far: SchemaRef,
    },
}

/// Builds the plan, refusing the pipeline at the first problem. Reads local
/// files the pipeline names (the validate schema, a Snowflake key) and
/// reaches no server.
pub fn build(loaded: &Loaded) -> Result<Plan, ConfigError> {
    let cx = Cx(&loaded.file);
    let p = &loaded.pipeline;
    let limits = source::limits(cx, loaded)?;
    let storage = storage::storage(p);
    let source = source::source(cx, loaded, limits, &storage)?;
    let (validate, stages) = stages::stages(cx, loaded, source.kafka())?;
    let destinations = outputs::outputs(cx, loaded, &source)?;
    let snowflake = destinations
        .snowflake
        .iter()
        .map(|sf| warehouse::snowflake(cx, loaded, *sf, &destinations.outputs))
        .collect::<Result<Vec<_>, _>>()?;
    let workers = match p.workers {
        Some(0) => return Err(cx.at(None, "workers", "must be at least 1")),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    Ok(Plan {
        name: p.name.clone(),
        file: loaded.file.clone(),
        source,
        limits,
        validate,
        stages,
        outputs: destinations.outputs,
        topic_outputs: destinations.topic_outputs,
        dlq: destinations.dlq,
        review: destinations.review,
        workers,
        storage,
        snowflake,
        error_rate: alerts::error_rate(cx, p)?,
    })
}

/// Reaches the plan's lookups and compiles its stages; refuses the pipeline
/// when a lookup cannot be reached or a stage does not fit its input.
pub fn connect(plan: Plan) -> Result<Pipeline, ConfigError> {
    let cx = Cx(&plan.file);
    let compiled =
        match stages::compile(cx, &plan.stages, plan.validated_schema(), Reach::Connected)? {
            Ok(compiled) => compiled,
            // Connected, every lookup is reached (or refused with its error).
            Err((stage, _)) => {
                return Err(cx.at(None, stage, "this lookup's columns are unknown"));
            }
        };
    let snowflake = plan.check_columns(&compiled.schema)?;
    Ok(Pipeline {
        plan,
        stages: compiled.stages,
        lookups: compiled.lookups,
        output_schema: compiled.schema,
        snowflake,
    })
}

impl Plan {
    /// The schema leaving validate (with Kafka's metadata columns for a Kafka source).
    pub fn validated_schema(&self) -> SchemaRef {
        stages::validated_schema(&self.validate, self.source.kafka().is_some())
    }

    /// Compiles the stages as far as local files allow (file and Redis
    /// lookups have known columns; a PostgreSQL lookup's are known once it is
    /// reached) and checks the outputs against the result.
    pub fn check_offline(&self) -> Result<OfflineSchema, ConfigError> {
        let cx = Cx(&self.file);
        match stages::compile(cx, &self.stages, self.validated_schema(), Reach::Offline)? {
            Ok(compiled) => {
                self.check_columns(&compiled.schema)?;
                Ok(OfflineSchema::Known(compiled.schema))
            }
            Err((stage, so_far)) => Ok(OfflineSchema::Unknown { stage, so_far }),
        }
    }

    /// Checks what depends on the records reaching the outputs (partition
    /// columns, Snowflake column types); returns the Snowflake loads.
    fn check_columns(&self, schema: &SchemaRef) -> Result<Vec<PlannedSnowflake>, ConfigError> {
        let cx = Cx(&self.file);
        outputs::check_columns(cx, &self.outputs, schema)?;
        let snowflake = self
            .snowflake
            .iter()
            .map(|sf| sf.with_columns(cx, &self.outputs, schema))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(snowflake)
    }
}

/// `name type, …` of a schema, for messages.
fn describe_schema(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `name, …` of a schema, for messages.
fn column_names(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
