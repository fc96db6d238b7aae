//! Helpers shared by the black-box tests: a scratch folder with generated
//! input, the real `tributary` binary, and readers for what it writes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow::array::{Array, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tributary_engine::workload::{self, Expected, Workload, WorkloadSpec};

/// The bundled orders pipeline.
pub fn orders_pipeline() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/orders.yaml")
}

/// A scratch folder with generated orders input.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub expected: Vec<Expected>,
}

impl Workspace {
    /// Generates `events` orders events (and the customers table).
    pub fn generate(events: u64, invalid_ratio: f64, seed: u64) -> Workspace {
        Self::generate_workload(Workload::Orders, events, invalid_ratio, seed)
    }

    /// Generates `events` events of `workload` into `input/orders.ndjson` (and the customers table).
    pub fn generate_workload(
        workload: Workload,
        events: u64,
        invalid_ratio: f64,
        seed: u64,
    ) -> Workspace {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("input")).unwrap();
        let mut out = BufWriter::new(File::create(dir.path().join("input/orders.ndjson")).unwrap());
        let expected = workload::write_events(
            WorkloadSpec {
                workload,
                events,
                invalid_ratio,
                seed,
            },
            &mut out,
        )
        .unwrap();
        out.flush().unwrap();
        let mut customers =
            BufWriter::new(File::create(dir.path().join("input/customers.csv")).unwrap());
        workload::write_customers(seed, &mut customers).unwrap();
        customers.flush().unwrap();
        Workspace { dir, expected }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Runs `tributary ARGS` with the orders pipeline's variables pointing here.
    pub fn tributary(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running tributary")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tributary"));
        cmd.args(args)
            .env("TRIBUTARY_INPUT", self.path("input/orders.ndjson"))
            .env("TRIBUTARY_CUSTOMERS", self.path("input/customers.csv"))
            .env("TRIBUTARY_OUT", self.path("out"));
        cmd
    }

    /// Runs the orders pipeline and returns the JSON summary.
    pub fn run_orders(&self) -> serde_json::Value {
        self.run_pipeline(&orders_pipeline())
    }

    /// Runs `pipeline` on the input here and returns the JSON summary.
    pub fn run_pipeline(&self, pipeline: &Path) -> serde_json::Value {
        let summary = self.path("summary.json");
        let out = self.tributary(&[
            "run",
            pipeline.to_str().unwrap(),
            "--summary-json",
            summary.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "run failed: {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap()
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every file readers see under `dir` (the `_tributary` state folder left out), relative to `dir`, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "_tributary") {
            continue;
        }
        if path.is_dir() {
            out.extend(
                files_under(&path)
                    .into_iter()
                    .map(|p| path.strip_prefix(dir).unwrap().join(p)),
            );
        } else {
            out.push(path.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

/// All batches of one Parquet file.
pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    reader.map(|b| b.unwrap()).collect()
}

/// A string column of every row of every Parquet file under `dir`.
pub fn parquet_strings(dir: &Path, column: &str) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .flat_map(|file| parquet_strings_in(&dir.join(file), column))
        .collect()
}

/// A string column of every row of one Parquet file.
pub fn parquet_strings_in(file: &Path, column: &str) -> Vec<String> {
    let mut out = Vec::new();
    for batch in read_parquet(file) {
        let values = batch
            .column_by_name(column)
            .unwrap_or_else(|| panic!("no column {column}"))
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        out.extend((0..values.len()).map(|i| values.value(i).to_string()));
    }
    out
}

/// Every dead letter under `dir`.
pub fn dead_letters(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for file in files_under(dir) {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        out.extend(
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
        );
    }
    out
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The most resident memory `pid` has had so far, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// A KiB figure of `/proc/<pid>/status` (0 once the process is gone).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
