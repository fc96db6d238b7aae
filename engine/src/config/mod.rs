//! The pipeline file: what data engineers write, as typed Rust.
//!
//! Loading is strict: unknown keys, wrong types and malformed values are
//! refused with `file:line:column` and the key path. String values may
//! contain `${VAR}` or `${VAR:-default}`, replaced from the environment when
//! the file is read (after YAML parsing, so a value can never change the
//! file's structure); `$${` writes a literal `${`.

/// A type read through `TryFrom` its written form has the written form's schema.
macro_rules! written_as {
    ($($read:ty => $written:ty),* $(,)?) => {$(
        impl JsonSchema for $read {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                <$written>::schema_name()
            }

            fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                <$written>::json_schema(generator)
            }
        }
    )*};
}

mod lookups;
mod outputs;
mod source;
mod stages;
mod storage;
mod values;
mod warehouse;

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

pub use lookups::{
    CacheConfig, InvalidateConfig, LookupConfig, LookupFormat, LookupMode, LookupTableConfig,
    OneOrMany, PostgresLookupConfig, PostgresReadConfig, RedisFieldType, RedisLookupConfig,
    RedisValueConfig,
};
pub use outputs::{
    DeadLetterConfig, KafkaOutputConfig, KafkaTopicConfig, OutputConfig, ParquetOutputConfig,
    RawOutputConfig, RollConfig,
};
pub use source::{BatchConfig, FileSourceConfig, KafkaSourceConfig, SourceConfig, StartConfig};
pub use stages::{
    DeriveConfig, EnrichConfig, MappingConfig, OnMissConfig, RuleConfig, SeverityConfig,
    StageConfig, TransformConfig, ValidateConfig,
};
pub use storage::{RetryConfig, S3Config, StorageConfig, WhenExhausted};
pub use values::{ByteSize, DurationText, Located, Properties, SecretText, Text};
pub use warehouse::{AlertsConfig, ErrorRateConfig, SnowflakeOutputConfig, TimestampsConfig};

/// Where a problem in the pipeline file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
}

/// A pipeline file that cannot be used, with where and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}{}: {}{message}", file.display(), position(*line, *column), key_prefix(key_path))]
pub struct ConfigError {
    /// The pipeline file.
    pub file: PathBuf,
    /// 1-based line (0 when unknown).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
    /// Dotted key path, e.g. `stages[1].transform.sql`.
    pub key_path: String,
    /// What is wrong.
    pub message: String,
}

/// `:line:column`, or nothing when the position is unknown.
fn position(line: u64, column: u64) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}:{column}")
    }
}

fn key_prefix(path: &str) -> String {
    if path.is_empty() || path == "." {
        String::new()
    } else {
        format!("{path}: ")
    }
}

impl ConfigError {
    /// An error at `span` (if known) about the value at `key_path`.
    pub fn at(
        file: &Path,
        span: Option<&Span>,
        key_path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = span.map_or((0, 0), |s| (s.line, s.column));
        ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            key_path: key_path.into(),
            message: message.into(),
        }
    }
}

/// A whole pipeline.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// The pipeline's name, carried into dead letters and logs.
    pub name: String,
    /// Where records come from.
    pub source: SourceConfig,
    /// How records are grouped into batches.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Stages, applied in order.
    pub stages: Vec<Located<StageConfig>>,
    /// Where valid records go.
    pub outputs: Vec<Located<OutputConfig>>,
    /// Where invalid records go.
    pub dlq: DeadLetterConfig,
    /// Where ambiguous records go.
    pub review: DeadLetterConfig,
    /// Partitions processed at once (default: the number of cores).
    #[serde(default)]
    pub workers: Option<usize>,
    /// How remote stores (S3) are reached.
    #[serde(default)]
    pub storage: StorageConfig,
    /// How transient failures are retried.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Alerts.
    #[serde(default)]
    pub alerts: AlertsConfig,
}

/// The one choice given, or why there is not exactly one; `names` lists them for the message.
fn exactly_one<T, const N: usize>(names: &str, given: [Option<T>; N]) -> Result<T, String> {
    let given: Vec<T> = given.into_iter().flatten().collect();
    let count = given.len();
    <[T; 1]>::try_from(given)
        .map(|[one]| one)
        .map_err(|_| match count {
            0 => format!("give exactly one of {names} (there is none)"),
            _ => format!("give exactly one of {names}, not {count}"),
        })
}

