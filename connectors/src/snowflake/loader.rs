//! Loads published Parquet files into one table, each file exactly once.
//!
//! The load log `TRIBUTARY_LOAD_LOG` (in the target schema) records every
//! file loaded, by path and SHA-256 of its content. Each load is one
//! transaction: read the log for the files, `COPY` those it lacks (with
//! `FORCE = TRUE`, so that Snowflake's own 64-day load metadata neither
//! skips a file we have not loaded nor matters for one we have), add their
//! log rows, commit. A crash, a lost reply or a session that expires
//! mid-way leaves either all of it or none, and the next attempt reads the
//! log again. A file logged under its path with another hash was rewritten
//! after it was loaded: refused, never loaded twice.
//!
//! Loaders of one table in other processes may load the same file at the
//! same moment (two instances reconciling one output at start, say): each
//! sees the file unlogged, since neither has committed. So the last step
//! before `COMMIT` takes the table's row in `TRIBUTARY_LOAD_LOCK` (an
//! `UPDATE`, which holds it until the transaction ends) and then looks
//! again: a file now logged twice was committed by another loader in the
//! meantime, and this load rolls back; its retry skips that file. The lock
//! is held only for that check and the commit, never across a `COPY`, so a
//! loader killed mid-load leaves nothing that blocks the others. (A kill
//! between the lock and the commit leaves the row locked until Snowflake
//! ends that session; the others' statements then time out after
//! `LOCK_TIMEOUT` and retry. ARCHITECTURE.md, "Snowflake", says what to do.)

use std::collections::HashMap;

use arrow::datatypes::{DataType, SchemaRef};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use sha2::{Digest, Sha256};

use super::SnowflakeError;
use super::client::{Connection, QueryResult, Session};
use crate::commit_log::STATE_DIR;
use crate::store::Location;

/// The load log's table name.
pub const LOAD_LOG: &str = "TRIBUTARY_LOAD_LOG";
/// The table whose row per target table serializes the loads' commits.
pub const LOAD_LOCK: &str = "TRIBUTARY_LOAD_LOCK";
/// Snowflake accepts at most this many names in `FILES = (…)`.
const MAX_FILES_PER_COPY: usize = 1000;

/// How Arrow timestamps become Snowflake columns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TimestampKind {
    /// `TIMESTAMP_TZ` for timestamps with a time zone, `TIMESTAMP_NTZ` without.
    #[default]
    Auto,
    /// Always `TIMESTAMP_NTZ`.
    Ntz,
    /// Always `TIMESTAMP_TZ`.
    Tz,
}

/// The Snowflake column type for an Arrow type (see docs/pipeline.md for the table).
pub fn column_type(data_type: &DataType, timestamps: TimestampKind) -> Option<String> {
    Some(match data_type {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => "NUMBER(38,0)".into(),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => "FLOAT".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => {
            format!("NUMBER({},{})", (*p).min(38), s)
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BINARY".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Time32(_) | DataType::Time64(_) => "TIME".into(),
        DataType::Timestamp(_, tz) => match (timestamps, tz) {
            (TimestampKind::Ntz, _) | (TimestampKind::Auto, None) => "TIMESTAMP_NTZ".into(),
            (TimestampKind::Tz, _) | (TimestampKind::Auto, Some(_)) => "TIMESTAMP_TZ".into(),
        },
        DataType::Struct(_)
        | DataType::List(_)
        | DataType::LargeList(_)
        | DataType::FixedSizeList(_, _)
        | DataType::Map(_, _) => "VARIANT".into(),
        DataType::Dictionary(_, value) => column_type(value, timestamps)?,
        _ => return None,
    })
}

/// A quoted identifier that matches the unquoted, upper-cased name.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.to_ascii_uppercase().replace('"', "\"\""))
}

