//! `stages[].enrich.lookup`: reference tables. Building checks what the
//! pipeline file says; [`LookupPlan::open`] reaches the table (a file read,
//! a PostgreSQL connection, a Redis ping) once the schema entering its
//! stage is known.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use tributary_connectors::kafka::KafkaConnection;
use tributary_connectors::lookup::cache::CachedLookup;
use tributary_connectors::lookup::postgres::PostgresLookup;
use tributary_connectors::lookup::redis::RedisLookup;
use tributary_connectors::lookup::{FileLookup, KeyedSource, LookupSource};
use tributary_connectors::retry::{Exhausted, Retrier, RetryPolicy};
use tributary_connectors::secret::Secret;
use tributary_stages::enrich::{LookupTable, SharedTable};

use super::context::Cx;
use crate::config::{
    CacheConfig, ConfigError, Loaded, LookupConfig, LookupMode, LookupTableConfig,
    PostgresReadConfig, Span,
};

/// A lookup as the pipeline file gives it, not yet reached.
#[derive(Clone)]
pub struct LookupPlan {
    /// Name for logs, metrics and `CacheInvalidated` events.
    pub name: String,
    /// Key columns.
    pub keys: Vec<String>,
    /// Where the table is.
    pub table: TablePlan,
    /// How often to reload, if at all.
    pub refresh: Option<Duration>,
    /// Where invalidation events come from.
    pub invalidate: Option<PlannedInvalidation>,
    /// `stages[i].enrich.lookup`, for errors.
    key: String,
}

/// Where a lookup's table is.
#[derive(Clone)]
pub enum TablePlan {
    /// A local file, loaded whole.
    File {
        /// The file.
        source: Arc<FileLookup>,
        /// Where its path is written, for errors.
        span: Span,
    },
    /// A PostgreSQL table or query.
    Postgres {
        /// Connection URL (may hold a password).
        url: Secret,
        /// The `SELECT`.
        query: String,
        /// Asked per batch through a cache (else loaded whole).
        on_demand: bool,
        /// The cache of an on-demand lookup.
        cache: CacheConfig,
        /// Where the lookup is written, for errors.
        span: Span,
    },
    /// Redis values, asked per batch through a cache.
    Redis {
        /// The client (not connected).
        source: Arc<RedisLookup>,
        /// The cache.
        cache: CacheConfig,
        /// Where the lookup is written, for errors.
        span: Span,
    },
}

/// A topic of `CacheInvalidated` events.
#[derive(Debug, Clone)]
pub struct PlannedInvalidation {
    /// How to reach it.
    pub connection: KafkaConnection,
    /// The topic.
    pub topic: String,
}

/// A lookup, reached: a snapshot with its source and refresh interval, or an on-demand cache.
#[derive(Clone)]
pub struct PlannedLookup {
    /// Name for logs, metrics and `CacheInvalidated` events.
    pub name: String,
    /// Key columns.
    pub keys: Vec<String>,
    /// Where snapshots come from (`None` for on-demand lookups).
    pub source: Option<Arc<dyn LookupSource>>,
    /// The handle the enrich stage reads.
    pub table: SharedTable,
    /// How often to reload, if at all.
    pub refresh: Option<Duration>,
    /// The on-demand cache, if the lookup is on demand.
    pub cache: Option<Arc<CachedLookup>>,
    /// Wakes the refresher to reload now (an invalidation arrived).
    pub reload: Arc<tokio::sync::Notify>,
    /// Where invalidation events come from.
    pub invalidate: Option<PlannedInvalidation>,
}

/// How far a lookup may be reached while compiling the stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reach {
    /// Local files only: no database is asked anything.
    Offline,
    /// Every lookup is reached, as a run does.
    Connected,
}

