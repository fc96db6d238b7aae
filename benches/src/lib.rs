//! Shared pieces of Tributary's benchmarks: the workloads as in-memory
//! batches of raw lines, and the pipeline plans that process them, built
//! exactly as `tributary run` builds them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use arrow::array::BinaryArray;
use tributary_engine::plan::Pipeline;
use tributary_engine::workload::{self, Workload, WorkloadSpec};
use tributary_engine::{config, plan};

/// Records per batch, as in the shipped pipelines (`batch.max_records`).
pub const BATCH_RECORDS: usize = 8192;

/// The repository root (for the shipped pipelines and schemas).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The pipeline file that processes `workload`.
pub fn pipeline_file(workload: Workload) -> PathBuf {
    match workload {
        Workload::Orders => repo_root().join("pipelines/orders.yaml"),
        Workload::Sessions => repo_root().join("benches/pipelines/sessions.yaml"),
    }
}

/// The JSON Schema of `workload`'s events.
pub fn event_schema(workload: Workload) -> PathBuf {
    repo_root().join(match workload {
        Workload::Orders => "schemas/events/order_created.v1.schema.json",
        Workload::Sessions => "schemas/events/session_summarized.v1.schema.json",
    })
}

/// One workload in memory: batches of raw lines and their total size.
#[derive(Debug)]
pub struct Lines {
    /// Batches of [`BATCH_RECORDS`] lines each (the last may be shorter).
    pub batches: Vec<BinaryArray>,
    /// Lines in all batches.
    pub records: u64,
    /// Bytes in all lines (without newlines).
    pub bytes: u64,
}

/// `events` lines of `workload` with `invalid_ratio` of them invalid, in batches.
///
/// The one-off huge and deeply nested lines of the orders workload are left
/// out: they measure the size guards, not the steady state.
pub fn lines(workload: Workload, events: u64, invalid_ratio: f64, seed: u64) -> Lines {
    let spec = WorkloadSpec {
        workload,
        events: events.min(99),
        invalid_ratio,
        seed,
    };
    // Below 100 events the generator draws no huge or deep line; chain runs of 99.
    let mut all = Vec::with_capacity(events as usize);
    let mut run = 0;
    while (all.len() as u64) < events {
        let spec = WorkloadSpec {
            seed: seed.wrapping_add(run),
            ..spec
        };
        all.extend(workload::events(spec).map(|(line, _)| line));
        run += 1;
    }
    all.truncate(events as usize);
    let bytes = all.iter().map(|l| l.len() as u64).sum();
    let batches = all
        .chunks(BATCH_RECORDS)
        .map(|chunk| BinaryArray::from_iter_values(chunk.iter()))
        .collect();
    Lines {
        batches,
        records: events,
        bytes,
    }
}

/// `workload`'s pipeline, compiled, with its customers lookup read from a
/// table generated into `dir`.
pub fn plan(workload: Workload, dir: &Path) -> Result<Pipeline> {
    let customers = dir.join("customers.csv");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&customers)
            .with_context(|| format!("creating {}", customers.display()))?,
    );
    workload::write_customers(42, &mut file)?;
    std::io::Write::flush(&mut file)?;
    let pipeline = pipeline_file(workload);
    let text = std::fs::read_to_string(&pipeline)
        .with_context(|| format!("reading {}", pipeline.display()))?;
    let customers_default = regex::Regex::new(r"\$\{TRIBUTARY_CUSTOMERS:-[^}]*\}")?;
    let text = customers_default.replace_all(&text, customers.display().to_string().as_str());
    let loaded = config::parse(&text, &pipeline)?;
    Ok(plan::connect(plan::build(&loaded)?)?)
}
