//! The cache of products and orders: each instance's memory in front of
//! Redis, entries kept 15 minutes and versioned by the row's `version`.
//!
//! A write raises the row's version and, after its commit, invalidates the
//! entry up to that version, in Redis at once and in every instance's
//! memory through a `CacheInvalidated` event (Kafka). Redis keeps a floor
//! per key: an entry older than the floor is stale and can never be put
//! back, so a reader that read before the write and stores after it cannot
//! undo the invalidation. Stale bodies stay in Redis (marked) so that reads
//! can still be answered, marked stale, while PostgreSQL is down.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// What is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A product with its prices, by SKU.
    Products,
    /// An order, by id.
    Orders,
}

impl Kind {
    /// The name events and keys use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Products => "products",
            Self::Orders => "orders",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "products" => Some(Self::Products),
            "orders" => Some(Self::Orders),
            _ => None,
        }
    }
}

/// A cached body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The row version it shows.
    pub version: i64,
    /// The JSON body.
    pub body: Arc<[u8]>,
    /// When it was stored (seconds since the epoch).
    pub stored_at: i64,
    /// Whether a newer version exists (only served while PostgreSQL is down).
    pub stale: bool,
}

impl Entry {
    /// Its age in whole seconds.
    pub fn age(&self) -> u64 {
        (now() - self.stored_at).max(0) as u64
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    cache: &'static str,
    outcome: &'static str,
}

/// The cache's metrics.
#[derive(Debug, Clone, Default)]
pub struct CacheMetrics {
    lookups: Family<Labels, Counter>,
    invalidations: Counter,
}

impl CacheMetrics {
    /// Registers `cache_lookups` (by outcome) and `cache_invalidations`.
    pub fn register(&self, metrics: &tributary_kit::observe::Metrics) {
        metrics.register(
            "cache_lookups",
            "Cache lookups by cache and outcome (local, redis, miss, stale)",
            self.lookups.clone(),
        );
        metrics.register(
            "cache_invalidations",
            "Cache entries invalidated (by a write here or an event)",
            self.invalidations.clone(),
        );
    }
}

/// Puts a body unless the key's floor or stored version is newer.
const PUT: &str = r"
local floor = tonumber(redis.call('HGET', KEYS[1], 'floor') or '-1')
local version = tonumber(redis.call('HGET', KEYS[1], 'v') or '-1')
local stale = redis.call('HGET', KEYS[1], 'stale')
local new = tonumber(ARGV[1])
if new < floor or new < version or (new == version and stale ~= '1') then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'body', ARGV[2], 'at', ARGV[3], 'stale', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// Raises the key's floor; a body below it becomes stale (kept for
/// degraded reads).
const INVALIDATE: &str = r"
local floor = tonumber(redis.call('HGET', KEYS[1], 'floor') or '-1')
local new = tonumber(ARGV[1])
if new > floor then
  redis.call('HSET', KEYS[1], 'floor', ARGV[1])
end
local version = tonumber(redis.call('HGET', KEYS[1], 'v') or '-1')
if version < new then
  redis.call('HSET', KEYS[1], 'stale', '1')
end
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
";

/// The two-level cache.
#[derive(Clone)]
pub struct Cache {
    redis: redis::aio::ConnectionManager,
    prefix: String,
    ttl: Duration,
    local: Arc<Mutex<LruCache<(Kind, String), Entry>>>,
    metrics: CacheMetrics,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Cache {
    /// A cache under `prefix` in Redis with `local_entries` in memory.
    pub fn new(
        redis: redis::aio::ConnectionManager,
        prefix: &str,
        ttl: Duration,
        local_entries: usize,
        metrics: CacheMetrics,
    ) -> Self {
        let capacity = NonZeroUsize::new(local_entries.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            redis,
            prefix: format!("{prefix}cache:"),
            ttl,
            local: Arc::new(Mutex::new(LruCache::new(capacity))),
            metrics,
        }
    }

    fn key(&self, kind: Kind, id: &str) -> String {
        format!("{}{}:{id}", self.prefix, kind.name())
    }

    fn local(&self) -> std::sync::MutexGuard<'_, LruCache<(Kind, String), Entry>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, kind: Kind, outcome: &'static str) {
        self.metrics
            .lookups
            .get_or_create(&Labels {
                cache: kind.name(),
                outcome,
            })
            .inc();
    }

