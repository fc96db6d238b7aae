//! Recent answers of a [`KeyedSource`], kept in a bounded LRU with a time to
//! live. Misses are remembered too (a key the source does not have is not
//! asked again until its entry expires or is invalidated). Each batch asks
//! for its distinct keys once: what the cache holds is answered from memory,
//! the rest in one request to the source, retried under the lookup's
//! [`Retrier`]. Keys the source cannot answer are returned as failed, with
//! the reason, for the engine to route by `on_error`.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::compute::{cast, interleave_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use hashbrown::HashMap;
use lru::LruCache;

use super::{KeyedSource, LookupError};
use crate::retry::Retrier;

/// One cached answer: a row of a fetched batch, or "the source has no such key".
#[derive(Clone)]
struct Entry {
    row: Option<(Arc<RecordBatch>, usize)>,
    expires: Instant,
}

/// A keyed source behind an LRU cache.
pub struct CachedLookup {
    source: Arc<dyn KeyedSource>,
    entries: Mutex<LruCache<String, Entry>>,
    ttl: Duration,
    retrier: Retrier,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for CachedLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedLookup")
            .field("source", &self.source.describe())
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// What the lookup knows about some keys.
#[derive(Debug)]
pub struct Answer {
    /// One row per key found, in the source's schema.
    pub rows: RecordBatch,
    /// Keys that could not be answered, with why.
    pub failed: Vec<(String, String)>,
}

impl CachedLookup {
    /// A cache of at most `max_entries` keys, each kept for `ttl`, in front of `source`.
    pub fn new(
        source: Arc<dyn KeyedSource>,
        max_entries: usize,
        ttl: Duration,
        retrier: Retrier,
    ) -> Self {
        CachedLookup {
            source,
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(max_entries).unwrap_or(NonZeroUsize::MIN),
            )),
            ttl,
            retrier,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The retrier the source is asked through.
    pub fn retrier(&self) -> &Retrier {
        &self.retrier
    }

    /// The rows' schema.
    pub fn schema(&self) -> SchemaRef {
        self.source.schema()
    }

    /// The key column's name.
    pub fn key(&self) -> &str {
        self.source.key()
    }

    /// (hits, misses) so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Forgets `key`, so the next batch that needs it asks the source.
    pub fn invalidate(&self, key: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.pop(key);
        }
    }

    /// Forgets everything.
    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }

    /// Answers distinct `keys`.
    pub async fn lookup(&self, keys: &[String]) -> Result<Answer, LookupError> {
        let now = Instant::now();
        let mut rows: Vec<(Arc<RecordBatch>, usize)> = Vec::with_capacity(keys.len());
        let mut wanted: Vec<String> = Vec::new();
        if let Ok(mut entries) = self.entries.lock() {
            for key in keys {
                match entries.get(key) {
                    Some(entry) if entry.expires > now => {
                        if let Some(row) = &entry.row {
                            rows.push(row.clone());
                        }
                    }
                    _ => wanted.push(key.clone()),
                }
            }
        }
        self.hits
            .fetch_add((keys.len() - wanted.len()) as u64, Ordering::Relaxed);
        self.misses
            .fetch_add(wanted.len() as u64, Ordering::Relaxed);
        let mut failed = Vec::new();
        if !wanted.is_empty() {
            let answered = self
                .retrier
                .run(
                    "lookup",
                    || self.source.fetch(&wanted),
                    LookupError::is_transient,
                )
                .await;
            match answered {
                Ok(fetched) => {
                    failed = fetched.failed;
                    let batch = Arc::new(fetched.rows);
                    let by_key = index(&batch, self.source.key())?;
                    let expires = Instant::now() + self.ttl;
                    if let Ok(mut entries) = self.entries.lock() {
                        for key in &wanted {
                            if failed.iter().any(|(k, _)| k == key) {
                                continue;
                            }
                            let row = by_key.get(key.as_str()).map(|r| (batch.clone(), *r));
                            if let Some(row) = &row {
                                rows.push(row.clone());
                            }
                            entries.put(key.clone(), Entry { row, expires });
                        }
                    }
                }
                Err(error) if !error.is_transient() => return Err(error),
                Err(error) => {
                    let reason =
                        format!("lookup {} did not answer: {error}", self.source.describe());
                    failed = wanted.into_iter().map(|k| (k, reason.clone())).collect();
                }
            }
        }
        Ok(Answer {
            rows: gather(&self.source.schema(), &rows)?,
            failed,
        })
    }
}

/// Row number of each key in `batch`'s column `key` (rendered as text).
fn index(batch: &RecordBatch, key: &str) -> Result<HashMap<String, usize>, LookupError> {
    let invalid = |message: String| LookupError::Invalid {
        source_name: key.to_string(),
        message,
    };
    let column: ArrayRef = batch
        .column_by_name(key)
        .cloned()
        .ok_or_else(|| invalid(format!("the rows have no key column {key:?}")))?;
    let text = cast(&column, &DataType::Utf8).map_err(|e| invalid(e.to_string()))?;
    let text = text
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| invalid("key column is not text".into()))?;
    Ok((0..text.len())
        .filter(|r| text.is_valid(*r))
        .map(|r| (text.value(r).to_string(), r))
        .collect())
}

