//! `outputs: - snowflake:` (loading a Parquet output into a table) and `alerts:`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DurationText, Properties, SecretText, Text};

/// Loads the files another (Parquet) output publishes into a Snowflake table.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnowflakeOutputConfig {
    /// The output's name.
    pub name: String,
    /// The Parquet output whose files are loaded.
    pub from: String,
    /// Account URL (default `https://<account>.snowflakecomputing.com`).
    #[serde(default)]
    pub url: Option<Text>,
    /// Account identifier.
    pub account: Text,
    /// Login name.
    pub user: Text,
    /// Password (tests and legacy accounts); use `${ENV}`.
    #[serde(default)]
    pub password: Option<SecretText>,
    /// PKCS#8 PEM private key file for key-pair (JWT) authentication.
    #[serde(default)]
    pub private_key_path: Option<Text>,
    /// Database.
    pub database: Text,
    /// Schema (where the table and TRIBUTARY_LOAD_LOG live).
    pub schema: Text,
    /// Warehouse.
    #[serde(default)]
    pub warehouse: Option<Text>,
    /// Role.
    #[serde(default)]
    pub role: Option<Text>,
    /// Target table; created from the output's schema when absent.
    pub table: Text,
    /// External stage over the Parquet output's root.
    pub stage: Text,
    /// Create the stage when absent, with the output's URL (and this storage integration).
    #[serde(default)]
    pub create_stage: bool,
    /// Storage integration for a created stage.
    #[serde(default)]
    pub storage_integration: Option<Text>,
    /// `auto` (by time zone), `ntz` or `tz`.
    #[serde(default)]
    pub timestamps: TimestampsConfig,
    /// Load when this many files are waiting…
    #[serde(default = "default_max_files")]
    pub max_files: usize,
    /// …or when the oldest waiting file has waited this long.
    #[serde(default = "default_max_wait")]
    pub max_wait: DurationText,
    /// Files waiting to load before commits wait for the loader.
    #[serde(default = "default_backlog")]
    pub max_backlog: usize,
    /// Session parameters set at login.
    #[serde(default)]
    pub session_parameters: Properties,
}

fn default_max_files() -> usize {
    100
}

fn default_max_wait() -> DurationText {
    DurationText(std::time::Duration::from_secs(10))
}

fn default_backlog() -> usize {
    10_000
}

/// Timestamp column types.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimestampsConfig {
    /// TIMESTAMP_TZ with a time zone, TIMESTAMP_NTZ without.
    #[default]
    Auto,
    /// Always TIMESTAMP_NTZ.
    Ntz,
    /// Always TIMESTAMP_TZ.
    Tz,
}

impl From<TimestampsConfig> for tributary_connectors::snowflake::TimestampKind {
    fn from(timestamps: TimestampsConfig) -> Self {
        match timestamps {
            TimestampsConfig::Auto => Self::Auto,
            TimestampsConfig::Ntz => Self::Ntz,
            TimestampsConfig::Tz => Self::Tz,
        }
    }
}

/// Alerting.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// The share of records going to the DLQ or review over a sliding window.
    #[serde(default)]
    pub error_rate: Option<ErrorRateConfig>,
}

/// Error-rate alert.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorRateConfig {
    /// Fires above this fraction (0.05 = 5 %).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Over this window.
    #[serde(default = "default_window")]
    pub window: DurationText,
    /// Not before the window holds this many records.
    #[serde(default = "default_min_records")]
    pub min_records: u64,
    /// POSTs a JSON alert here when it fires and when it recovers.
    #[serde(default)]
    pub webhook: Option<Text>,
}

fn default_threshold() -> f64 {
    0.05
}

fn default_window() -> DurationText {
    DurationText(std::time::Duration::from_secs(60))
}

fn default_min_records() -> u64 {
    100
}