    /// A fresh entry: from memory unless `skip_local` (a caller who just
    /// wrote reads Redis, which its write invalidated at once), else from
    /// Redis. Redis failing counts as a miss.
    pub async fn get(&self, kind: Kind, id: &str, skip_local: bool) -> Option<Entry> {
        let key = (kind, id.to_string());
        if !skip_local {
            let mut local = self.local();
            if let Some(entry) = local.get(&key) {
                if entry.age() < self.ttl.as_secs() {
                    self.count(kind, "local");
                    return Some(entry.clone());
                }
                local.pop(&key);
            }
        }
        match self.fetch(kind, id).await {
            Some(entry) if !entry.stale => {
                self.count(kind, "redis");
                self.local().put(key, entry.clone());
                Some(entry)
            }
            _ => {
                self.count(kind, "miss");
                None
            }
        }
    }

    /// Any entry, stale or not, for when PostgreSQL cannot answer.
    pub async fn get_even_stale(&self, kind: Kind, id: &str) -> Option<Entry> {
        let local = self.local().get(&(kind, id.to_string())).cloned();
        let entry = match local {
            Some(entry) => Some(entry),
            None => self.fetch(kind, id).await,
        };
        if entry.is_some() {
            self.count(kind, "stale");
        }
        entry
    }

    async fn fetch(&self, kind: Kind, id: &str) -> Option<Entry> {
        let mut redis = self.redis.clone();
        let fields: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(self.key(kind, id))
            .arg(&["v", "body", "at", "stale"])
            .query_async(&mut redis)
            .await
            .ok()?;
        let text = |i: usize| -> Option<String> {
            fields
                .get(i)?
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        Some(Entry {
            version: text(0)?.parse().ok()?,
            body: fields.get(1)?.clone()?.into(),
            stored_at: text(2)?.parse().ok()?,
            stale: text(3).as_deref() == Some("1"),
        })
    }

    /// Stores `body` at `version` unless something newer is known.
    pub async fn put(&self, kind: Kind, id: &str, version: i64, body: Arc<[u8]>) {
        let at = now();
        let mut redis = self.redis.clone();
        let stored = redis::Script::new(PUT)
            .key(self.key(kind, id))
            .arg(version)
            .arg(&*body)
            .arg(at)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async::<i64>(&mut redis)
            .await;
        if let Ok(1) = stored {
            let mut local = self.local();
            let key = (kind, id.to_string());
            if local.peek(&key).is_none_or(|e| e.version <= version) {
                local.put(
                    key,
                    Entry {
                        version,
                        body,
                        stored_at: at,
                        stale: false,
                    },
                );
            }
        }
    }

    /// Drops this instance's copy below `version` (what an event does).
    pub fn invalidate_local(&self, kind: Kind, id: &str, version: i64) {
        let mut local = self.local();
        let key = (kind, id.to_string());
        if local.peek(&key).is_some_and(|e| e.version < version) {
            local.pop(&key);
        }
        self.metrics.invalidations.inc();
    }

    /// Invalidates everywhere below `version`: this instance's memory and
    /// Redis (other instances follow the event).
    pub async fn invalidate(&self, kind: Kind, id: &str, version: i64) -> redis::RedisResult<()> {
        self.invalidate_local(kind, id, version);
        let mut redis = self.redis.clone();
        redis::Script::new(INVALIDATE)
            .key(self.key(kind, id))
            .arg(version)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async::<i64>(&mut redis)
            .await?;
        Ok(())
    }

    /// Empties this instance's memory and, unless `local_only`, every entry
    /// of `kind` (or all) in Redis; returns how many Redis keys went.
    pub async fn purge(&self, kind: Option<Kind>, local_only: bool) -> redis::RedisResult<u64> {
        {
            let mut local = self.local();
            match kind {
                None => local.clear(),
                Some(kind) => {
                    let keys: Vec<_> = local
                        .iter()
                        .filter(|((k, _), _)| *k == kind)
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in keys {
                        local.pop(&key);
                    }
                }
            }
        }
        if local_only {
            return Ok(0);
        }
        let pattern = match kind {
            Some(kind) => format!("{}{}:*", self.prefix, kind.name()),
            None => format!("{}*", self.prefix),
        };
        let mut redis = self.redis.clone();
        let mut cursor = 0u64;
        let mut removed = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut redis)
                .await?;
            if !keys.is_empty() {
                removed += redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<u64>(&mut redis)
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(removed)
    }
}