/// One batch of the given rows, in order.
fn gather(
    schema: &SchemaRef,
    rows: &[(Arc<RecordBatch>, usize)],
) -> Result<RecordBatch, LookupError> {
    let mut batches: Vec<&RecordBatch> = Vec::new();
    let mut indices = Vec::with_capacity(rows.len());
    for (batch, row) in rows {
        let b = match batches
            .iter()
            .position(|x| std::ptr::eq(*x, batch.as_ref()))
        {
            Some(b) => b,
            None => {
                batches.push(batch.as_ref());
                batches.len() - 1
            }
        };
        indices.push((b, *row));
    }
    if batches.is_empty() {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    interleave_record_batch(&batches, &indices).map_err(|e| LookupError::Invalid {
        source_name: "lookup cache".into(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use arrow::datatypes::{Field, Schema};
    use futures::future::BoxFuture;

    use super::*;
    use crate::lookup::Fetched;
    use crate::retry::{Exhausted, RetryPolicy};

    /// Knows keys "a" and "b"; counts requests; fails while `down`.
    struct Fake {
        asked: AtomicUsize,
        down: std::sync::atomic::AtomicBool,
        schema: SchemaRef,
    }

    impl KeyedSource for Fake {
        fn describe(&self) -> String {
            "fake".into()
        }
        fn schema(&self) -> SchemaRef {
            self.schema.clone()
        }
        fn key(&self) -> &str {
            "k"
        }
        fn fetch<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<Fetched, LookupError>> {
            Box::pin(async move {
                self.asked.fetch_add(1, Ordering::SeqCst);
                if self.down.load(Ordering::SeqCst) {
                    return Err(LookupError::Unavailable {
                        source_name: "fake".into(),
                        message: "connection refused".into(),
                    });
                }
                let known: Vec<&String> = keys.iter().filter(|k| *k == "a" || *k == "b").collect();
                let k: StringArray = known.iter().map(|k| Some(k.as_str())).collect();
                let v: StringArray = known.iter().map(|k| Some(format!("{k}!"))).collect();
                Ok(Fetched {
                    rows: RecordBatch::try_new(self.schema.clone(), vec![Arc::new(k), Arc::new(v)])
                        .unwrap(),
                    failed: Vec::new(),
                })
            })
        }
    }

    fn fake() -> Arc<Fake> {
        Arc::new(Fake {
            asked: AtomicUsize::new(0),
            down: Default::default(),
            schema: Arc::new(Schema::new(vec![
                Field::new("k", DataType::Utf8, false),
                Field::new("v", DataType::Utf8, true),
            ])),
        })
    }

    fn retrier() -> Retrier {
        Retrier::new(
            "fake",
            RetryPolicy {
                initial_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(2),
                max_elapsed: Duration::from_millis(10),
                exhausted: Exhausted::Fail,
            },
        )
    }

    #[tokio::test]
    async fn hits_misses_expiry_invalidation_and_outages() {
        let source = fake();
        let cache = CachedLookup::new(source.clone(), 10, Duration::from_secs(60), retrier());
        let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        let answer = cache.lookup(&keys(&["a", "x"])).await.unwrap();
        assert_eq!(answer.rows.num_rows(), 1);
        assert_eq!(source.asked.load(Ordering::SeqCst), 1);
        // Both the hit and the remembered miss come from memory.
        let answer = cache.lookup(&keys(&["a", "x"])).await.unwrap();
        assert_eq!(answer.rows.num_rows(), 1);
        assert_eq!(source.asked.load(Ordering::SeqCst), 1);
        assert_eq!(cache.stats(), (2, 2));
        // An invalidated key is asked again.
        cache.invalidate("a");
        cache.lookup(&keys(&["a", "b"])).await.unwrap();
        assert_eq!(source.asked.load(Ordering::SeqCst), 2);
        // While the source is down, keys not cached fail with the reason; cached ones still answer.
        source.down.store(true, Ordering::SeqCst);
        let answer = cache.lookup(&keys(&["a", "c"])).await.unwrap();
        assert_eq!(answer.rows.num_rows(), 1);
        assert_eq!(answer.failed.len(), 1);
        assert!(
            answer.failed[0].1.contains("connection refused"),
            "{:?}",
            answer.failed
        );
        // Expired entries are asked again.
        let short = CachedLookup::new(source.clone(), 10, Duration::ZERO, retrier());
        source.down.store(false, Ordering::SeqCst);
        short.lookup(&keys(&["a"])).await.unwrap();
        short.lookup(&keys(&["a"])).await.unwrap();
        assert_eq!(short.stats(), (0, 2));
    }
}
