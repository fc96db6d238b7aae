//! `outputs[].snowflake`: tables loaded from a Parquet output's files.

use std::time::Duration;

use arrow::datatypes::SchemaRef;
use tributary_connectors::parquet::file_schema;
use tributary_connectors::secret::Secret;
use tributary_connectors::snowflake::{
    Connection as SnowflakeConnection, Credentials, LoadTarget, TimestampKind,
};

use super::context::{Cx, Origin};
use super::outputs::PlannedOutput;
use crate::config::{ConfigError, Loaded, SnowflakeOutputConfig, Text};

/// A Snowflake table loaded from a Parquet output's files, as the pipeline
/// file gives it; its columns are known once the stages are compiled.
#[derive(Debug, Clone)]
pub struct SnowflakePlan {
    /// The output's name.
    pub name: String,
    /// The Parquet output whose files are loaded.
    pub from: String,
    /// Account and credentials.
    pub connection: SnowflakeConnection,
    /// Table name.
    pub table: String,
    /// Stage name.
    pub stage: String,
    /// Storage integration of a created stage.
    pub storage_integration: Option<String>,
    /// How timestamp columns are typed.
    pub timestamps: TimestampKind,
    /// Files per load.
    pub max_files: usize,
    /// Longest wait before a load.
    pub max_wait: Duration,
    /// Files waiting before commits wait.
    pub max_backlog: usize,
    /// Whether the stage is created (with the output's URL) when absent.
    pub create_stage: bool,
    origin: Origin,
}

/// A Snowflake table loaded from a Parquet output's files, with its columns.
#[derive(Debug, Clone)]
pub struct PlannedSnowflake {
    /// The output's name.
    pub name: String,
    /// The Parquet output whose files are loaded.
    pub from: String,
    /// Account and credentials.
    pub connection: SnowflakeConnection,
    /// Table, stage and file schema.
    pub target: LoadTarget,
    /// Files per load.
    pub max_files: usize,
    /// Longest wait before a load.
    pub max_wait: Duration,
    /// Files waiting before commits wait.
    pub max_backlog: usize,
    /// Whether the stage is created (with the output's URL) when absent.
    pub create_stage: bool,
}

/// Checks a `snowflake` output: its Parquet output exists and its credentials are usable.
pub(super) fn snowflake(
    cx: Cx,
    loaded: &Loaded,
    (index, sf): (usize, &SnowflakeOutputConfig),
    outputs: &[PlannedOutput],
) -> Result<SnowflakePlan, ConfigError> {
    let key = format!("outputs[{index}].snowflake");
    let span = loaded.pipeline.outputs[index].span.clone();
    let err = |k: &str, m: String| cx.at(Some(&span), format!("{key}.{k}"), m);
    if !outputs.iter().any(|o| o.name == sf.from) {
        return Err(err(
            "from",
            format!(
                "{:?} is not a Parquet output; the Parquet outputs are: {}",
                sf.from,
                outputs
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let password = sf
        .password
        .as_ref()
        .map(|t| Secret::new(t.expose()))
        .or_else(|| std::env::var("SNOWFLAKE_PASSWORD").ok().map(Secret::from));
    let key_path = sf
        .private_key_path
        .as_ref()
        .map(|t| loaded.resolve(t.as_str()))
        .or_else(|| std::env::var("SNOWFLAKE_PRIVATE_KEY_PATH").ok());
    let credentials = match (password, key_path) {
        (_, Some(path)) => {
            let pem = std::fs::read_to_string(&path)
                .map_err(|e| err("private_key_path", format!("{path}: {e}")))?;
            tributary_connectors::snowflake::public_key_fingerprint(&pem)
                .map_err(|e| err("private_key_path", format!("{path}: {e}")))?;
            Credentials::KeyPair {
                private_key_pem: Secret::from(pem),
            }
        }
        (Some(password), None) => Credentials::Password(password),
        (None, None) => {
            return Err(err(
                "password",
                "give `private_key_path` (key-pair JWT) or `password` (or set SNOWFLAKE_PRIVATE_KEY_PATH / SNOWFLAKE_PASSWORD)".into(),
            ));
        }
    };
    let text = |t: &Option<Text>| t.as_ref().map(|t| t.value.clone());
    let account = sf.account.value.clone();
    Ok(SnowflakePlan {
        name: sf.name.clone(),
        from: sf.from.clone(),
        connection: SnowflakeConnection {
            url: text(&sf.url)
                .unwrap_or_else(|| format!("https://{account}.snowflakecomputing.com"))
                .trim_end_matches('/')
                .to_string(),
            account,
            user: sf.user.value.clone(),
            credentials,
            database: sf.database.value.clone(),
            schema: sf.schema.value.clone(),
            warehouse: text(&sf.warehouse),
            role: text(&sf.role),
            session_parameters: sf.session_parameters.values(),
        },
        table: sf.table.value.clone(),
        stage: sf.stage.value.clone(),
        storage_integration: text(&sf.storage_integration),
        timestamps: sf.timestamps.into(),
        max_files: sf.max_files.max(1),
        max_wait: sf.max_wait.0,
        max_backlog: sf.max_backlog.max(1),
        create_stage: sf.create_stage,
        origin: Origin { key, span },
    })
}

impl SnowflakePlan {
    /// The load, with the columns of the files it loads (`schema`: the records
    /// reaching the outputs); refused when a column has no Snowflake type.
    pub(super) fn with_columns(
        &self,
        cx: Cx,
        outputs: &[PlannedOutput],
        schema: &SchemaRef,
    ) -> Result<PlannedSnowflake, ConfigError> {
        let err = |m: String| {
            cx.at(
                Some(&self.origin.span),
                format!("{}.from", self.origin.key),
                m,
            )
        };
        let partition_by = outputs
            .iter()
            .find(|o| o.name == self.from)
            .map(|o| o.options.partition_by.as_slice())
            .unwrap_or_default();
        let file_columns = file_schema(schema, partition_by).map_err(|e| err(e.to_string()))?;
        for field in file_columns.fields() {
            if tributary_connectors::snowflake::column_type(field.data_type(), self.timestamps)
                .is_none()
            {
                return Err(err(format!(
                    "column {} ({}) has no Snowflake type",
                    field.name(),
                    field.data_type()
                )));
            }
        }
        Ok(PlannedSnowflake {
            name: self.name.clone(),
            from: self.from.clone(),
            connection: self.connection.clone(),
            target: LoadTarget {
                table: self.table.clone(),
                stage: self.stage.clone(),
                stage_url: None,
                storage_integration: self.storage_integration.clone(),
                schema: file_columns,
                timestamps: self.timestamps,
            },
            max_files: self.max_files,
            max_wait: self.max_wait,
            max_backlog: self.max_backlog,
            create_stage: self.create_stage,
        })
    }
}
