//! Tributary's engine: the pipeline file, planning, the runtime, and the
//! orders workload generator. The `tributary` binary is a thin CLI over it.
//!
//! - [`config`]: the pipeline file as typed Rust, with located errors.
//! - [`counts`]: what a run counts per stage and per partition.
//! - [`dlq`]: inspecting and replaying dead-letter queues.
//! - [`plan`]: what the file decides (`build`, no server reached), then the
//!   lookups reached and the stages compiled (`connect`): `tributary check`.
//! - [`runtime`]: partitions, bounded channels, routing to the three doors.
//! - [`query`]: SQL over a pipeline's Parquet outputs.
//! - [`workload`]: the deterministic orders event generator.

pub mod config;
pub mod counts;
pub mod dlq;
pub mod plan;
pub mod query;
pub mod runtime;
pub mod telemetry;
pub mod workload;
