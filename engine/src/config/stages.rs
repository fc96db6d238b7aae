//! `stages:` validate, transform and enrich.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ByteSize, LookupConfig, Text, exactly_one, one_of};

/// A stage: a map with exactly one key naming its kind.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum StageConfig {
    /// JSON Schema validation and data-quality rules.
    Validate(ValidateConfig),
    /// SQL or mapping.
    Transform(TransformConfig),
    /// Lookup join and derived fields.
    Enrich(Box<EnrichConfig>),
}

impl StageConfig {
    /// `validate`, `transform` or `enrich`.
    pub fn kind(&self) -> &'static str {
        match self {
            StageConfig::Validate(_) => "validate",
            StageConfig::Transform(_) => "transform",
            StageConfig::Enrich(_) => "enrich",
        }
    }
}

/// The validate stage.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// JSON Schema (draft 2020-12) file, relative to the pipeline file.
    pub schema: Text,
    /// Payloads larger than this go to the DLQ unread.
    #[serde(default = "default_max_record")]
    pub max_record_bytes: ByteSize,
    /// Data-quality rules.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

fn default_max_record() -> ByteSize {
    ByteSize(1 << 20)
}

/// A data-quality rule.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Reported with each failing record.
    pub name: String,
    /// Boolean SQL over the validated columns; records where it is not true fail.
    pub sql: Text,
    /// `error` → DLQ, `warn` → review queue.
    #[serde(default)]
    pub severity: SeverityConfig,
}

/// Rule severity.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SeverityConfig {
    /// To the DLQ.
    #[default]
    Error,
    /// To the review queue.
    Warn,
}

impl From<SeverityConfig> for tributary_stages::validate::Severity {
    fn from(severity: SeverityConfig) -> Self {
        match severity {
            SeverityConfig::Error => Self::Error,
            SeverityConfig::Warn => Self::Warn,
        }
    }
}

/// The transform stage: SQL or a mapping.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "TransformKeys")]
pub enum TransformConfig {
    /// `SELECT … FROM input`.
    Sql(Text),
    /// Declarative column operations.
    Mapping(MappingConfig),
}

/// The transform stage: exactly one of `sql` or `mapping`.
// Read as a `TransformConfig`: planning matches on the choice.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "TransformConfig", extend("oneOf" = one_of(&["sql", "mapping"])))]
struct TransformKeys {
    /// `SELECT <expressions> FROM input` (DataFusion SQL; one row per input row).
    #[serde(default)]
    sql: Option<Text>,
    /// Declarative column operations.
    #[serde(default)]
    mapping: Option<MappingConfig>,
}

impl TryFrom<TransformKeys> for TransformConfig {
    type Error = String;

    fn try_from(keys: TransformKeys) -> Result<Self, String> {
        exactly_one(
            "`sql` or `mapping`",
            [keys.sql.map(Self::Sql), keys.mapping.map(Self::Mapping)],
        )
    }
}

/// Declarative column operations (applied: flatten, defaults, cast, rename, drop).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// Struct columns to spread into `<column>_<field>` columns.
    #[serde(default)]
    pub flatten: Vec<String>,
    /// Column → value used where the column is null.
    #[serde(default)]
    pub defaults: std::collections::BTreeMap<String, serde_json::Value>,
    /// Column → SQL type.
    #[serde(default)]
    pub cast: std::collections::BTreeMap<String, String>,
    /// Old name → new name.
    #[serde(default)]
    pub rename: std::collections::BTreeMap<String, String>,
    /// Columns to leave out.
    #[serde(default)]
    pub drop: Vec<String>,
}

/// The enrich stage.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// The reference table.
    pub lookup: LookupConfig,
    /// What to do with records whose key is not in the table.
    #[serde(default)]
    pub on_miss: OnMissConfig,
    /// What to do with records whose lookup cannot be answered (the database or cache is down).
    #[serde(default)]
    pub on_error: OnMissConfig,
    /// Derived fields, in order.
    #[serde(default)]
    pub derive: Vec<DeriveConfig>,
}

/// Policy for lookup misses.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnMissConfig {
    /// Keep the record with nulls.
    Null,
    /// Review queue.
    #[default]
    Review,
    /// Dead-letter queue.
    Dlq,
}

impl From<OnMissConfig> for tributary_stages::enrich::OnMiss {
    fn from(policy: OnMissConfig) -> Self {
        match policy {
            OnMissConfig::Null => Self::Null,
            OnMissConfig::Review => Self::Review,
            OnMissConfig::Dlq => Self::Dlq,
        }
    }
}

/// A derived field.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeriveConfig {
    /// Column name.
    pub name: String,
    /// SQL expression over the joined columns.
    pub sql: Text,
}

written_as!(TransformConfig => TransformKeys);
