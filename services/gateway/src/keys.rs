//! API keys: they identify applications. A key is `tgw_`, 32 random
//! base62 characters and a 6-character checksum (CRC-32 of the rest), so a
//! mistyped or made-up key is refused without a lookup. Only its SHA-256 is
//! stored; a looked-up key is trusted for a few seconds (the longest a
//! revocation takes to reach every instance), unknown keys included, so a
//! flood of one bad key costs one query.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
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
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
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

type Cached = (Option<ApiKey>, Instant);

/// The key store: PostgreSQL behind a short-lived cache.
#[derive(Clone)]
pub struct Keys {
    db: PgPool,
    cache_for: Duration,
    cache: Arc<Mutex<LruCache<[u8; 32], Cached>>>,
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
            cache: Arc::new(Mutex::new(LruCache::new(capacity))),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LruCache<[u8; 32], Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key `text` names, if it is well formed, known and not revoked.
    pub async fn check(&self, text: &str) -> Result<ApiKey, KeyError> {
        if !well_formed(text) {
            return Err(KeyError::Malformed);
        }
        let hash = digest(text);
        if let Some((key, at)) = self.cache().get(&hash)
            && at.elapsed() < self.cache_for
        {
            return key.clone().ok_or(KeyError::Unknown);
        }
        let row: Option<(Uuid, String, String, i32)> = sqlx::query_as(
            "SELECT id, name, prefix, limit_per_minute FROM api_keys WHERE hash = $1 AND revoked_at IS NULL",
        )
        .bind(&hash[..])
        .fetch_optional(&self.db)
        .await
        .map_err(|e| KeyError::Unavailable(e.to_string()))?;
        let key = row.map(|(id, name, prefix, limit)| ApiKey {
            id,
            name,
            prefix,
            limit_per_minute: u32::try_from(limit).unwrap_or(1),
        });
        self.cache().put(hash, (key.clone(), Instant::now()));
        key.ok_or(KeyError::Unknown)
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
            limit_per_minute: limit_per_minute.max(1),
        };
        sqlx::query(
            "INSERT INTO api_keys (id, name, prefix, hash, limit_per_minute) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(key.id)
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(&digest(&text)[..])
        .bind(i32::try_from(key.limit_per_minute).unwrap_or(i32::MAX))
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
        // The cache is keyed by hash; drop every entry of this key.
        let mut cache = self.cache();
        let stale: Vec<[u8; 32]> = cache
            .iter()
            .filter(|(_, (key, _))| key.as_ref().is_some_and(|k| k.id == id))
            .map(|(hash, _)| *hash)
            .collect();
        for hash in stale {
            cache.pop(&hash);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