/// A string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// Where files are loaded to.
#[derive(Debug, Clone)]
pub struct LoadTarget {
    /// Target table (created when absent).
    pub table: String,
    /// External stage over the output's root.
    pub stage: String,
    /// When set, the stage is created with this URL if absent.
    pub stage_url: Option<String>,
    /// Storage integration for a created stage.
    pub storage_integration: Option<String>,
    /// Columns of the files (the output's schema without partition columns).
    pub schema: SchemaRef,
    /// Timestamp mapping.
    pub timestamps: TimestampKind,
}

/// What one load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Files copied.
    pub files_loaded: usize,
    /// Files skipped because the log has them with the same hash.
    pub files_skipped: usize,
    /// Rows Snowflake reported loaded.
    pub rows_loaded: u64,
}

/// Loads files from one output location into one table.
pub struct Loader {
    connection: Connection,
    target: LoadTarget,
    location: Location,
    session: Option<Session>,
    prepared: bool,
    /// The last statement failed transiently: the session is replaced before the next.
    broken: bool,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("table", &self.target.table)
            .field("stage", &self.target.stage)
            .finish_non_exhaustive()
    }
}

impl Loader {
    /// A loader of files under `location` into `target`; it connects on first use.
    pub fn new(connection: Connection, target: LoadTarget, location: Location) -> Self {
        Loader {
            connection,
            target,
            location,
            session: None,
            prepared: false,
            broken: false,
        }
    }

    /// The target table's name.
    pub fn table(&self) -> &str {
        &self.target.table
    }

    async fn query(&mut self, sql: &str) -> Result<QueryResult, SnowflakeError> {
        // After a transient failure the session is suspect: its open
        // transaction is rolled back in it (best effort), anything else
        // starts over in a new session.
        if self.broken && sql != "ROLLBACK" {
            self.session = None;
            self.prepared = false;
            self.broken = false;
        }
        if self.session.is_none() {
            self.session = Some(Session::login(self.connection.clone()).await?);
        }
        let Some(session) = self.session.as_mut() else {
            return Err(SnowflakeError::Protocol("no session".into()));
        };
        let result = session.query(sql).await;
        if let Err(e) = &result
            && e.is_transient()
        {
            // The server may have restarted, or the session expired.
            self.broken = true;
        }
        result
    }