/// The JSON Schema of "exactly one of these keys" (the others stay optional).
fn one_of(keys: &[&str]) -> serde_json::Value {
    keys.iter()
        .map(|key| serde_json::json!({ "required": [key] }))
        .collect()
}

/// A parsed pipeline file with where it was read from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The pipeline.
    pub pipeline: PipelineFile,
    /// The file it came from.
    pub file: PathBuf,
    /// Its directory, against which relative paths resolve.
    pub base_dir: PathBuf,
}

impl Loaded {
    /// `path` resolved against the pipeline file's directory (URLs and absolute paths unchanged).
    pub fn resolve(&self, path: &str) -> String {
        if path.contains("://") || Path::new(path).is_absolute() {
            return path.to_string();
        }
        // Lexically drop `.` and `dir/..` so paths in messages read naturally.
        let mut parts: Vec<std::path::Component> = Vec::new();
        let full = self.base_dir.join(path);
        for component in full.components() {
            match component {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir
                    if matches!(parts.last(), Some(std::path::Component::Normal(_))) =>
                {
                    parts.pop();
                }
                c => parts.push(c),
            }
        }
        let joined: PathBuf = parts.iter().collect();
        if joined.as_os_str().is_empty() {
            ".".into()
        } else {
            joined.display().to_string()
        }
    }
}

/// The JSON Schema (draft 2020-12) of pipeline files, generated from the
/// types above; `schemas/pipeline.schema.json` is this, pretty-printed
/// (`tributary schema` prints it).
pub fn json_schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<PipelineFile>();
    schema.insert(
        "$id".into(),
        "https://tributary.dev/schemas/pipeline.schema.json".into(),
    );
    schema.insert("title".into(), "Tributary pipeline file".into());
    schema.insert(
        "description".into(),
        "A Tributary pipeline: source, batching, stages, outputs, DLQ and review destinations. \
         Text values may hold `${VAR}` or `${VAR:-default}`, replaced from the environment. \
         Generated from the engine's types by `tributary schema`; see docs/pipeline.md."
            .into(),
    );
    schema.to_value()
}

/// Reads and parses a pipeline file.
pub fn load(file: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        ConfigError::at(
            file,
            None,
            "",
            format!("cannot read the pipeline file: {e}"),
        )
    })?;
    parse(&text, file)
}

/// Parses pipeline text; `file` names it in errors and anchors relative paths.
pub fn parse(text: &str, file: &Path) -> Result<Loaded, ConfigError> {
    let mut key_path = None;
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, PipelineFile>(de).map_err(|e| {
            key_path = Some(e.path().to_string());
            e.into_inner()
        })
    });
    let pipeline = result.map_err(|e| from_yaml(file, key_path, &e))?;
    let base_dir = file
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Ok(Loaded {
        pipeline,
        file: file.to_path_buf(),
        base_dir,
    })
}

fn from_yaml(file: &Path, key_path: Option<String>, error: &serde_saphyr::Error) -> ConfigError {
    let (line, column) = error.location().map_or((0, 0), |l| (l.line(), l.column()));
    let message = plain_message(error);
    ConfigError {
        file: file.to_path_buf(),
        line,
        column,
        key_path: key_path.as_deref().map(file_key_path).unwrap_or_default(),
        message,
    }
}

/// serde-saphyr renders errors with a source snippet; keep the first line, without its own location suffix.
fn plain_message(error: &serde_saphyr::Error) -> String {
    let rendered = error.to_string();
    let first = rendered.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let first = match first.find(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    // A custom error (a bad duration, a second choice) starts with its
    // location, which the error already gives as file:line:column.
    without_location(first).to_string()
}

/// `text` without a leading `line N column M: `.
fn without_location(text: &str) -> &str {
    let rest = text.strip_prefix("line ").and_then(|r| {
        let (line, r) = r.split_once(" column ")?;
        let (column, r) = r.split_once(": ")?;
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        (digits(line) && digits(column)).then_some(r)
    });
    rest.unwrap_or(text)
}

/// A key path as the file reads (`stages[1].transform`), without the
/// `value` step that location-keeping wrappers add.
fn file_key_path(path: &str) -> String {
    let path = path.replace("].value.", "].");
    match path.strip_suffix("].value") {
        Some(indexed) => format!("{indexed}]"),
        None => path,
    }
}

#[cfg(test)]
mod tests;
