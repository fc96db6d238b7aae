//! PostgreSQL reference tables, through `sqlx`: a table or a query, loaded
//! whole as a snapshot (refreshed on an interval), or looked up on demand
//! for the keys of each batch (for tables too large to hold).
//!
//! Column types map to Arrow as: booleans; `int2`/`int4` → Int32, `int8` →
//! Int64; `float4`/`float8` → Float64; `text`, `varchar`, `char`, `name`,
//! `uuid`, `json`, `jsonb` → Utf8; `date` → Date32; `timestamp` and
//! `timestamptz` → microsecond timestamps (UTC for `timestamptz`). Any other
//! type is refused when the pipeline is checked, naming the column: cast it
//! in the query (`numeric` → `float8` or `text`, for instance).

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder,
    RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use futures::future::BoxFuture;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Column, Connection, Executor, Row, SqlSafeStr, Statement, TypeInfo};
use tokio::sync::OnceCell;

use super::{Fetched, KeyedSource, LookupError, LookupSource};
use crate::secret::Secret;

/// A PostgreSQL table or query.
///
/// Built before the run (by `check`) with a connection of its own that is
/// closed again; the pool the run uses connects on first use, inside the
/// run's async runtime.
#[derive(Debug)]
pub struct PostgresLookup {
    /// May hold a password.
    url: Secret,
    pool: OnceCell<PgPool>,
    /// The `SELECT` giving the whole table.
    query: String,
    /// For on-demand lookups: the key column and its PostgreSQL type.
    key: Option<(String, String)>,
    /// Column names and PostgreSQL types, as described by the server.
    columns: Vec<(String, String)>,
    schema: SchemaRef,
    name: String,
}

