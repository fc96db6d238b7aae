//! Keeping lookups current while the pipeline runs: snapshot tables reload
//! on their interval (or at once when invalidated), on-demand caches drop
//! entries when a `CacheInvalidated` event names them, and each batch's
//! keys are answered before an on-demand enrich stage runs.
//!
//! A `CacheInvalidated` event is a JSON object on the lookup's
//! `invalidate.topic`: `{"cache": "<lookup name>", "key": "C000042"}`, or
//! `"keys": [...]` for several, or no key at all to drop everything. Events
//! naming another cache are ignored, so one topic can serve every lookup.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use tributary_connectors::kafka::tail::Tail;
use tributary_connectors::retry::{Exhausted, RetryPolicy};
use tributary_connectors::store::Storage;
use tributary_stages::StageOutput;
use tributary_stages::enrich::LookupTable;

use super::error::PartitionError;
use crate::plan::{KeyedEnrich, PlannedLookup};
use crate::telemetry::Metrics;

/// Reloads a snapshot lookup on its interval and whenever it is invalidated;
/// a failed reload keeps the old snapshot. A failed load is retried with
/// backoff within the policy's budget before the old snapshot is kept.
pub(crate) fn spawn_refresher(
    lookup: &PlannedLookup,
    storage: &Storage,
    metrics: &Arc<Metrics>,
) -> Option<tokio::task::JoinHandle<()>> {
    let metrics = metrics.clone();
    let source = lookup.source.clone()?;
    if lookup.refresh.is_none() && lookup.invalidate.is_none() {
        return None;
    }
    let lookup = lookup.clone();
    let retry = storage.retry;
    let budget = lookup.refresh.unwrap_or(retry.max_elapsed);
    let retrier = storage.targets.retrier(
        format!("lookup {}", lookup.name),
        RetryPolicy {
            exhausted: Exhausted::Fail,
            max_elapsed: retry.max_elapsed.min(budget),
            ..retry
        },
    );
    Some(tokio::spawn(async move {
        let mut ticker = lookup.refresh.map(tokio::time::interval);
        if let Some(t) = &mut ticker {
            t.tick().await;
        }
        loop {
            let why = tokio::select! {
                _ = async { match &mut ticker { Some(t) => { t.tick().await; } None => std::future::pending().await } } => "interval",
                _ = lookup.reload.notified() => "invalidated",
            };
            let loaded = retrier
                .run("refresh", || source.load(), |_| true)
                .await
                .map_err(|e| e.to_string())
                .and_then(|batch| LookupTable::new(batch, &lookup.keys).map_err(|e| e.to_string()))
                .and_then(|table| {
                    let rows = table.len();
                    lookup
                        .table
                        .replace(table)
                        .map(|()| rows)
                        .map_err(|e| e.to_string())
                });
            metrics.lookup_reloaded(&lookup.name, why, loaded.is_ok());
            match loaded {
                Ok(rows) => {
                    tracing::info!(lookup = %lookup.name, rows, why, "lookup table reloaded")
                }
                Err(error) => tracing::warn!(
                    lookup = %lookup.name,
                    source = %source.describe(),
                    %error,
                    "lookup refresh failed; keeping the previous snapshot"
                ),
            }
        }
    }))
}