/// `lookup:` of the enrich stage at `key` (`stages[i].enrich`).
pub(super) fn lookup(
    cx: Cx,
    loaded: &Loaded,
    l: &LookupConfig,
    key: &str,
    kafka: Option<&KafkaConnection>,
) -> Result<LookupPlan, ConfigError> {
    let key = format!("{key}.lookup");
    let keys: Vec<String> = l.key.iter().into_iter().cloned().collect();
    let at = |span: Option<&Span>, sub: &str, message: String| {
        cx.at(span, format!("{key}{sub}"), message)
    };
    let (table, name) = match &l.table {
        LookupTableConfig::Path(path_text) => {
            let path = PathBuf::from(loaded.resolve(path_text.as_str()));
            let source = FileLookup::new(path.clone(), l.format.map(Into::into))
                .map_err(|e| at(Some(&path_text.span), ".path", e.to_string()))?;
            let name = l.name.clone().unwrap_or_else(|| {
                path.file_stem()
                    .map_or_else(|| "lookup".into(), |s| s.to_string_lossy().to_string())
            });
            let table = TablePlan::File {
                source: Arc::new(source),
                span: path_text.span.clone(),
            };
            (table, name)
        }
        LookupTableConfig::Postgres(pg) => {
            let span = pg.url.span().clone();
            let query = match &pg.read {
                PostgresReadConfig::Table(table) => format!("SELECT * FROM {table}"),
                PostgresReadConfig::Query(query) => {
                    query.value.trim().trim_end_matches(';').to_string()
                }
            };
            let on_demand = pg.mode == LookupMode::OnDemand;
            if on_demand && keys.len() != 1 {
                return Err(at(
                    Some(&span),
                    ".postgres",
                    "on-demand lookups take exactly one key column".into(),
                ));
            }
            let name = l.name.clone().unwrap_or_else(|| match &pg.read {
                PostgresReadConfig::Table(table) => table.clone(),
                PostgresReadConfig::Query(_) => "lookup".into(),
            });
            let table = TablePlan::Postgres {
                url: Secret::new(pg.url.expose()),
                query,
                on_demand,
                cache: pg.cache.clone(),
                span,
            };
            (table, name)
        }
        LookupTableConfig::Redis(redis) => {
            let span = redis.url.span().clone();
            let [one] = keys.as_slice() else {
                return Err(at(
                    Some(&span),
                    ".redis",
                    "Redis lookups take exactly one key column".into(),
                ));
            };
            let name = l.name.clone().unwrap_or_else(|| "lookup".into());
            let fields = redis
                .fields
                .iter()
                .map(|(f, t)| (f.clone(), (*t).into()))
                .collect();
            let source = RedisLookup::new(
                &name,
                redis.url.expose(),
                &redis.key_prefix,
                redis.value.into(),
                one,
                fields,
            )
            .map_err(|e| at(Some(&span), ".redis", e.to_string()))?;
            let table = TablePlan::Redis {
                source: Arc::new(source),
                cache: redis.cache.clone(),
                span,
            };
            (table, name)
        }
    };
    let invalidate = match &l.invalidate {
        None => None,
        Some(inv) => {
            let connection = match (&inv.brokers, kafka) {
                (Some(brokers), _) => KafkaConnection {
                    brokers: brokers.value.clone(),
                    properties: Default::default(),
                },
                (None, Some(kafka)) => kafka.clone(),
                (None, None) => {
                    return Err(at(
                        Some(&inv.topic.span),
                        ".invalidate.brokers",
                        "name the brokers of the invalidation topic (the source is not Kafka)"
                            .into(),
                    ));
                }
            };
            Some(PlannedInvalidation {
                connection,
                topic: inv.topic.value.clone(),
            })
        }
    };
    Ok(LookupPlan {
        name,
        keys,
        table,
        refresh: l.refresh_interval.map(|d| d.0),
        invalidate,
        key,
    })
}

