//! Where enrich reference tables come from.
//!
//! Two ways to look up reference data:
//!
//! - A [`LookupSource`] produces a whole snapshot of a reference table as one
//!   Arrow batch; the engine loads it before the pipeline starts (so `check`
//!   proves it readable) and again on the refresh interval, handing each
//!   snapshot to the enrich stage. Files (CSV with a header, Parquet,
//!   NDJSON) and PostgreSQL tables or queries ([`postgres`]) are snapshots.
//! - A [`KeyedSource`] answers for given keys only: a large PostgreSQL table
//!   looked up on demand, or Redis ([`redis`]). [`cache::CachedLookup`] keeps
//!   recent answers (LRU with a time to live) in front of it, and the engine
//!   asks it for the distinct keys of each batch before the enrich stage
//!   runs.

pub mod cache;
pub mod postgres;
pub mod redis;

use std::fs::File;
use std::io::{BufReader, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use futures::future::BoxFuture;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// A reference table that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The file cannot be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The content does not parse.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The format cannot be told from the file name.
    #[error("{0}: cannot tell the format from the extension; set format to csv, parquet or ndjson")]
    UnknownFormat(String),
    /// The database or cache did not answer (worth retrying).
    #[error("{source_name}: {message}")]
    Unavailable {
        /// What was asked.
        source_name: String,
        /// Why.
        message: String,
    },
    /// The database or cache answered with something that cannot be used.
    #[error("{source_name}: {message}")]
    Invalid {
        /// What was asked.
        source_name: String,
        /// Why.
        message: String,
    },
}

impl LookupError {
    /// Whether asking again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LookupError::Unavailable { .. } | LookupError::Io { .. }
        )
    }
}

/// Formats of lookup files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Comma-separated with a header row; types inferred.
    Csv,
    /// Parquet.
    Parquet,
    /// One JSON object per line; types inferred.
    Ndjson,
}

impl FileFormat {
    /// The format implied by a file's extension.
    pub fn from_path(path: &Path) -> Option<FileFormat> {
        match path.extension()?.to_str()? {
            "csv" => Some(FileFormat::Csv),
            "parquet" => Some(FileFormat::Parquet),
            "ndjson" | "jsonl" | "json" => Some(FileFormat::Ndjson),
            _ => None,
        }
    }
}

/// Produces snapshots of a reference table.
pub trait LookupSource: Send + Sync {
    /// What it reads, for messages.
    fn describe(&self) -> String;
    /// Reads a full snapshot.
    fn load(&self) -> BoxFuture<'_, Result<RecordBatch, LookupError>>;
}

/// Answers lookups for given keys (rendered as text), without a snapshot.
pub trait KeyedSource: Send + Sync {
    /// What it reads, for messages.
    fn describe(&self) -> String;
    /// The rows it returns, key column included.
    fn schema(&self) -> SchemaRef;
    /// The key column's name.
    fn key(&self) -> &str;
    /// The rows for those of `keys` that exist (at most one per key, in any order).
    fn fetch<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<Fetched, LookupError>>;
}

/// What a [`KeyedSource`] found for some keys.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// One row per key found, in the source's schema.
    pub rows: RecordBatch,
    /// Keys whose entry exists but cannot be read, with why.
    pub failed: Vec<(String, String)>,
}

/// A reference table in a local file.
#[derive(Debug, Clone)]
pub struct FileLookup {
    path: PathBuf,
    format: FileFormat,
}

impl FileLookup {
    /// A lookup over `path`; the format defaults to the extension's.
    pub fn new(path: PathBuf, format: Option<FileFormat>) -> Result<Self, LookupError> {
        let format = match format.or_else(|| FileFormat::from_path(&path)) {
            Some(f) => f,
            None => return Err(LookupError::UnknownFormat(path.display().to_string())),
        };
        Ok(FileLookup { path, format })
    }