    /// The `CREATE TABLE IF NOT EXISTS` statement for the target.
    pub fn create_table_sql(&self) -> Result<String, SnowflakeError> {
        let columns = self
            .target
            .schema
            .fields()
            .iter()
            .map(|f| {
                column_type(f.data_type(), self.target.timestamps)
                    .map(|t| format!("{} {t}", ident(f.name())))
                    .ok_or_else(|| SnowflakeError::Unmappable {
                        column: f.name().clone(),
                        data_type: f.data_type().to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.target.table,
            columns.join(", ")
        ))
    }

    async fn prepare(&mut self) -> Result<(), SnowflakeError> {
        if self.prepared {
            return Ok(());
        }
        let create = self.create_table_sql()?;
        self.query(&create).await?;
        self.query(&format!(
            "CREATE TABLE IF NOT EXISTS {LOAD_LOG} (TARGET_TABLE VARCHAR, FILE_PATH VARCHAR, CONTENT_HASH VARCHAR, ROWS_LOADED NUMBER(38,0), LOADED_AT TIMESTAMP_TZ)"
        ))
        .await?;
        self.query(&format!(
            "CREATE TABLE IF NOT EXISTS {LOAD_LOCK} (TARGET_TABLE VARCHAR, LOADS NUMBER(38,0))"
        ))
        .await?;
        // Two loaders starting at once may both add the row: harmless, the
        // lock's UPDATE takes every row of the table.
        let table = literal(&self.target.table);
        self.query(&format!(
            "INSERT INTO {LOAD_LOCK} (TARGET_TABLE, LOADS) SELECT {table}, 0 WHERE NOT EXISTS (SELECT 1 FROM {LOAD_LOCK} WHERE TARGET_TABLE = {table})"
        ))
        .await?;
        if let Some(url) = self.target.stage_url.clone() {
            let integration = self
                .target
                .storage_integration
                .as_ref()
                .map(|i| format!(" STORAGE_INTEGRATION = {i}"))
                .unwrap_or_default();
            let stage = self.target.stage.clone();
            self.query(&format!(
                "CREATE STAGE IF NOT EXISTS {stage} URL = {}{integration}",
                literal(&url)
            ))
            .await?;
        }
        self.prepared = true;
        Ok(())
    }

    async fn content_hash(&self, file: &str) -> Result<String, SnowflakeError> {
        let path = Path::from(file);
        let store_error = |source| SnowflakeError::Store {
            path: file.to_string(),
            source,
        };
        let mut stream = self
            .location
            .store
            .get(&path)
            .await
            .map_err(store_error)?
            .into_stream();
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.try_next().await.map_err(store_error)? {
            hasher.update(&chunk);
        }
        Ok(format!("{:x}", hasher.finalize()))
    }

    /// Paths already in the log among `files`, with their hashes.
    async fn logged(
        &mut self,
        files: &[String],
    ) -> Result<HashMap<String, String>, SnowflakeError> {
        let list: Vec<String> = files.iter().map(|f| literal(f)).collect();
        let sql = format!(
            "SELECT FILE_PATH, CONTENT_HASH FROM {LOAD_LOG} WHERE TARGET_TABLE = {} AND FILE_PATH IN ({})",
            literal(&self.target.table),
            list.join(", ")
        );
        let result = self.query(&sql).await?;
        Ok((0..result.rows.len())
            .filter_map(|r| {
                Some((
                    result.get(r, "FILE_PATH")?.to_string(),
                    result.get(r, "CONTENT_HASH")?.to_string(),
                ))
            })
            .collect())
    }

    /// Loads `files` (paths relative to the output root) that the log does not have.
    pub async fn load(&mut self, files: &[String]) -> Result<LoadReport, SnowflakeError> {
        self.prepare().await?;
        let mut report = LoadReport::default();
        for chunk in files.chunks(MAX_FILES_PER_COPY) {
            let mut hashed = Vec::with_capacity(chunk.len());
            for file in chunk {
                hashed.push((file.clone(), self.content_hash(file).await?));
            }
            self.query("BEGIN").await?;
            match self.load_locked(chunk, hashed).await {
                Ok(done) => {
                    self.query("COMMIT").await?;
                    crate::fault::crash_point("after_load_commit");
                    report.files_skipped += done.files_skipped;
                    report.files_loaded += done.files_loaded;
                    report.rows_loaded += done.rows_loaded;
                }
                Err(e) => {
                    if let Err(rollback) = self.query("ROLLBACK").await {
                        tracing::debug!(error = %rollback, "rollback after a failed load");
                    }
                    return Err(e);
                }
            }
        }
        Ok(report)
    }

    /// Inside a transaction: copies and logs the files the log lacks.
    async fn load_locked(
        &mut self,
        chunk: &[String],
        hashed: Vec<(String, String)>,
    ) -> Result<LoadReport, SnowflakeError> {
        let logged = self.logged(chunk).await?;
        let mut report = LoadReport::default();
        let mut todo = Vec::with_capacity(hashed.len());
        for (file, hash) in hashed {
            match logged.get(&file) {
                None => todo.push((file, hash)),
                Some(same) if *same == hash => report.files_skipped += 1,
                Some(other) => {
                    return Err(SnowflakeError::Rewritten {
                        path: file,
                        table: self.target.table.clone(),
                        logged: other.clone(),
                        now: hash,
                        log: LOAD_LOG.into(),
                    });
                }
            }
        }
        if !todo.is_empty() {
            report.rows_loaded = self.copy_and_log(&todo).await?;
            report.files_loaded = todo.len();
        }
        Ok(report)
    }

    async fn copy_and_log(&mut self, files: &[(String, String)]) -> Result<u64, SnowflakeError> {
        let names: Vec<String> = files.iter().map(|(f, _)| literal(f)).collect();
        let copy = format!(
            "COPY INTO {} FROM @{}/ FILES = ({}) FILE_FORMAT = (TYPE = PARQUET) MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE ON_ERROR = ABORT_STATEMENT FORCE = TRUE",
            self.target.table,
            self.target.stage,
            names.join(", ")
        );
        let result = self.query(&copy).await?;
        crate::fault::crash_point("after_copy");
        let mut rows_by_file = Vec::with_capacity(files.len());
        let mut total_rows = 0;
        for (file, hash) in files {
            let row = (0..result.rows.len()).find(|&r| {
                result
                    .get(r, "file")
                    .is_some_and(|f| f == file || f.ends_with(&format!("/{file}")))
            });
            let Some(row) = row else {
                return Err(SnowflakeError::Protocol(format!(
                    "COPY INTO {} did not report {file}",
                    self.target.table
                )));
            };
            let status = result.get(row, "status").unwrap_or("");
            if !status.eq_ignore_ascii_case("LOADED") {
                return Err(SnowflakeError::Statement {
                    code: "COPY".into(),
                    message: format!(
                        "{file}: {status}: {}",
                        result.get(row, "first_error").unwrap_or("")
                    ),
                    sql: copy.chars().take(300).collect(),
                });
            }
            let rows: u64 = result
                .get(row, "rows_loaded")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            total_rows += rows;
            rows_by_file.push(format!(
                "({}, {}, {}, {rows}, CURRENT_TIMESTAMP())",
                literal(&self.target.table),
                literal(file),
                literal(hash)
            ));
        }
        self.query(&format!(
            "INSERT INTO {LOAD_LOG} (TARGET_TABLE, FILE_PATH, CONTENT_HASH, ROWS_LOADED, LOADED_AT) VALUES {}",
            rows_by_file.join(", ")
        ))
        .await?;
        crate::fault::crash_point("after_load_log");
        self.lock_and_recheck(files).await?;
        Ok(total_rows)
    }

    /// Inside the load transaction, last before `COMMIT`: takes the table's
    /// lock row (held until the transaction ends, so loads of this table
    /// commit one at a time) and fails if another loader committed any of
    /// `files` since this transaction read the log.
    async fn lock_and_recheck(&mut self, files: &[(String, String)]) -> Result<(), SnowflakeError> {
        let table = literal(&self.target.table);
        self.query(&format!(
            "UPDATE {LOAD_LOCK} SET LOADS = LOADS + 1 WHERE TARGET_TABLE = {table}"
        ))
        .await?;
        // Read after the lock was granted: this sees every load committed
        // before it, each of which logged its files.
        let names: Vec<String> = files.iter().map(|(f, _)| literal(f)).collect();
        let twice = self
            .query(&format!(
                "SELECT FILE_PATH FROM {LOAD_LOG} WHERE TARGET_TABLE = {table} AND FILE_PATH IN ({}) GROUP BY FILE_PATH HAVING COUNT(*) > 1",
                names.join(", ")
            ))
            .await?;
        if twice.rows.is_empty() {
            return Ok(());
        }
        tracing::info!(table = %self.target.table, files = twice.rows.len(), "another loader committed some of these files meanwhile; rolling back to skip them");
        Err(SnowflakeError::LoadedElsewhere {
            files: twice.rows.len(),
            table: self.target.table.clone(),
        })
    }

    /// Loads every Parquet file under the output that the log does not name
    /// (files published before a crash, or while Snowflake was unreachable).
    /// The listing is read as it streams, a thousand files at a time, each
    /// group checked against the log: memory does not grow with the output.
    pub async fn reconcile(&mut self) -> Result<LoadReport, SnowflakeError> {
        self.prepare().await?;
        let store = self.location.store.clone();
        let display = self.location.display.clone();
        let mut listing = store.list(None);
        let mut report = LoadReport::default();
        let mut candidates = Vec::with_capacity(MAX_FILES_PER_COPY);
        loop {
            let next = listing
                .try_next()
                .await
                .map_err(|source| SnowflakeError::Store {
                    path: display.clone(),
                    source,
                })?;
            let done = next.is_none();
            if let Some(object) = next {
                let path = object.location.to_string();
                if path.ends_with(".parquet") && !path.starts_with(&format!("{STATE_DIR}/")) {
                    candidates.push(path);
                }
            }
            if candidates.len() == MAX_FILES_PER_COPY || (done && !candidates.is_empty()) {
                let logged = self.logged(&candidates).await?;
                let missing: Vec<String> = std::mem::take(&mut candidates)
                    .into_iter()
                    .filter(|p| !logged.contains_key(p))
                    .collect();
                if !missing.is_empty() {
                    let loaded = self.load(&missing).await?;
                    report.files_loaded += loaded.files_loaded;
                    report.files_skipped += loaded.files_skipped;
                    report.rows_loaded += loaded.rows_loaded;
                }
            }
            if done {
                return Ok(report);
            }
        }
    }

    /// Ends the session.
    pub async fn close(mut self) {
        if let Some(session) = self.session.take() {
            session.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{Field, Fields, Schema, TimeUnit};

    use super::*;

    #[test]
    fn arrow_types_map_to_snowflake_columns() {
        let ts = |tz: Option<&str>| DataType::Timestamp(TimeUnit::Microsecond, tz.map(Into::into));
        let cases = [
            (ts(None), TimestampKind::Auto, "TIMESTAMP_NTZ"),
            (ts(Some("UTC")), TimestampKind::Auto, "TIMESTAMP_TZ"),
            (ts(None), TimestampKind::Tz, "TIMESTAMP_TZ"),
            (ts(Some("UTC")), TimestampKind::Ntz, "TIMESTAMP_NTZ"),
            (DataType::Int64, TimestampKind::Auto, "NUMBER(38,0)"),
            (DataType::Float64, TimestampKind::Auto, "FLOAT"),
            (DataType::Utf8, TimestampKind::Auto, "VARCHAR"),
            (DataType::Boolean, TimestampKind::Auto, "BOOLEAN"),
            (DataType::Date32, TimestampKind::Auto, "DATE"),
            (
                DataType::Struct(Fields::from(vec![Field::new("c", DataType::Utf8, true)])),
                TimestampKind::Auto,
                "VARIANT",
            ),
            (
                DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
                TimestampKind::Auto,
                "VARIANT",
            ),
        ];
        for (arrow, kind, snowflake) in cases {
            assert_eq!(
                column_type(&arrow, kind).as_deref(),
                Some(snowflake),
                "{arrow}"
            );
        }
        assert_eq!(column_type(&DataType::Null, TimestampKind::Auto), None);
    }

    #[test]
    fn the_table_is_created_from_the_schema_with_quoted_upper_case_names() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new("total", DataType::Float64, true),
        ]));
        let loader = Loader::new(
            Connection {
                url: "http://127.0.0.1:1".into(),
                account: "a".into(),
                user: "u".into(),
                credentials: super::super::Credentials::Password("p".into()),
                database: "D".into(),
                schema: "S".into(),
                warehouse: None,
                role: None,
                session_parameters: Default::default(),
            },
            LoadTarget {
                table: "ORDERS".into(),
                stage: "ORDERS_STAGE".into(),
                stage_url: None,
                storage_integration: None,
                schema,
                timestamps: TimestampKind::Auto,
            },
            Location::local(dir.path()).unwrap(),
        );
        assert_eq!(
            loader.create_table_sql().unwrap(),
            "CREATE TABLE IF NOT EXISTS ORDERS (\"EVENT_ID\" VARCHAR, \"TOTAL\" FLOAT)"
        );
        assert_eq!(literal("it's a\\b"), "'it''s a\\\\b'");
    }
}