/// Follows the invalidation topics of `lookups` until the returned guard is dropped.
pub(crate) fn spawn_invalidation(lookups: &[PlannedLookup], metrics: &Arc<Metrics>) -> Listeners {
    let mut by_topic: BTreeMap<(String, String), Vec<PlannedLookup>> = BTreeMap::new();
    for lookup in lookups {
        if let Some(inv) = &lookup.invalidate {
            by_topic
                .entry((inv.connection.brokers.clone(), inv.topic.clone()))
                .or_default()
                .push(lookup.clone());
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for ((_, topic), lookups) in by_topic {
        let Some(connection) = lookups[0].invalidate.as_ref().map(|i| i.connection.clone()) else {
            continue;
        };
        let tail = match Tail::start(&connection, &topic) {
            Ok(tail) => tail,
            Err(error) => {
                tracing::error!(%topic, %error, "cannot follow the cache invalidation topic; caches expire by their TTL only");
                continue;
            }
        };
        tracing::info!(%topic, lookups = lookups.len(), "following cache invalidations");
        let (stop, metrics) = (stop.clone(), metrics.clone());
        threads.push(std::thread::spawn(move || {
            tail.follow(&stop, |payload| apply(payload, &lookups, &metrics));
        }));
    }
    Listeners { stop, threads }
}

/// The invalidation followers; dropping it stops them.
pub(crate) struct Listeners {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Applies one `CacheInvalidated` event.
fn apply(payload: &[u8], lookups: &[PlannedLookup], metrics: &Metrics) {
    #[derive(serde::Deserialize)]
    struct Event {
        cache: String,
        #[serde(default)]
        key: Option<serde_json::Value>,
        #[serde(default)]
        keys: Vec<serde_json::Value>,
    }
    let event: Event = match serde_json::from_slice(payload) {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(%error, payload = %String::from_utf8_lossy(payload), "ignoring an invalidation event that is not {{\"cache\": …, \"key\": …}}");
            return;
        }
    };
    let keys: Vec<String> = event
        .key
        .into_iter()
        .chain(event.keys)
        .map(|k| match k {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
        .collect();
    for lookup in lookups.iter().filter(|l| l.name == event.cache) {
        match &lookup.cache {
            Some(cache) if keys.is_empty() => cache.clear(),
            Some(cache) => keys.iter().for_each(|k| cache.invalidate(k)),
            None => lookup.reload.notify_one(),
        }
        metrics.cache_invalidated(&lookup.name);
        tracing::info!(lookup = %lookup.name, keys = keys.len(), "cache invalidated");
    }
}

/// Runs an on-demand enrich stage: answers the batch's distinct keys, then
/// applies the stage to the answer; rows whose key could not be answered
/// are handed to the stage as failed.
pub(crate) async fn enrich_keyed(
    keyed: &KeyedEnrich,
    batch: &RecordBatch,
) -> Result<StageOutput, PartitionError> {
    let stage_error = |source| PartitionError::Stage {
        stage: "enrich",
        source,
    };
    let column = batch.column_by_name(&keyed.key_column).ok_or_else(|| {
        stage_error(tributary_stages::StageError::Input(format!(
            "no key column {:?}",
            keyed.key_column
        )))
    })?;
    let text = cast(column, &DataType::Utf8)
        .map_err(|e| stage_error(tributary_stages::StageError::Arrow(e)))?;
    let text = text.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
        stage_error(tributary_stages::StageError::Input(
            "key column is not text".into(),
        ))
    })?;
    let mut distinct: Vec<String> = (0..text.len())
        .filter(|r| text.is_valid(*r))
        .map(|r| text.value(r).to_string())
        .collect();
    distinct.sort_unstable();
    distinct.dedup();
    let answer = keyed
        .lookup
        .lookup(&distinct)
        .await
        .map_err(|e| PartitionError::Lookup(e.to_string()))?;
    let failed: BTreeMap<&str, &str> = answer
        .failed
        .iter()
        .map(|(k, why)| (k.as_str(), why.as_str()))
        .collect();
    let failed_rows: Vec<(usize, String)> = (0..text.len())
        .filter(|r| text.is_valid(*r))
        .filter_map(|r| failed.get(text.value(r)).map(|why| (r, why.to_string())))
        .collect();
    let table = LookupTable::new(answer.rows, std::slice::from_ref(&keyed.key_column))
        .map_err(|e| PartitionError::Lookup(e.to_string()))?;
    keyed
        .enrich
        .apply_with(batch, &table, &failed_rows)
        .map_err(stage_error)
}