    /// Reads the file now, on this thread.
    pub fn load_blocking(&self) -> Result<RecordBatch, LookupError> {
        let path = self.path.display().to_string();
        let io = |source| LookupError::Io {
            path: path.clone(),
            source,
        };
        let format_error = |e: &dyn std::fmt::Display| LookupError::Format {
            path: path.clone(),
            message: e.to_string(),
        };
        let mut file = File::open(&self.path).map_err(io)?;
        let (schema, batches): (SchemaRef, Vec<RecordBatch>) = match self.format {
            FileFormat::Parquet => {
                let builder =
                    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| format_error(&e))?;
                let schema = builder.schema().clone();
                let reader = builder.build().map_err(|e| format_error(&e))?;
                let batches = reader
                    .collect::<Result<_, _>>()
                    .map_err(|e| format_error(&e))?;
                (schema, batches)
            }
            FileFormat::Csv => {
                let format = arrow::csv::reader::Format::default().with_header(true);
                let (schema, _) = format
                    .infer_schema(BufReader::new(&mut file), Some(10_000))
                    .map_err(|e| format_error(&e))?;
                file.rewind().map_err(io)?;
                let schema = text_where_untyped(schema);
                let reader = arrow::csv::ReaderBuilder::new(schema.clone())
                    .with_format(format)
                    .build(BufReader::new(file))
                    .map_err(|e| format_error(&e))?;
                (
                    schema,
                    reader
                        .collect::<Result<_, _>>()
                        .map_err(|e| format_error(&e))?,
                )
            }
            FileFormat::Ndjson => {
                let (schema, _) =
                    arrow::json::reader::infer_json_schema(BufReader::new(&mut file), Some(10_000))
                        .map_err(|e| format_error(&e))?;
                file.rewind().map_err(io)?;
                let schema = text_where_untyped(schema);
                let reader = arrow::json::ReaderBuilder::new(schema.clone())
                    .build(BufReader::new(file))
                    .map_err(|e| format_error(&e))?;
                (
                    schema,
                    reader
                        .collect::<Result<_, _>>()
                        .map_err(|e| format_error(&e))?,
                )
            }
        };
        concat_batches(&schema, &batches).map_err(|e| format_error(&e))
    }
}

/// An inferred schema with text for the columns whose type nothing showed
/// (no rows, or only nulls): a Null-typed key or value cannot be joined.
fn text_where_untyped(schema: arrow::datatypes::Schema) -> SchemaRef {
    use arrow::datatypes::{DataType, Field};
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Null => f.as_ref().clone().with_data_type(DataType::Utf8),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(arrow::datatypes::Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    ))
}

impl LookupSource for FileLookup {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn load(&self) -> BoxFuture<'_, Result<RecordBatch, LookupError>> {
        let this = self.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || this.load_blocking()).await {
                Ok(result) => result,
                Err(join) => Err(LookupError::Format {
                    path: self.describe(),
                    message: format!("loader task failed: {join}"),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_ndjson_load_with_inferred_types() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("c.csv");
        std::fs::write(
            &csv,
            "customer_id,segment,signup_date\nC000001,gold,2024-01-05\nC000002,silver,2023-02-01\n",
        )
        .unwrap();
        let batch = FileLookup::new(csv, None).unwrap().load_blocking().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(
            batch
                .schema()
                .field_with_name("signup_date")
                .unwrap()
                .data_type(),
            &arrow::datatypes::DataType::Date32
        );
        let nd = dir.path().join("c.ndjson");
        std::fs::write(&nd, "{\"k\":\"a\",\"v\":1}\n{\"k\":\"b\",\"v\":2}\n").unwrap();
        let batch = FileLookup::new(nd, None).unwrap().load_blocking().unwrap();
        assert_eq!(batch.num_rows(), 2);
    }

    #[test]
    fn a_table_with_no_rows_loads_with_text_columns() {
        // Nothing to infer types from: every column is text, so the key
        // still joins (a Null-typed key failed every batch of the stage).
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("empty.csv");
        std::fs::write(&csv, "customer_id,segment\n").unwrap();
        let batch = FileLookup::new(csv, None).unwrap().load_blocking().unwrap();
        assert_eq!(batch.num_rows(), 0);
        for field in batch.schema().fields() {
            assert_eq!(
                field.data_type(),
                &arrow::datatypes::DataType::Utf8,
                "{field}"
            );
        }
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = FileLookup::new("/no/such/file.csv".into(), None)
            .unwrap()
            .load_blocking()
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no/such/file.csv"), "{err}");
    }
}
