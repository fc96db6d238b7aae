//! API keys: they identify applications. A key is `tgw_`, 32 random
//! base62 characters and a 6-character checksum (CRC-32 of the rest), so a
//! mistyped or made-up key is refused without a lookup. Only its SHA-256 is
//! stored; a looked-up key is trusted for a few seconds (the longest a
//! revocation takes to reach every instance), unknown keys included, so a
//! flood of one bad key costs one query.
//!
//! No request waits for the store while its key is in use: past half its
//! cache time a key is looked up again in the background, and answered from
//! memory meanwhile. Requests that find no usable entry share one lookup
//! (a key expiring under 10,000 requests a second once sent each of them to
//! PostgreSQL, and stalled them all for a tenth of a second).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::OnceCell;
use uuid::Uuid;

const PREFIX: &str = "tgw_";
const RANDOM_LEN: usize = 32;
const CHECK_LEN: usize = 6;
/// The whole key's length.
pub const KEY_LEN: usize = PREFIX.len() + RANDOM_LEN + CHECK_LEN;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Keys remembered per instance.
const CACHED_KEYS: usize = 100_000;

/// An application's key, as the gateway uses it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiKey {
    /// Its id (the rate limit's key, the admin API's handle).
    pub id: Uuid,
    /// The application's name.
    pub name: String,
    /// Its first characters, to tell keys apart.
    pub prefix: String,
    /// Requests per minute it may make.
    pub limit_per_minute: u32,
}

/// A key listed for an admin.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct KeySummary {
    /// Its id.
    pub id: Uuid,
    /// The application's name.
    pub name: String,
    /// Its first characters.
    pub prefix: String,
    /// Requests per minute.
    pub limit_per_minute: i32,
    /// When it was issued.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it was revoked.
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The longest application name a key may carry, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// The highest limit a key may have (the store keeps a 32-bit integer).
pub const MAX_LIMIT_PER_MINUTE: u32 = i32::MAX as u32;

/// What is wrong with a key to issue: the field (a JSON pointer) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidKey {
    /// The field, as a JSON pointer (`/name`).
    pub field: &'static str,
    /// What it must be.
    pub reason: String,
}

/// Checks a new key's name and limit; returns the name as it is kept
/// (without surrounding spaces).
pub fn check_new(name: &str, limit_per_minute: u32) -> Result<&str, InvalidKey> {
    let trimmed = name.trim();
    if trimmed.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(InvalidKey {
            field: "/name",
            reason: format!("must be 1 to {MAX_NAME_CHARS} characters, not only spaces"),
        });
    }
    if trimmed.chars().any(char::is_control) {
        return Err(InvalidKey {
            field: "/name",
            reason: "must not contain control characters".into(),
        });
    }
    if limit_per_minute == 0 || limit_per_minute > MAX_LIMIT_PER_MINUTE {
        return Err(InvalidKey {
            field: "/limit_per_minute",
            reason: format!("must be 1 to {MAX_LIMIT_PER_MINUTE}"),
        });
    }
    Ok(trimmed)
}

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key came with the request.
    #[error("an API key is required")]
    Missing,
    /// The text cannot be a key (shape or checksum).
    #[error("the API key is malformed")]
    Malformed,
    /// No such key, or it was revoked.
    #[error("the API key is unknown or revoked")]
    Unknown,
    /// The key store cannot be reached.
    #[error("the API key store is unavailable: {0}")]
    Unavailable(String),
}

/// Makes a new key's text.
pub fn generate() -> String {
    let mut key = String::with_capacity(KEY_LEN);
    key.push_str(PREFIX);
    let mut bytes = [0u8; RANDOM_LEN];
    // Rejection sampling keeps every character equally likely.
    let mut filled = 0;
    while filled < RANDOM_LEN {
        let mut chunk = [0u8; 64];
        if getrandom::fill(&mut chunk).is_err() {
            continue;
        }
        for byte in chunk {
            if filled < RANDOM_LEN && byte < 248 {
                bytes[filled] = BASE62[usize::from(byte % 62)];
                filled += 1;
            }
        }
    }
    key.push_str(std::str::from_utf8(&bytes).unwrap_or_default());
    key.push_str(&checksum(&key));
    key
}