impl LookupPlan {
    /// Reaches the table for an enrich stage whose records have `input`'s
    /// columns. `None`: its columns are known only from its database, which
    /// `reach` forbids asking.
    pub(super) fn open(
        &self,
        cx: Cx,
        input: &SchemaRef,
        reach: Reach,
    ) -> Result<Option<PlannedLookup>, ConfigError> {
        let at = |span: Option<&Span>, sub: &str, message: String| {
            cx.at(span, format!("{}{sub}", self.key), message)
        };
        let table = |batch: RecordBatch, span: Option<&Span>, sub: &str| {
            LookupTable::new(batch, &self.keys)
                .map(SharedTable::new)
                .map_err(|e| at(span, sub, e.to_string()))
        };
        let planned = |table, source, cache| PlannedLookup {
            name: self.name.clone(),
            keys: self.keys.clone(),
            source,
            table,
            refresh: self.refresh,
            cache,
            reload: Arc::default(),
            invalidate: self.invalidate.clone(),
        };
        Ok(Some(match &self.table {
            TablePlan::File { source, span } => {
                let span = Some(span);
                let batch = source
                    .load_blocking()
                    .map_err(|e| at(span, ".path", format!("lookup table cannot be read: {e}")))?;
                let snapshot: Arc<dyn LookupSource> = source.clone();
                planned(table(batch, span, ".path")?, Some(snapshot), None)
            }
            TablePlan::Postgres { .. } if reach == Reach::Offline => return Ok(None),
            TablePlan::Postgres {
                url,
                query,
                on_demand,
                cache,
                span,
            } => {
                let at_pg = |message: String| at(Some(span), ".postgres", message);
                let by_key = on_demand.then(|| self.keys[0].as_str());
                let source = block_on_io(PostgresLookup::connect(
                    &self.name,
                    url.expose(),
                    query,
                    by_key,
                ))
                .map_err(|e| at_pg(e.to_string()))?;
                if *on_demand {
                    check_key_type(input, &self.keys[0]).map_err(at_pg)?;
                    let empty = RecordBatch::new_empty(source.schema());
                    let cached = cached(Arc::new(source), &self.name, cache);
                    planned(table(empty, Some(span), ".postgres")?, None, Some(cached))
                } else {
                    let batch = block_on_io(source.load_now())
                        .map_err(|e| at_pg(format!("lookup table cannot be read: {e}")))?;
                    let snapshot: Arc<dyn LookupSource> = Arc::new(source);
                    planned(table(batch, Some(span), ".postgres")?, Some(snapshot), None)
                }
            }
            TablePlan::Redis {
                source,
                cache,
                span,
            } => {
                let at_redis = |message: String| at(Some(span), ".redis", message);
                check_key_type(input, &self.keys[0]).map_err(at_redis)?;
                if reach == Reach::Connected {
                    block_on_io(source.ping_now()).map_err(|e| at_redis(e.to_string()))?;
                }
                let empty = RecordBatch::new_empty(source.schema());
                let keyed: Arc<dyn KeyedSource> = source.clone();
                let cached = cached(keyed, &self.name, cache);
                planned(table(empty, Some(span), ".redis")?, None, Some(cached))
            }
        }))
    }
}

/// An on-demand source behind its cache; it retries for `retry_for`, then its records follow `on_error`.
fn cached(source: Arc<dyn KeyedSource>, name: &str, cache: &CacheConfig) -> Arc<CachedLookup> {
    let retrier = Retrier::new(
        format!("lookup {name}"),
        RetryPolicy {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            max_elapsed: cache.retry_for.0,
            exhausted: Exhausted::Fail,
        },
    );
    Arc::new(CachedLookup::new(
        source,
        cache.max_entries,
        cache.ttl.0,
        retrier,
    ))
}

/// On-demand keys travel as text: the batch's key column must render as one.
fn check_key_type(input: &SchemaRef, key: &str) -> Result<(), String> {
    use arrow::datatypes::DataType::*;
    let field = input.field_with_name(key).map_err(|_| {
        format!(
            "key {key:?} is not a column of the input ({})",
            super::describe_schema(input)
        )
    })?;
    match field.data_type() {
        Utf8 | LargeUtf8 | Utf8View | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32
        | UInt64 => Ok(()),
        other => Err(format!(
            "key {key:?} is {other}; on-demand lookups take text or integer keys (cast it in a transform)"
        )),
    }
}

/// Runs `future` to completion on a runtime of its own, on a thread of its
/// own (planning happens before, and sometimes inside, the run's runtime).
fn block_on_io<T: Send>(future: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|runtime| runtime.block_on(future))
            })
            .join()
    })
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    .unwrap_or_else(|e| panic!("cannot start a runtime to reach a lookup source: {e}"))
}