/// The Arrow type a PostgreSQL type is read as, if lookups read it.
fn arrow_type(pg: &str) -> Option<DataType> {
    Some(match pg {
        "BOOL" => DataType::Boolean,
        "INT2" | "INT4" => DataType::Int32,
        "INT8" => DataType::Int64,
        "FLOAT4" | "FLOAT8" => DataType::Float64,
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "UUID" | "JSON" | "JSONB" => DataType::Utf8,
        "DATE" => DataType::Date32,
        "TIMESTAMP" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "TIMESTAMPTZ" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        _ => return None,
    })
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl PostgresLookup {
    /// Asks the server at `url` to describe `query` (over a connection of
    /// its own, closed again); with `key`, lookups are on demand by that column.
    pub async fn connect(
        name: &str,
        url: &str,
        query: &str,
        key: Option<&str>,
    ) -> Result<Self, LookupError> {
        let fail = |e: sqlx::Error| classify(name, e);
        let mut connection = PgConnection::connect(url).await.map_err(fail)?;
        // The query comes from the pipeline file, written by whoever runs the pipeline.
        let statement = (&mut connection)
            .prepare(AssertSqlSafe(query).into_sql_str())
            .await
            .map_err(fail)?;
        let mut columns = Vec::new();
        let mut fields = Vec::new();
        for column in statement.columns() {
            let pg = column.type_info().name().to_string();
            let data_type = arrow_type(&pg).ok_or_else(|| LookupError::Invalid {
                source_name: name.to_string(),
                message: format!(
                    "column {:?} has type {pg}, which lookups do not read; CAST it in the query (to text, float8, int8…)",
                    column.name()
                ),
            })?;
            fields.push(Field::new(column.name(), data_type, true));
            columns.push((column.name().to_string(), pg));
        }
        let _ = connection.close().await;
        let key =
            match key {
                None => None,
                Some(key) => {
                    let (_, pg) = columns.iter().find(|(c, _)| c == key).ok_or_else(|| {
                        LookupError::Invalid {
                            source_name: name.to_string(),
                            message: format!("the query has no key column {key:?}"),
                        }
                    })?;
                    Some((key.to_string(), pg.clone()))
                }
            };
        Ok(PostgresLookup {
            url: Secret::new(url),
            pool: OnceCell::new(),
            query: query.to_string(),
            key,
            columns,
            schema: Arc::new(Schema::new(fields)),
            name: name.to_string(),
        })
    }

    /// The table's schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Reads the whole table over a connection of its own (for `check`, before the run's runtime exists).
    pub async fn load_now(&self) -> Result<RecordBatch, LookupError> {
        let fail = |e: sqlx::Error| classify(&self.name, e);
        let mut connection = PgConnection::connect(self.url.expose())
            .await
            .map_err(fail)?;
        let rows = sqlx::query(AssertSqlSafe(self.query.as_str()))
            .fetch_all(&mut connection)
            .await
            .map_err(fail)?;
        let _ = connection.close().await;
        self.to_batch(&rows)
    }

    async fn pool(&self) -> Result<&PgPool, LookupError> {
        self.pool
            .get_or_try_init(|| async {
                PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(self.url.expose())
                    .await
            })
            .await
            .map_err(|e| classify(&self.name, e))
    }

    /// The rows of `sql` (with `keys` bound as `$1` when given) as one batch.
    async fn select(
        &self,
        sql: String,
        keys: Option<&[String]>,
    ) -> Result<RecordBatch, LookupError> {
        // The SQL is the pipeline file's (and keys travel as a bound parameter).
        let mut query = sqlx::query(AssertSqlSafe(sql));
        if let Some(keys) = keys {
            query = query.bind(keys.to_vec());
        }
        let rows = query
            .fetch_all(self.pool().await?)
            .await
            .map_err(|e| classify(&self.name, e))?;
        self.to_batch(&rows)
    }

    fn to_batch(&self, rows: &[PgRow]) -> Result<RecordBatch, LookupError> {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (i, (name, pg)) in self.columns.iter().enumerate() {
            let bad = |e: sqlx::Error| LookupError::Invalid {
                source_name: self.name.clone(),
                message: format!("column {name:?}: {e}"),
            };
            macro_rules! read {
                ($builder:expr, $ty:ty, $convert:expr) => {{
                    let mut b = $builder;
                    for row in rows {
                        let v: Option<$ty> = row.try_get(i).map_err(bad)?;
                        b.append_option(v.map($convert));
                    }
                    Arc::new(b.finish()) as ArrayRef
                }};
            }
            let array = match pg.as_str() {
                "BOOL" => read!(BooleanBuilder::new(), bool, |v| v),
                "INT2" => read!(Int32Builder::new(), i16, i32::from),
                "INT4" => read!(Int32Builder::new(), i32, |v| v),
                "INT8" => read!(Int64Builder::new(), i64, |v| v),
                "FLOAT4" => read!(Float64Builder::new(), f32, f64::from),
                "FLOAT8" => read!(Float64Builder::new(), f64, |v| v),
                "UUID" => read!(StringBuilder::new(), uuid::Uuid, |v| v.to_string()),
                "JSON" | "JSONB" => {
                    read!(StringBuilder::new(), serde_json::Value, |v| v.to_string())
                }
                "DATE" => read!(Date32Builder::new(), chrono::NaiveDate, |d| {
                    (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()).num_days()
                        as i32
                }),
                "TIMESTAMP" => read!(
                    TimestampMicrosecondBuilder::new(),
                    chrono::NaiveDateTime,
                    |t| t.and_utc().timestamp_micros()
                ),
                "TIMESTAMPTZ" => read!(
                    TimestampMicrosecondBuilder::new().with_timezone("UTC"),
                    chrono::DateTime<chrono::Utc>,
                    |t| t.timestamp_micros()
                ),
                _ => read!(StringBuilder::new(), String, |v| v),
            };
            arrays.push(array);
        }
        RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| LookupError::Invalid {
            source_name: self.name.clone(),
            message: e.to_string(),
        })
    }
}

/// Connection trouble is worth retrying; an error the server reports about the query is not.
fn classify(name: &str, error: sqlx::Error) -> LookupError {
    let message = error.to_string();
    let source_name = name.to_string();
    match error {
        sqlx::Error::Database(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::Configuration(_)
        | sqlx::Error::TypeNotFound { .. } => LookupError::Invalid {
            source_name,
            message,
        },
        _ => LookupError::Unavailable {
            source_name,
            message,
        },
    }
}

impl LookupSource for PostgresLookup {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn load(&self) -> BoxFuture<'_, Result<RecordBatch, LookupError>> {
        Box::pin(self.select(self.query.clone(), None))
    }
}

impl KeyedSource for PostgresLookup {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn key(&self) -> &str {
        self.key.as_ref().map_or("", |(k, _)| k.as_str())
    }

    fn fetch<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<Fetched, LookupError>> {
        Box::pin(async move {
            let Some((key, pg)) = &self.key else {
                return Err(LookupError::Invalid {
                    source_name: self.name.clone(),
                    message: "not set up for lookups by key".into(),
                });
            };
            // Keys travel as text and are cast to the column's own type, so an
            // index on the key column serves the lookup.
            let sql = format!(
                "SELECT * FROM ({}) AS lookup WHERE {} = ANY(CAST($1 AS text[])::{}[])",
                self.query,
                quote_ident(key),
                pg.to_lowercase()
            );
            let rows = self.select(sql, Some(keys)).await?;
            Ok(Fetched {
                rows,
                failed: Vec::new(),
            })
        })
    }
}
