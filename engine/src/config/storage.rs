//! `storage:` (how S3 is reached) and `retry:` (how every transient failure is retried).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DurationText, SecretText, Text};

/// Settings for remote stores, shared by every `s3://` location in the file.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// S3 and S3-compatible servers.
    #[serde(default)]
    pub s3: S3Config,
}

/// How to reach S3; anything left out comes from the standard AWS chain.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// AWS region.
    #[serde(default)]
    pub region: Option<Text>,
    /// Endpoint of an S3-compatible server (`http://127.0.0.1:9000`).
    #[serde(default)]
    pub endpoint: Option<Text>,
    /// Path-style addressing (default: on with an endpoint, off otherwise).
    #[serde(default)]
    pub path_style: Option<bool>,
    /// Access key id (use `${ENV}`; never commit secrets).
    #[serde(default)]
    pub access_key_id: Option<Text>,
    /// Secret access key.
    #[serde(default)]
    pub secret_access_key: Option<SecretText>,
    /// Session token.
    #[serde(default)]
    pub session_token: Option<SecretText>,
    /// Profile in `~/.aws/credentials`.
    #[serde(default)]
    pub profile: Option<Text>,
}

/// Retry with exponential backoff and full jitter, for S3, Snowflake, Kafka produce, lookup refreshes and alert webhooks.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First delay.
    #[serde(default = "default_initial")]
    pub initial_delay: DurationText,
    /// Longest delay.
    #[serde(default = "default_max_delay")]
    pub max_delay: DurationText,
    /// Budget of one chain of attempts.
    #[serde(default = "default_max_elapsed")]
    pub max_elapsed: DurationText,
    /// Past the budget, a sink `wait`s (its partitions pause until it is back) or the run `fail`s.
    #[serde(default)]
    pub when_exhausted: WhenExhausted,
}

/// What a sink does once its retry budget is spent.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenExhausted {
    /// Pause the affected partitions and keep retrying until the sink is back.
    #[default]
    Wait,
    /// Fail the partition (and the run).
    Fail,
}

impl From<WhenExhausted> for tributary_connectors::retry::Exhausted {
    fn from(when: WhenExhausted) -> Self {
        match when {
            WhenExhausted::Wait => Self::Wait,
            WhenExhausted::Fail => Self::Fail,
        }
    }
}

impl From<&RetryConfig> for tributary_connectors::retry::RetryPolicy {
    fn from(r: &RetryConfig) -> Self {
        Self {
            initial_delay: r.initial_delay.0,
            max_delay: r.max_delay.0.max(r.initial_delay.0),
            max_elapsed: r.max_elapsed.0,
            exhausted: r.when_exhausted.into(),
        }
    }
}

fn default_initial() -> DurationText {
    DurationText(std::time::Duration::from_millis(100))
}

fn default_max_delay() -> DurationText {
    DurationText(std::time::Duration::from_secs(10))
}

fn default_max_elapsed() -> DurationText {
    DurationText(std::time::Duration::from_secs(30))
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_delay: default_initial(),
            max_delay: default_max_delay(),
            max_elapsed: default_max_elapsed(),
            when_exhausted: WhenExhausted::default(),
        }
    }
}