fn checksum(body: &str) -> String {
    let mut n = u64::from(crc32fast::hash(body.as_bytes()));
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `text` has a key's shape and checksum.
pub fn well_formed(text: &str) -> bool {
    text.len() == KEY_LEN
        && text.starts_with(PREFIX)
        && text[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
        && checksum(&text[..KEY_LEN - CHECK_LEN]) == text[KEY_LEN - CHECK_LEN..]
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A lookup's answer: the key, or none (unknown or revoked).
type Found = Result<Option<ApiKey>, KeyError>;

/// What the cache remembers of one key text (by its hash).
struct Entry {
    key: Option<ApiKey>,
    /// When the lookup that found it started.
    fetched: Instant,
    /// A background lookup is under way.
    refreshing: bool,
}

/// The cache and the lookups under way, under one lock.
struct State {
    entries: LruCache<[u8; 32], Entry>,
    /// Lookups that requests wait for, shared by every request of the key.
    flights: HashMap<[u8; 32], Arc<OnceCell<Found>>>,
    /// Bumped by each revocation: a lookup that started before one does
    /// not fill the cache with what it read.
    generation: u64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    reason: &'static str,
}

/// The key store: PostgreSQL behind a short-lived cache.
#[derive(Clone)]
pub struct Keys {
    db: PgPool,
    cache_for: Duration,
    state: Arc<Mutex<State>>,
    lookups: Family<LookupLabels, Counter>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("cache_for", &self.cache_for)
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// A store on `db`, trusting lookups for `cache_for`.
    pub fn new(db: PgPool, cache_for: Duration) -> Self {
        let capacity = NonZeroUsize::new(CACHED_KEYS).unwrap_or(NonZeroUsize::MIN);
        Self {
            db,
            cache_for,
            state: Arc::new(Mutex::new(State {
                entries: LruCache::new(capacity),
                flights: HashMap::new(),
                generation: 0,
            })),
            lookups: Family::default(),
        }
    }

    /// Registers `api_key_lookups` (queries to the store, by reason).
    pub fn register(&self, metrics: &tributary_kit::observe::Metrics) {
        metrics.register(
            "api_key_lookups",
            "Queries to the key store: miss (requests waited), refresh (in the background)",
            self.lookups.clone(),
        );
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key `text` names, if it is well formed, known and not revoked.
    pub async fn check(&self, text: &str) -> Result<ApiKey, KeyError> {
        if !well_formed(text) {
            return Err(KeyError::Malformed);
        }
        let hash = digest(text);
        let flight = {
            let mut state = self.state();
            let generation = state.generation;
            if let Some(entry) = state.entries.get_mut(&hash)
                && let age = entry.fetched.elapsed()
                && age < self.cache_for
            {
                if !entry.refreshing && age >= self.cache_for / 2 {
                    entry.refreshing = true;
                    let keys = self.clone();
                    tokio::spawn(async move { keys.refresh(hash, generation).await });
                }
                return entry.key.clone().ok_or(KeyError::Unknown);
            }
            state.flights.entry(hash).or_default().clone()
        };
        let found = flight
            .get_or_init(|| async {
                let (generation, started) = (self.state().generation, Instant::now());
                let found = self.lookup(hash, "miss").await;
                let mut state = self.state();
                state.flights.remove(&hash);
                if let Ok(key) = &found {
                    remember(&mut state, hash, key.clone(), generation, started);
                }
                found
            })
            .await;
        found.clone()?.ok_or(KeyError::Unknown)
    }

    /// Looks `hash` up again for a cached entry still in use.
    async fn refresh(&self, hash: [u8; 32], generation: u64) {
        let started = Instant::now();
        let found = self.lookup(hash, "refresh").await;
        let mut state = self.state();
        match found {
            Ok(key) => remember(&mut state, hash, key, generation, started),
            Err(error) => {
                tracing::warn!(%error, "refreshing an API key failed; the cached one stands until it expires");
                if let Some(entry) = state.entries.peek_mut(&hash) {
                    entry.refreshing = false;
                }
            }
        }
    }

    async fn lookup(&self, hash: [u8; 32], reason: &'static str) -> Found {
        self.lookups.get_or_create(&LookupLabels { reason }).inc();
        let row: Option<(Uuid, String, String, i32)> = sqlx::query_as(
            "SELECT id, name, prefix, limit_per_minute FROM api_keys WHERE hash = $1 AND revoked_at IS NULL",
        )
        .bind(&hash[..])
        .fetch_optional(&self.db)
        .await
        .map_err(|e| KeyError::Unavailable(e.to_string()))?;
        Ok(row.map(|(id, name, prefix, limit)| ApiKey {
            id,
            name,
            prefix,
            limit_per_minute: u32::try_from(limit).unwrap_or(1),
        }))
    }

    /// Issues a key; its text is returned once and never stored.
    pub async fn issue(
        &self,
        name: &str,
        limit_per_minute: u32,
    ) -> Result<(ApiKey, String), sqlx::Error> {
        let text = generate();
        let key = ApiKey {
            id: Uuid::new_v4(),
            name: name.to_string(),
            prefix: text[..PREFIX.len() + 8].to_string(),
            limit_per_minute,
        };
        sqlx::query(
            "INSERT INTO api_keys (id, name, prefix, hash, limit_per_minute) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(key.id)
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(&digest(&text)[..])
        .bind(i32::try_from(key.limit_per_minute).unwrap_or(i32::MAX)) // checked by `check_new`
        .execute(&self.db)
        .await?;
        tracing::info!(key_id = %key.id, name = %key.name, "issued an API key");
        Ok((key, text))
    }

    /// Revokes a key: refused here at once, everywhere within the cache time.
    pub async fn revoke(&self, id: Uuid) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(&self.db)
        .await?
        .rows_affected()
            == 1;
        // The cache is keyed by hash; drop every entry of this key, and keep
        // lookups under way from putting back what they read before.
        let mut state = self.state();
        state.generation += 1;
        let stale: Vec<[u8; 32]> = state
            .entries
            .iter()
            .filter(|(_, entry)| entry.key.as_ref().is_some_and(|k| k.id == id))
            .map(|(hash, _)| *hash)
            .collect();
        for hash in stale {
            state.entries.pop(&hash);
        }
        drop(state);
        if done {
            tracing::info!(key_id = %id, "revoked an API key");
        }
        Ok(done)
    }

    /// Every key, newest first.
    pub async fn list(&self) -> Result<Vec<KeySummary>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, name, prefix, limit_per_minute, created_at, revoked_at FROM api_keys ORDER BY created_at DESC",
        )
        .fetch_all(&self.db)
        .await
    }
}

/// Caches what a lookup that started at `started`, at `generation`, found,
/// unless a revocation came since (what it read may be the revoked key).
fn remember(
    state: &mut State,
    hash: [u8; 32],
    key: Option<ApiKey>,
    generation: u64,
    started: Instant,
) {
    if state.generation == generation {
        let entry = Entry {
            key,
            fetched: started,
            refreshing: false,
        };
        state.entries.put(hash, entry);
    } else if let Some(entry) = state.entries.peek_mut(&hash) {
        entry.refreshing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_needs_a_printable_name_and_a_limit_the_store_can_keep() {
        assert_eq!(check_new("  billing  ", 1), Ok("billing"));
        assert_eq!(
            check_new(&"é".repeat(200), MAX_LIMIT_PER_MINUTE).map(str::len),
            Ok(400)
        );
        let field = |name: &str, limit| check_new(name, limit).unwrap_err().field;
        assert_eq!(field("   ", 5), "/name");
        assert_eq!(field(&"a".repeat(201), 5), "/name");
        assert_eq!(field("app\u{0}", 5), "/name");
        assert_eq!(field("app\u{9b}x", 5), "/name");
        assert_eq!(field("app", 0), "/limit_per_minute");
        assert_eq!(field("app", MAX_LIMIT_PER_MINUTE + 1), "/limit_per_minute");
    }

    #[test]
    fn generated_keys_are_well_formed_and_a_changed_character_is_not() {
        for _ in 0..100 {
            let key = generate();
            assert_eq!(key.len(), KEY_LEN);
            assert!(well_formed(&key), "{key}");
            let mut changed = key.clone().into_bytes();
            let at = PREFIX.len() + fastrand::usize(..RANDOM_LEN);
            changed[at] = if changed[at] == b'a' { b'b' } else { b'a' };
            assert!(!well_formed(&String::from_utf8(changed).unwrap()));
        }
        assert!(!well_formed("tgw_short"));
        assert!(!well_formed(&"x".repeat(KEY_LEN)));
        assert!(!well_formed(&format!("{PREFIX}{}", "é".repeat(19))));
    }
}
